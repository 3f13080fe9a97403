"""Candidate layouts for prepared data (bench_data.py's ``formats`` section, issue 37).

Each candidate is written from the training split of a prepared store (the same samples for all) and
read back through raybal's own pipeline in this process (a :class:`~raybal.data.pipeline.LazySplit`
over a sample source, batches of 64 in a shuffled global order: the format's own cost, no reader
process in between; the second of two epochs, the files cached), except tar shards, which WebDataset
streams in order: they are read sequentially (the best case for them), and their row says they cannot
give a per-epoch global shuffle.
"""

from __future__ import annotations

import io
import os
import resource
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raybal.data.pipeline import LazySplit, Pipe
from raybal.data.prepared import ShardSource, read_meta

BATCH = 64


def _train(store: str) -> tuple[dict[str, np.ndarray], np.ndarray, ShardSource]:
    meta = read_meta(store)
    src = ShardSource(store, "train", meta, tuple(meta["modalities"]))
    x, y = LazySplit(src).read_all(256)
    return {m: t.numpy() for m, t in x.items()}, y.numpy(), src


class Columns:
    """One memory-mapped .npy per modality and one for the labels."""

    def __init__(self, root: Path, mods: list[str]) -> None:
        self.root, self.mods = root, mods
        self.arrays: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(np.load(self.root / "y.npy", mmap_mode="r"))

    def read(self, i: int) -> tuple[dict[str, np.ndarray], Any]:
        if self.arrays is None:
            self.arrays = {k: np.load(self.root / f"{k}.npy", mmap_mode="r") for k in [*self.mods, "y"]}
        return {m: np.array(self.arrays[m][i]) for m in self.mods}, int(self.arrays["y"][i])

    def describe(self, i: int) -> str:
        return f"{self.root} {i}"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "arrays": None}


class H5:
    """One HDF5 file, a dataset per modality chunked by sample, uncompressed."""

    def __init__(self, path: Path, mods: list[str]) -> None:
        self.path, self.mods, self.f, self.pid = path, mods, None, -1

    def __len__(self) -> int:
        import h5py

        with h5py.File(self.path, "r") as f:
            return len(f["y"])

    def read(self, i: int) -> tuple[dict[str, np.ndarray], Any]:
        import h5py

        if self.f is None or self.pid != os.getpid():
            self.f, self.pid = h5py.File(self.path, "r"), os.getpid()
        return {m: self.f[m][i] for m in self.mods}, int(self.f["y"][i])

    def describe(self, i: int) -> str:
        return f"{self.path} {i}"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "f": None, "pid": -1}


class ParquetRows:
    """A Parquet file, row groups of 256 samples, each modality's array as a binary cell; the row group
    last read is kept (a shuffled order rarely reads the same group twice in a row)."""

    def __init__(self, path: Path, mods: list[str], shapes: dict[str, tuple[int, ...]]) -> None:
        self.path, self.mods, self.shapes = path, mods, shapes
        self.pf: Any = None
        self.cache: tuple[int, Any] = (-1, None)

    def __len__(self) -> int:
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.path).metadata.num_rows

    def read(self, i: int) -> tuple[dict[str, np.ndarray], Any]:
        import pyarrow.parquet as pq

        if self.pf is None:
            self.pf = pq.ParquetFile(self.path)
        g, r = divmod(i, 256)
        if self.cache[0] != g:
            self.cache = (g, self.pf.read_row_group(g).to_pydict())
        row = self.cache[1]
        return ({m: np.frombuffer(row[m][r], dtype=np.float32).reshape(self.shapes[m]).copy() for m in self.mods},
                int(row["y"][r]))

    def describe(self, i: int) -> str:
        return f"{self.path} {i}"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "pf": None, "cache": (-1, None)}


class ZarrArrays:
    """Zarr v3: an array per modality, a chunk per sample, shards of 256 chunks, uncompressed."""

    def __init__(self, path: Path, mods: list[str]) -> None:
        self.path, self.mods, self.g, self.pid = path, mods, None, -1

    def __len__(self) -> int:
        import zarr

        return zarr.open_group(str(self.path), mode="r")["y"].shape[0]

    def read(self, i: int) -> tuple[dict[str, np.ndarray], Any]:
        import zarr

        if self.g is None or self.pid != os.getpid():
            self.g, self.pid = zarr.open_group(str(self.path), mode="r"), os.getpid()
        return {m: self.g[m][i] for m in self.mods}, int(self.g["y"][i])

    def describe(self, i: int) -> str:
        return f"{self.path} {i}"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "g": None, "pid": -1}


