"""Data-set registry: name -> builder, plus an on-disk cache for generated data.

Each data set registers its builder where it is defined (``@DATASETS.register(name, Params)``,
the params class following :class:`~raybal.data.base.DataParams`); every module of this
package is imported so its entries exist. Generated data sets (``synthetic_aerial``, ``colored_digits`` built from scikit-learn's
digits) are cached under ``data.cache_dir`` (default ``$RAYBAL_CACHE`` or
``~/.cache/raybal``), keyed by a hash of the data config, so a study's trials load the same
arrays instead of regenerating them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from raybal.config import DataConfig, _thaw
from raybal.data.base import DATASETS, DataError, DataParams, MultiModalData, Split
from raybal.fileio import atomic_torch_save
from raybal.registry import import_submodules

import_submodules(__name__, __path__)

# Bump when a generator's output changes, so stale caches are not reused.
GENERATOR_VERSION = 5

_MEMO: dict[str, MultiModalData] = {}


def cache_root(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    env = os.environ.get("RAYBAL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "raybal"


def data_key(cfg: DataConfig) -> str:
    blob = json.dumps({"name": cfg.name, "params": _thaw(cfg.params), "v": GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load_data(cfg: DataConfig) -> MultiModalData:
    """Build (or load from the cache) the data set a config names."""
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
        data = builder(cfg.params)
        if cacheable:
            _atomic_save(data.state(), path)
    if cacheable:  # files on disk may change under the same config: only generated data is memoised
        _MEMO.clear()
        _MEMO[key] = data
    return data


def _atomic_save(obj: Any, path: Path) -> None:
    try:
        atomic_torch_save(obj, path)
    except OSError:
        pass  # an unwritable cache only costs regeneration next time


__all__ = ["DATASETS", "DataError", "DataParams", "MultiModalData", "Split", "load_data", "data_key"]
