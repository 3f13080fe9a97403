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


def _open_binary(path: str) -> Any:
    """A readable binary file for a local path or an fsspec URL."""
    if not is_url(path):
        return open(path, "rb")  # noqa: SIM115 (the caller closes it)
    import fsspec

    return fsspec.open(path, "rb").open()


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
    """One split of a prepared store: sample i is record ``i % per`` of shard ``i // per``."""

    def __init__(self, root: str, split: str, meta: dict[str, Any], modalities: tuple[str, ...]) -> None:
        self.root, self.split, self.modalities = root, split, modalities
        info = meta["splits"][split]
        self.n, self.per = int(info["n"]), int(meta["shard_size"])
        self.counts = [int(c) for c in info["shards"]]
        lab = meta["label"]
        # the record's field order is the store's modality order (prepared.json's keys are sorted)
        self.dtype = record_dtype({m: tuple(meta["shapes"][m]) for m in meta["modalities"]}, tuple(lab["shape"]),
                                  lab["dtype"] == "float32")
        self.files = [join(root, shard_name(split, k)) for k in range(len(self.counts))]
        self.offsets = [len(shard_header(self.dtype, c)) for c in self.counts]
        self._handles: dict[int, Any] = {}
        self._pid = -1
        # a local record is one pread of page-cached bytes (~25 us); a URL may wait on the network
        self.cheap_reads = not is_url(root)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}, "_pid": -1}

    def __len__(self) -> int:
        return self.n

    def _handle(self, k: int) -> Any:
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        h = self._handles.get(k)
        if h is None:
            h = self._handles[k] = self._open(k)
        return h

    def _open(self, k: int) -> Any:
        """Open shard k and check it against ``prepared.json``: its size and its header."""
        path = self.files[k]
        expect = self.offsets[k] + self.counts[k] * self.dtype.itemsize
        try:
            f = _open_binary(path)
        except FileNotFoundError:
            raise DataError(f"{path}: shard missing (the store is damaged: prepare it again)") from None
        except Exception as exc:
            raise _unreachable(path, exc) from None
        try:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(0)
            head = f.read(self.offsets[k])
        except Exception as exc:
            f.close()
            raise _unreachable(path, exc) from None
        if size != expect or head != shard_header(self.dtype, self.counts[k]):
            f.close()
            what = (f"truncated: {size} of {expect} bytes" if size < expect else
                    f"{size} bytes, expected {expect}" if size != expect else "its header does not match prepared.json")
            raise DataError(f"{path}: {what} (the store is damaged: prepare it again)")
        return f

    def _into(self, i: int, view: memoryview) -> None:
        """Record i's bytes into ``view``: one positioned read."""
        k, r = divmod(i, self.per)
        f = self._handle(k)
        off, size = self.offsets[k] + r * self.dtype.itemsize, self.dtype.itemsize
        if not is_url(self.files[k]):
            got = os.preadv(f.fileno(), [view], off)
        else:
            f.seek(off)
            blob = f.read(size)
            got = len(blob)
            view[:got] = blob
        if got != size:
            raise DataError(f"{self.files[k]}: truncated at sample {r} (a short read: the store is damaged, "
                            "prepare it again)")

    def read_batch(self, idx: list[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Samples ``idx`` as batch arrays (what the pipeline's reader asks for: no per-sample objects)."""
        size = self.dtype.itemsize
        buf = bytearray(len(idx) * size)
        view = memoryview(buf)
        for j, i in enumerate(idx):
            self._into(i, view[j * size:(j + 1) * size])
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
