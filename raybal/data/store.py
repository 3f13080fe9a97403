"""The on-disk store for generated data too large to build in one piece.

A generator that renders a split in chunks (``render_chunks``) appends each chunk to ``.npy`` files
(one per split and modality, plus the labels), so peak memory is one chunk whatever the split's size.
The store is built in a temporary folder and renamed into place when complete (a reader never sees
half of one); reading it back maps the files (copy-on-write) instead of loading them, so a
200,000-sample set costs the pages a run touches, not its size.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import dtype_to_descr, write_array_header_1_0

from raybal.data.pipeline import DataError

SPLITS = ("train", "val", "test")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
DONE = "store.json"


def write_store(path: Path, splits: dict[str, tuple[int, Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]]]],
                meta: dict) -> None:
    """``splits``: name -> (number of samples, chunks of (x, y)). Atomic: a temporary folder renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        for name, (n, chunks) in splits.items():
            # Plain appends, not a writable memory map: pages written through a map stay in this process's
            # resident set (the whole split, by the end), appended ones are the page cache's to drop.
            files: dict[str, Any] = {}
            at = 0
            try:
                for xb, yb in chunks:
                    for key, t in [*((f"x.{m}", v) for m, v in xb.items()), ("y", yb)]:
                        a = np.ascontiguousarray(t.numpy())
                        if key not in files:
                            files[key] = open(tmp / f"{name}.{key}.npy", "wb")  # noqa: SIM115 (closed below)
                            write_array_header_1_0(files[key], {"descr": dtype_to_descr(a.dtype),
                                                                "fortran_order": False, "shape": (n, *a.shape[1:])})
                        files[key].write(a.tobytes())
                    at += len(yb)
            finally:
                for f in files.values():
                    f.close()
            if at != n:
                raise DataError(f"{path}: the {name} split rendered {at} samples, expected {n}")
        (tmp / DONE).write_text(json.dumps(meta, sort_keys=True))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders: give the usual permissions
        if path.exists():  # a concurrent writer finished first: keep its (identical) store
            shutil.rmtree(tmp)
            return
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_store(path: Path) -> tuple[dict, dict[str, tuple[dict[str, torch.Tensor], torch.Tensor]]] | None:
    """(meta, split name -> (x, y) mapped from the files), or None when no complete store is there."""
    if not (path / DONE).is_file():
        return None
    try:
        meta = json.loads((path / DONE).read_text())
        out = {}
        for name in SPLITS:
            x = {m: torch.from_numpy(np.load(path / f"{name}.x.{m}.npy", mmap_mode="c")) for m in meta["modalities"]}
            out[name] = (x, torch.from_numpy(np.load(path / f"{name}.y.npy", mmap_mode="c")))
    except (OSError, ValueError, KeyError):
        return None  # a damaged store is rebuilt, never trusted
    return meta, out


def concat_chunks(chunks: Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]]) -> tuple[dict[str, torch.Tensor],
                                                                                          torch.Tensor]:
    """The chunks in memory (no store to write to)."""
    parts = list(chunks)
    return {m: torch.cat([p[0][m] for p in parts]) for m in parts[0][0]}, torch.cat([p[1] for p in parts])


@dataclass(frozen=True)
class Chunked:
    """What a generator that renders in chunks returns instead of a ``MultiModalData``: per split its
    size and a function yielding its chunks; :func:`raybal.data.load_data` stores them (or, with no
    writable cache, concatenates them in memory)."""

    splits: dict[str, tuple[int, Callable[[], Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]]]]]
    modalities: tuple[str, ...]
    num_classes: int
    task: str
    class_names: tuple[str, ...] = ()
