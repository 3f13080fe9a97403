"""Checkpoints: atomic writes, and everything needed to rebuild a trained model.

A checkpoint carries the whole validated config (as JSON), so ``raybal robustness CKPT``
rebuilds the data set and the model with no other input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from raybal.config import RunConfig, config_from_dict


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write to a temporary name in the same folder, then rename: readers never see half a file."""
    from raybal.results import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"{p}: not a raybal checkpoint ({exc.__class__.__name__})") from None


def config_of(ckpt: dict[str, Any]) -> RunConfig:
    import json

    if "config_json" not in ckpt:
        raise ValueError("not a raybal checkpoint (no config_json)")
    return config_from_dict(json.loads(ckpt["config_json"]))
