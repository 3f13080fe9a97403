"""``raybal prepare``: read a data set through its own loader once and pack it into record shards.

The layout is :mod:`raybal.data.prepared`'s. The source is read in order by the loader's DataLoader
processes (``data.num_workers``, or ``workers``), so the samples, their split assignment and their
order are the loader's own: training on the store is training on the source, bit for bit. Each shard
is written under a temporary name and renamed when whole; a marker file holds the source's identity
while the prepare is under way. An interrupted prepare resumes where it stopped (whole shards are
kept, checked against their expected size and header); ``prepared.json`` is written last, so a
half-written store is never read as complete. ``OUT`` must be new, empty, or an earlier prepare of the
same source.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raybal._atomic import atomic_path, atomic_write_bytes
from raybal.config import DataConfig, thaw
from raybal.data.base import DataError
from raybal.data.prepared import (
    FORMAT,
    FORMAT_VERSION,
    MARKER,
    META,
    SPLITS,
    ShardSource,
    header_matches,
    record_dtype,
    shard_header,
    shard_name,
)

Progress = Callable[[dict[str, Any]], None]


def source_identity(cfg: DataConfig) -> dict[str, Any]:
    """The source's data config (without augmentation, which a store never holds) and its cache key."""
    from raybal.data import data_key

    return {"data": {"name": cfg.name, **{k: v for k, v in thaw(cfg.params).items() if k not in ("augment",)}},
            "key": data_key(cfg)}


