"""``prepared``: a data set packed once by ``raybal prepare`` into record shards, read by index.

Real EO/SAR sets are many small files (SEN12MS: three GeoTIFFs per sample, ~1.6 ms of GDAL per
sample on this project's 2-core machine), so on a GPU node the reader, not the accelerator, sets the
pace. :func:`raybal.data.prepare.prepare` reads any registered data set through its own loader once and
writes this layout (docs/data.md, "Prepared shards", says why this format and not Zarr, WebDataset or
LitData)::

    OUT/
      prepared.json             written last: the store is complete when it exists (format_version,
                                the source's [data] config, task, classes, modalities, shapes, the
                                training split's per-channel mean / std, each split's shards)
      train-00000.npy ...       one NumPy .npy file per shard: a 1-d array of records, one record per
      val-00000.npy ...         sample holding every modality (float32) and the label side by side
      train.index.npy ...       each split's sample positions in the source loader (the split assignment)

A record is contiguous, so reading sample i is one positioned read (``os.pread`` on a local path, one
range request through fsspec for ``s3://``, ``gs://``, ``file://`` ... URLs) whatever the sample order:
the per-epoch global shuffle of :func:`raybal.data.pipeline.shard_order` costs nothing extra and is the
same on any number of workers (DESIGN.md §5.11), unlike tar-shard streaming whose shuffle is per shard
and buffer. Files are opened per process on first read (handles do not survive a fork). A shard whose
size or header disagrees with ``prepared.json``, or a read that comes back short (a shard truncated
mid-epoch), stops the run with one line naming the shard.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from raybal.config import ConfigError, knob
from raybal.data.base import DATASETS, DataError, MultiModalData
from raybal.data.pipeline import LazySplit, LoaderKnobs, Normalizer

FORMAT = "raybal-prepared"
FORMAT_VERSION = 1
META = "prepared.json"
MARKER = ".raybal-prepare.json"  # present while a prepare is under way (or was interrupted)
SPLITS = ("train", "val", "test")


def is_url(path: str) -> bool:
    return "://" in path


def join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if is_url(root) else os.path.join(os.path.expanduser(root), name)


def record_dtype(shapes: dict[str, tuple[int, ...]], label_shape: tuple[int, ...], label_float: bool) -> np.dtype:
    """One sample's record: ``x.<modality>`` float32 arrays and ``label`` (int64 class ids or masks,
    float32 multi-hot), little-endian, packed."""
    fields: list[tuple[Any, ...]] = [(f"x.{m}", "<f4", tuple(s)) for m, s in shapes.items()]
    fields.append(("label", "<f4" if label_float else "<i8", tuple(label_shape)))
    return np.dtype(fields)


def shard_name(split: str, k: int) -> str:
    return f"{split}-{k:05d}.npy"


def shard_header(dtype: np.dtype, n: int) -> bytes:
    """The .npy header of a shard of ``n`` records (what ``np.save`` would write before the data)."""
    import io

    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False,
                                            "shape": (n,)})
    return buf.getvalue()


def header_matches(head: bytes, dtype: np.dtype, n: int) -> bool:
    """Does ``head`` (a shard file's first bytes) declare ``n`` records of ``dtype``? Parsed, not compared
    byte for byte: another NumPy may format the same header differently."""
    import io

    try:
        f = io.BytesIO(head)
        if npy_format.read_magic(f) != (1, 0):
            return False
        shape, fortran, found = npy_format.read_array_header_1_0(f)
    except ValueError:
        return False
    return shape == (n,) and not fortran and found == dtype and f.tell() == len(head)


def _unreachable(where: str, exc: BaseException) -> DataError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, ImportError):
        return DataError(f"{where}: cannot read this URL here ({first}); install the fsspec backend for its "
                         "protocol (e.g. s3fs, gcsfs) or copy the store to a local or shared path")
    return DataError(f"{where}: cannot read the prepared store ({type(exc).__name__}: {first})")


@lru_cache(maxsize=32)
def _read_meta_cached(root: str) -> dict[str, Any]:
    return read_meta(root)


def read_meta(root: str) -> dict[str, Any]:
    """``prepared.json`` of the store at ``root`` (a path or URL), checked; a :class:`DataError` naming the
    store when it is missing, incomplete (a prepare that has not finished) or of another format."""
    meta_path = join(root, META)
    try:
        if is_url(root):
            import fsspec

            fs, p = fsspec.core.url_to_fs(root)
            try:
                with fs.open(join(p, META), "rb") as f:
                    text = f.read().decode()
            except FileNotFoundError:
                raise FileNotFoundError("incomplete" if fs.exists(join(p, MARKER)) else
                                        "missing" if fs.exists(p) else "unreachable") from None
        else:
            local = os.path.expanduser(root)
            if not os.path.isfile(meta_path):
                raise FileNotFoundError("incomplete" if os.path.isfile(os.path.join(local, MARKER)) else
                                        ("missing" if os.path.isdir(local) else "no folder"))
            with open(meta_path, encoding="utf-8") as f:
                text = f.read()
    except FileNotFoundError as exc:
        why = {"incomplete": "an unfinished raybal prepare (no prepared.json yet): run the same prepare again "
                             "to finish it",
               "missing": "no prepared.json: not a store written by raybal prepare",
               "no folder": "folder not found",
               "unreachable": "not found or not reachable"}.get(str(exc), "not found")
        raise DataError(f"{root}: {why}") from None
    except DataError:
        raise
    except Exception as exc:  # an unknown protocol, a missing backend, a refused connection
        raise _unreachable(root, exc) from None
    try:
        meta = json.loads(text)
    except ValueError:
        raise DataError(f"{meta_path}: not valid JSON (a damaged store: prepare it again)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{meta_path}: not a raybal prepared store")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{meta_path}: format_version {meta.get('format_version')!r}, this raybal reads "
                        f"{FORMAT_VERSION}: prepare the data again with this version")
    return meta


class ShardSource:
    """One split of a prepared store: sample i is record ``i % per`` of shard ``i // per``.

    On a local path each process keeps up to :attr:`MAX_OPEN` shards open (least recently used closed
    first: a global shuffle touches every shard each epoch, and a large store has thousands). A URL is
    read without open files: a batch's records as byte ranges in one fsspec call (``cat_ranges``, which
    object stores serve concurrently), never through a read-ahead cache that would fetch a block per
    sample. Each shard is checked against ``prepared.json`` (its size and header) the first time a
    process reads it."""

    MAX_OPEN = 64

    def __init__(self, root: str, split: str, meta: dict[str, Any], modalities: tuple[str, ...]) -> None:
        self.root, self.split, self.modalities = root, split, modalities
        info = meta["splits"][split]
        self.n, self.per = int(info["n"]), int(meta["shard_size"])
        self.counts = [int(c) for c in info["shards"]]
        lab = meta["label"]
        # the record's field order is the store's modality order (the list in prepared.json)
        self.dtype = record_dtype({m: tuple(meta["shapes"][m]) for m in meta["modalities"]}, tuple(lab["shape"]),
                                  lab["dtype"] == "float32")
        self.files = [join(root, shard_name(split, k)) for k in range(len(self.counts))]
        self.offsets = [len(shard_header(self.dtype, c)) for c in self.counts]
        self.url = is_url(root)
        self._handles: OrderedDict[int, Any] = OrderedDict()
        self._checked: set[int] = set()
        self._fs: Any = None
        self._pid = -1
        # a local record is one pread of page-cached bytes (~25 us); a URL may wait on the network
        self.cheap_reads = not self.url

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": OrderedDict(), "_checked": set(), "_fs": None, "_pid": -1}

    def __len__(self) -> int:
        return self.n

    def _fresh(self) -> None:
        """Handles and checks belong to the process that made them (a forked DataLoader process starts anew)."""
        if self._pid != os.getpid():
            self._handles, self._checked, self._fs, self._pid = OrderedDict(), set(), None, os.getpid()

    def _check(self, k: int, size: int, head: bytes) -> None:
        """Shard k's size and header against ``prepared.json``."""
        path, expect = self.files[k], self.offsets[k] + self.counts[k] * self.dtype.itemsize
        if size != expect:
            what = f"truncated: {size} of {expect} bytes" if size < expect else f"{size} bytes, expected {expect}"
            raise DataError(f"{path}: {what} (the store is damaged: prepare it again)")
        if not header_matches(head, self.dtype, self.counts[k]):
            raise DataError(f"{path}: its header does not match prepared.json (the store is damaged: prepare it again)")

    def _fd(self, k: int) -> int:
        """A local shard's file descriptor, opened and checked on first use."""
        fd = self._handles.get(k)
        if fd is not None:
            self._handles.move_to_end(k)
            return fd
        try:
            fd = os.open(self.files[k], os.O_RDONLY)
        except FileNotFoundError:
            raise DataError(f"{self.files[k]}: shard missing (the store is damaged: prepare it again)") from None
        try:
            if k not in self._checked:
                self._check(k, os.fstat(fd).st_size, os.pread(fd, self.offsets[k], 0))
                self._checked.add(k)
        except BaseException:
            os.close(fd)
            raise
        self._handles[k] = fd
        while len(self._handles) > self.MAX_OPEN:
            os.close(self._handles.popitem(last=False)[1])
        return fd

    def _remote(self, k: int) -> Any:
        """The fsspec file system of a URL store, shard k checked on first use."""
        import fsspec

        path = self.files[k]
        try:
            if self._fs is None:
                self._fs = fsspec.core.url_to_fs(self.root)[0]
            if k not in self._checked:
                try:
                    size = int(self._fs.size(path))
                except FileNotFoundError:
                    raise DataError(f"{path}: shard missing (the store is damaged: prepare it again)") from None
                self._check(k, size, self._fs.cat_file(path, 0, self.offsets[k]))
                self._checked.add(k)
        except DataError:
            raise
        except Exception as exc:
            raise _unreachable(path, exc) from None
        return self._fs

    def read_batch(self, idx: list[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Samples ``idx`` as batch arrays (what the pipeline's reader asks for: no per-sample objects)."""
        self._fresh()
        size = self.dtype.itemsize
        buf = bytearray(len(idx) * size)
        view = memoryview(buf)
        where = [(*divmod(i, self.per),) for i in idx]
        if not self.url:
            for j, (k, r) in enumerate(where):
                got = os.preadv(self._fd(k), [view[j * size:(j + 1) * size]], self.offsets[k] + r * size)
                if got != size:
                    raise DataError(f"{self.files[k]}: truncated at sample {r} (a short read: the store is "
                                    "damaged, prepare it again)")
        else:
            fs = None
            for k in dict.fromkeys(k for k, _ in where):
                fs = self._remote(k)
            starts = [self.offsets[k] + r * size for k, r in where]
            try:
                blobs = fs.cat_ranges([self.files[k] for k, _ in where], starts, [s + size for s in starts])
            except Exception as exc:
                raise _unreachable(self.files[where[0][0]], exc) from None
            for j, ((k, r), blob) in enumerate(zip(where, blobs, strict=True)):
                if isinstance(blob, BaseException) or len(blob) != size:
                    raise DataError(f"{self.files[k]}: truncated at sample {r} (a short read: the store is "
                                    "damaged, prepare it again)")
                view[j * size:(j + 1) * size] = blob
        rec = np.frombuffer(buf, dtype=self.dtype)
        return {m: rec[f"x.{m}"] for m in self.modalities}, rec["label"]

    def read(self, i: int) -> tuple[dict[str, np.ndarray], Any]:
        x, y = self.read_batch([i])
        return {m: a[0] for m, a in x.items()}, y[0]

    def describe(self, i: int) -> str:
        k, r = divmod(i, self.per)
        return f"{self.files[k]} sample {r}"

    def fingerprint(self) -> str:
        return f"{self.root}:{self.split}:{self.n}"


@dataclass(frozen=True)
class PreparedParams(LoaderKnobs):
    path: str = knob("", doc="the folder `raybal prepare` wrote, or an fsspec URL to it (file://, s3:// with "
                     "s3fs, gs:// with gcsfs, ...)")
    modalities: tuple[str, ...] = knob((), doc="a subset of the store's modalities (default: all of them)")

    @property
    def task(self) -> str:
        """The store's task (fixed when it was prepared)."""
        return str(self.meta()["task"]) if self.path else "classification"

    def meta(self) -> dict[str, Any]:
        return _read_meta_cached(self.path)

    def modality_names(self) -> tuple[str, ...]:
        if self.modalities or not self.path:
            return tuple(self.modalities)
        return tuple(self.meta()["modalities"])

    def cacheable(self) -> bool:
        return False  # read on demand from the store

    def validate(self, prefix: str) -> None:
        if not self.path:
            raise ConfigError(f"{prefix}.path", "required: the folder or URL `raybal prepare` wrote")
        try:
            meta = self.meta()
        except DataError as exc:
            raise ConfigError(f"{prefix}.path", str(exc)) from None
        known = tuple(meta["modalities"])
        for i, m in enumerate(self.modalities):
            if m not in known:
                raise ConfigError(f"{prefix}.modalities[{i}]", f"unknown modality {m!r} (the store has: "
                                  f"{', '.join(known)})")
        if self.modalities and (len(self.modalities) < 2 or len(set(self.modalities)) != len(self.modalities)):
            raise ConfigError(f"{prefix}.modalities", "needs two or more distinct modalities")


@DATASETS.register("prepared", PreparedParams)
def build_prepared(p: PreparedParams) -> MultiModalData:
    """A store written by ``raybal prepare``: packed record shards read by index (locally or by URL)."""
    meta = p.meta()
    mods = p.modality_names()
    splits = [LazySplit(ShardSource(p.path, s, meta, mods)) for s in SPLITS]
    for sp in splits:
        sp._shapes = {m: tuple(meta["shapes"][m]) for m in mods}
    norm = meta.get("normalizer")
    normalizer = Normalizer({m: tuple(norm["mean"][m]) for m in mods},
                            {m: tuple(norm["std"][m]) for m in mods}) if norm else None
    return MultiModalData(*splits, modalities=mods, num_classes=int(meta["num_classes"]), task=meta["task"],
                          class_names=tuple(meta["class_names"]), normalizer=normalizer)
