"""Data-set registry: name -> builder, plus an on-disk cache for generated data.

Each data set registers its builder where it is defined (``@DATASETS.register(name, Params)``,
the params class following :class:`~raybal.data.base.DataParams`); every module of this
package is imported so its entries exist. Generated data sets (``synthetic_aerial``,
``colored_digits`` built from scikit-learn's digits) are cached under ``data.cache_dir`` (default
``$RAYBAL_CACHE`` or ``~/.cache/raybal``), keyed by a hash of the data config, so a study's trials
load the same arrays instead of regenerating them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from raybal._atomic import atomic_torch_save, atomic_write_bytes
from raybal.config import DataConfig, thaw
from raybal.config.registry import import_submodules
from raybal.data.base import DATASETS, DataError, DataParams, MultiModalData, Split
from raybal.data.pipeline import (
    LOADER_KEYS,
    AugmentParams,
    LazySplit,
    LoaderKnobs,
    Normalizer,
    Pipe,
    auto_workers,
    compute_normalizer,
)
from raybal.data.store import Chunked, concat_chunks, read_store, write_store

import_submodules(__name__, __path__)

# Part of every cache key (``data_key``): raised whenever a generator's output changes, so caches
# written by an earlier generator are never reused.
GENERATOR_VERSION = 6

_MEMO: dict[str, MultiModalData] = {}


def cache_root(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    env = os.environ.get("RAYBAL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "raybal"


def data_key(cfg: DataConfig) -> str:
    """The data's identity: its name and knobs, without the pipeline's (workers, normalisation, augmentation)."""
    params = {k: v for k, v in thaw(cfg.params).items() if k not in LOADER_KEYS}
    blob = json.dumps({"name": cfg.name, "params": params, "v": GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load_data(cfg: DataConfig, *, normalizer: Normalizer | dict | None = None) -> MultiModalData:
    """The data set a config names, its splits behind the pipeline its ``[data]`` knobs ask for
    (``num_workers``, ``prefetch``, ``normalize``, ``[data.augment]``). ``normalizer``: the statistics a
    checkpoint stored (a reload applies those, never recomputed ones)."""
    data = _load_raw(cfg)
    p = cfg.params
    if isinstance(normalizer, dict):
        normalizer = Normalizer.from_dict(normalizer)
    if normalizer is None and getattr(p, "normalize", False):
        # a prepared store carries its training split's statistics; others are measured (and cached)
        normalizer = data.normalizer or _normalizer(cfg, data)
    lazy = isinstance(data.train, LazySplit)
    cheap = bool(getattr(getattr(data.train, "source", None), "cheap_reads", False))
    pipe = Pipe(num_workers=auto_workers(getattr(p, "num_workers", None), cheap_reads=cheap) if lazy else 0,
                prefetch=getattr(p, "prefetch", 2), normalizer=normalizer,
                augment=getattr(p, "augment", None) or AugmentParams())
    return dataclasses.replace(data, train=data.train.with_pipe(pipe), val=data.val.with_pipe(pipe),
                               test=data.test.with_pipe(pipe), normalizer=normalizer)


def _normalizer(cfg: DataConfig, data: MultiModalData) -> Normalizer:
    """Training-split statistics, cached beside the data cache (keyed by the data, and for files by
    the training split's files: a changed file is measured again)."""
    source = getattr(data.train, "source", None)
    extra = source.fingerprint() if hasattr(source, "fingerprint") else ""
    key = hashlib.sha256(f"{data_key(cfg)}|{extra}".encode()).hexdigest()[:20]
    path = cache_root(cfg) / "data" / f"{cfg.name}-{key}.norm.json"
    if path.is_file():
        try:
            return Normalizer.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError):
            pass  # a corrupt cache entry is measured again
    norm = compute_normalizer(data.train.with_pipe(
        Pipe(num_workers=auto_workers(getattr(cfg.params, "num_workers", None))
             if isinstance(data.train, LazySplit) else 0)))
    try:
        atomic_write_bytes(path, json.dumps(norm.to_dict()).encode())
    except OSError:
        pass
    return norm


def _load_raw(cfg: DataConfig) -> MultiModalData:
    key = data_key(cfg)
    cacheable = bool(cfg.params.cacheable())
    if cacheable and key in _MEMO:
        return _MEMO[key]
    builder = DATASETS.get(cfg.name).obj
    path = cache_root(cfg) / "data" / f"{cfg.name}-{key}.pt"
    data: MultiModalData | None = None
    if cacheable and path.is_file():
        try:
            data = MultiModalData.from_state(torch.load(path, weights_only=True))
        except Exception:  # a corrupt cache entry is regenerated, never trusted
            data = None
    if data is None:
        built = builder(cfg.params)
        if isinstance(built, Chunked):
            data = _stored(built, cache_root(cfg) / "data" / f"{cfg.name}-{key}" if cacheable else None)
        else:
            data = built
            if cacheable:
                _atomic_save(data.state(), path)
    if cacheable:  # files on disk may change under the same config: only generated data is memoised
        _MEMO.clear()
        _MEMO[key] = data
    return data


def _stored(built: Chunked, path: Path | None) -> MultiModalData:
    """A chunked generator's data, mapped from its store (written first if missing); in memory when
    there is no cache to write to."""
    def assemble(parts: dict[str, tuple[dict[str, torch.Tensor], torch.Tensor]]) -> MultiModalData:
        sp = {s: Split(*parts[s]) for s in ("train", "val", "test")}
        return MultiModalData(sp["train"], sp["val"], sp["test"], built.modalities, built.num_classes,
                              built.task, built.class_names)  # type: ignore[arg-type]

    if path is not None:
        found = read_store(path)
        if found is None:
            try:
                write_store(path, {s: (n, render()) for s, (n, render) in built.splits.items()},
                            {"modalities": list(built.modalities)})
                found = read_store(path)
            except OSError:  # another process's store landed first (then read it), or an unwritable cache
                found = read_store(path)
        if found is not None:
            return assemble(found[1])
    return assemble({s: concat_chunks(render()) for s, (_, render) in built.splits.items()})


def _atomic_save(obj: Any, path: Path) -> None:
    try:
        atomic_torch_save(obj, path)
    except OSError:
        pass  # an unwritable cache only costs regeneration next time


__all__ = ["DATASETS", "DataError", "DataParams", "LazySplit", "LoaderKnobs", "MultiModalData", "Normalizer", "Split",
           "load_data", "data_key"]