def check_out(out: Path, identity: dict[str, Any]) -> str:
    """What ``out`` holds: ``"new"``, ``"resume"`` (an unfinished prepare of this source) or ``"done"``
    (a finished one); a :class:`DataError` when it is anything else."""
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder (prepare writes a new or empty folder)")
    for name, state in ((META, "done"), (MARKER, "resume")):
        if (out / name).is_file():
            try:
                found = json.loads((out / name).read_text())
            except ValueError:
                raise DataError(f"{out / name}: not valid JSON; remove {out} and prepare again") from None
            key = found.get("source", {}).get("key") if isinstance(found, dict) else None
            if key != identity["key"]:
                was = found.get("source", {}).get("data", {}).get("name", "?") if isinstance(found, dict) else "?"
                raise DataError(f"{out}: holds a store prepared from another data config ({was}); choose another "
                                "folder or remove it")
            return state
    entries = sorted(p.name for p in out.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise DataError(f"{out}: exists and holds other files ({shown}); prepare writes a new or empty folder")
    return "new"


def _shard_whole(path: Path, dtype: np.dtype, n: int) -> bool:
    length = len(shard_header(dtype, n))
    if not path.is_file() or path.stat().st_size != length + n * dtype.itemsize:
        return False
    with open(path, "rb") as f:
        return header_matches(f.read(length), dtype, n)


def _layout(splits: dict[str, Any]) -> dict[str, Any]:
    """What the source's splits hold (their sizes and a digest of their sample assignment): a prepare
    resumes only on the same."""
    import hashlib

    out = {}
    for name, sp in splits.items():
        idx = np.asarray(sp.indices if hasattr(sp, "indices") else np.arange(len(sp)), dtype=np.int64)
        out[name] = {"n": len(sp), "indices": hashlib.sha256(idx.tobytes()).hexdigest()[:16]}
    return out


def _label_layout(split: Any) -> tuple[tuple[int, ...], bool]:
    _, yb = next(iter(split.batches(1, raw=True)))
    return tuple(yb.shape[1:]), bool(torch.is_floating_point(yb))


def prepare(cfg: DataConfig, out: str | Path, *, workers: int | None = None, shard_mb: float = 64.0,
            shard_samples: int | None = None, batch_size: int = 256,
            progress: Progress | None = None) -> dict[str, Any]:
    """Pack the data set ``cfg`` names into ``out``; returns the store's ``prepared.json`` content.
    ``shard_mb``: the target size of a shard (whole records, at least one); ``shard_samples``: records per
    shard instead."""
    from raybal.data import _load_raw
    from raybal.data.pipeline import LazySplit, Pipe, auto_workers, compute_normalizer

    out = Path(out).expanduser()
    identity = source_identity(cfg)
    state = check_out(out, identity)
    if state == "done":
        return json.loads((out / META).read_text())
    data = _load_raw(cfg)  # the loader's samples as they are: no normalisation, no augmentation
    n_workers = auto_workers(getattr(cfg.params, "num_workers", None) if workers is None else workers)
    splits = {s: data.split(s).with_pipe(Pipe(num_workers=n_workers if isinstance(data.split(s), LazySplit) else 0))
              for s in SPLITS}
    shapes = {m: tuple(data.train.shapes[m]) for m in data.modalities}  # records in the declared order
    label_shape, label_float = _label_layout(splits["train"])
    dtype = record_dtype(shapes, label_shape, label_float)
    per = shard_samples or max(1, int(shard_mb * 2 ** 20) // dtype.itemsize)
    layout = _layout(splits)
    if state == "resume":  # the shards already written fix the shard size; the source must be the same
        marker = json.loads((out / MARKER).read_text())
        per = int(marker.get("shard_size", per))
        if marker.get("layout") != layout:
            raise DataError(f"{out}: the source's samples or splits changed since this prepare began (its files "
                            "were added, removed or moved); remove the folder and prepare again")
        for tmp in out.glob(".*.tmp"):  # a shard being written when the prepare was killed
            tmp.unlink(missing_ok=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / MARKER, json.dumps({"source": identity, "format_version": FORMAT_VERSION,
                                                     "shard_size": per, "layout": layout}, sort_keys=True).encode())
    info: dict[str, Any] = {}
    total = sum(len(sp) for sp in splits.values())
    done = 0
    t0 = time.perf_counter()
    for name, split in splits.items():
        n = len(split)
        counts = [min(per, n - k * per) for k in range(math.ceil(n / per))]
        info[name] = {"n": n, "shards": counts}
        index = split.indices if isinstance(split, LazySplit) else torch.arange(n)
        with atomic_path(out / f"{name}.index.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(index, dtype=np.int64), allow_pickle=False)
        pending = [k for k, c in enumerate(counts) if not _shard_whole(out / shard_name(name, k), dtype, c)]
        done += n - sum(counts[k] for k in pending)
        if not pending:
            continue
        order = torch.cat([torch.arange(k * per, k * per + counts[k]) for k in pending])
        queue = list(pending)
        buf = np.empty(counts[queue[0]], dtype=dtype)
        fill = 0
        for xb, yb in split.batches(batch_size, order=order, raw=True):
            at = 0
            while at < len(yb):
                take = min(len(yb) - at, len(buf) - fill)
                for m in shapes:
                    buf[f"x.{m}"][fill:fill + take] = xb[m][at:at + take].numpy()
                buf["label"][fill:fill + take] = yb[at:at + take].numpy()
                fill, at = fill + take, at + take
                if fill == len(buf):
                    k = queue.pop(0)
                    _write_shard(out / shard_name(name, k), dtype, buf)
                    done += len(buf)
                    if progress is not None:
                        progress({"prepare": (done, total), "split": name,
                                  "rate": done / max(time.perf_counter() - t0, 1e-9)})
                    if queue:
                        buf, fill = np.empty(counts[queue[0]], dtype=dtype), 0
        if queue:
            raise DataError(f"{out}: the {name} split yielded fewer samples than its {n} (the source changed?)")
    norm = compute_normalizer(_stored_train(out, per, info, shapes, label_shape, label_float, n_workers))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "source": identity, "task": data.task,
            "num_classes": int(data.num_classes), "class_names": list(data.class_names),
            "modalities": list(data.modalities), "shapes": {m: list(s) for m, s in shapes.items()},
            "label": {"shape": list(label_shape), "dtype": "float32" if label_float else "int64"},
            "shard_size": per, "splits": info, "layout": layout, "normalizer": norm.to_dict(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_bytes(out / META, (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
    (out / MARKER).unlink(missing_ok=True)
    if progress is not None:
        progress({"prepare": (total, total), "split": "done", "rate": total / max(time.perf_counter() - t0, 1e-9)})
    return meta


def _write_shard(path: Path, dtype: np.dtype, records: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(shard_header(dtype, len(records)))
            f.write(records.tobytes())
            f.flush()
            os.fsync(f.fileno())


def _stored_train(out: Path, per: int, info: dict[str, Any], shapes: dict[str, tuple[int, ...]],
                  label_shape: tuple[int, ...], label_float: bool, workers: int) -> Any:
    """The training split as written, for its per-channel statistics (read back from the shards)."""
    from raybal.data.pipeline import LazySplit, Pipe

    meta = {"splits": info, "shard_size": per, "shapes": {m: list(s) for m, s in shapes.items()},
            "modalities": list(shapes),
            "label": {"shape": list(label_shape), "dtype": "float32" if label_float else "int64"}}
    return LazySplit(ShardSource(str(out), "train", meta, tuple(shapes)), pipe=Pipe(num_workers=workers))
