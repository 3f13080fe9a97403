"""Data-set registry: name -> builder, plus an on-disk cache for generated data.

Generated data sets (``synthetic_aerial``, ``colored_digits`` built from scikit-learn's
digits) are cached under ``data.cache_dir`` (default ``$RAYBAL_CACHE`` or
``~/.cache/raybal``), keyed by a hash of the data config, so a study's trials load the same
arrays instead of regenerating them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from raybal.config import DataConfig, _thaw
from raybal.data.base import DataError, MultiModalData, Split
from raybal.data.digits import ColoredDigitsParams, build_colored_digits
from raybal.data.files import ManifestParams, MavocParams, build_manifest, build_mavoc
from raybal.data.synthetic import SyntheticAerialParams, build_synthetic_aerial
from raybal.registry import Registry

# Bump when a generator's output changes, so stale caches are not reused.
GENERATOR_VERSION = 4

DATASETS: Registry[Callable[[Any], MultiModalData]] = Registry("data set")
DATASETS.register("synthetic_aerial", SyntheticAerialParams)(build_synthetic_aerial)
DATASETS.register("colored_digits", ColoredDigitsParams)(build_colored_digits)
DATASETS.register("mavoc_folder", MavocParams)(build_mavoc)
DATASETS.register("manifest", ManifestParams)(build_manifest)

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
    cacheable = bool(getattr(cfg.params, "cacheable", lambda: False)())
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
    from raybal.checkpoint import atomic_torch_save

    try:
        atomic_torch_save(obj, path)
    except OSError:
        pass  # an unwritable cache only costs regeneration next time


__all__ = ["DATASETS", "DataError", "MultiModalData", "Split", "load_data", "data_key"]