def _write(name: str, root: Path, x: dict[str, np.ndarray], y: np.ndarray) -> None:
    root.mkdir(parents=True, exist_ok=True)
    if name == "npy_columns":
        for m, a in x.items():
            np.save(root / f"{m}.npy", a)
        np.save(root / "y.npy", y)
    elif name == "hdf5":
        import h5py

        with h5py.File(root / "data.h5", "w") as f:
            for m, a in x.items():
                f.create_dataset(m, data=a, chunks=(1, *a.shape[1:]))
            f["y"] = y
    elif name == "zarr":
        import zarr

        g = zarr.open_group(str(root / "data.zarr"), mode="w")
        for key, a in [*x.items(), ("y", y)]:
            arr = g.create_array(key, shape=a.shape, dtype=a.dtype, chunks=(1, *a.shape[1:]),
                                 shards=(256, *a.shape[1:]), compressors=None)
            arr[:] = a
    elif name == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {m: pa.array([a[i].tobytes() for i in range(len(y))], pa.binary()) for m, a in x.items()}
        pq.write_table(pa.table({**cols, "y": pa.array(y)}), root / "data.parquet", row_group_size=256)
    elif name == "tar_webdataset":
        for s in range(0, len(y), 1000):
            with tarfile.open(root / f"shard-{s // 1000:05d}.tar", "w") as tar:
                for i in range(s, min(len(y), s + 1000)):
                    for key, blob in [*((f"{m}.npy", _npy(a[i])) for m, a in x.items()),
                                      ("cls", str(int(y[i])).encode())]:
                        info = tarfile.TarInfo(f"{i:08d}.{key}")
                        info.size = len(blob)
                        tar.addfile(info, io.BytesIO(blob))
    (root / "done").write_text("ok")


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def read_format(name: str, store: str, work: Path) -> dict[str, Any]:
    """One shuffled epoch of ``name`` (written under ``work`` first when missing): samples/s and peak RSS."""
    torch.set_num_threads(2)
    root = work / name
    mods: list[str] = list(read_meta(store)["modalities"])
    disk = None
    row: dict[str, Any] = {"format": name, "global_shuffle": name != "tar_webdataset"}
    if name in ("zarr", "litdata"):
        try:
            __import__(name)
        except ImportError:
            return {**row, "samples_per_s": float("nan"), "note": f"{name} not installed here"}
    if name not in ("records", "records_fsspec") and not (root / "done").is_file():
        x, y, _ = _train(store)
        _write(name, root, x, y)
    meta = read_meta(store)
    if name == "records":
        source: Any = ShardSource(store, "train", meta, tuple(mods))
    elif name == "records_fsspec":
        source = ShardSource(Path(store).resolve().as_uri(), "train", meta, tuple(mods))
    elif name == "npy_columns":
        source = Columns(root, mods)
    elif name == "hdf5":
        source = H5(root / "data.h5", mods)
    elif name == "parquet":
        source = ParquetRows(root / "data.parquet", mods, {m: tuple(s) for m, s in meta["shapes"].items()})
    elif name == "zarr":
        source = ZarrArrays(root / "data.zarr", mods)
    elif name == "tar_webdataset":
        source = None
    else:
        raise SystemExit(f"unknown format {name}")
    files = [root] if name not in ("records", "records_fsspec") else [Path(store)]
    disk = sum(f.stat().st_size for d in files for f in d.rglob("*") if f.is_file()) / 2 ** 20
    def epoch() -> int:
        if source is None:  # WebDataset's own access pattern: each tar streamed in order
            n = 0
            for shard in sorted(root.glob("shard-*.tar")):
                with tarfile.open(shard, "r|") as tar:
                    for member in tar:
                        blob = tar.extractfile(member).read()  # type: ignore[union-attr]
                        if member.name.endswith(".npy"):
                            np.load(io.BytesIO(blob))
                        else:
                            n += 1
            return n
        split = LazySplit(source, pipe=Pipe(num_workers=0))
        order = split.shard_order(shuffle=True, generator=torch.Generator().manual_seed(0))
        for _ in split.batches(BATCH, order=order, drop_last=True):
            pass
        return len(order) - len(order) % BATCH

    epoch()  # warm: the files in the page cache and opened, as in every epoch but a run's first
    t0 = time.perf_counter()
    n = epoch()
    took = time.perf_counter() - t0
    return {**row, "samples": n, "samples_per_s": n / took, "epoch_s": took, "disk_mb": disk,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "note": ""}


FORMATS = ("records", "records_fsspec", "npy_columns", "hdf5", "parquet", "tar_webdataset", "zarr", "litdata")
