"""Checkpoints: the one module that writes and reads them.

Two kinds, both written atomically (:mod:`raybal._atomic`):

* ``last.pt`` — the state of an unfinished run after an epoch (model, optimizer, scheduler,
  method state, the records so far, the best epoch so far). ``fit`` resumes from it when the
  config's digest matches; a study's recorder rebuilds a stopped trial's records from it.
* ``model.pt`` — the selected weights at the end, with the whole validated config (as JSON) and
  the final metrics, so ``raybal robustness CKPT`` rebuilds the data set and the model with no
  other input.

Both hold only tensors, numbers, strings and lists / dicts of them (the config as its JSON string) and
are read with ``torch.load(weights_only=True)``: a file holding anything else is refused by name.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from raybal._atomic import atomic_torch_save
from raybal.config import RunConfig
from raybal.resolve import config_from_json

LAST = "last.pt"
SELECTED = "model.pt"
# The layout of both kinds. A checkpoint of another layout is refused by name, never half-read; bump it
# with any change to the keys below (the CHANGELOG says what changed).
FORMAT_VERSION = 1
_KEYS = {  # what each kind holds, beside config_json and format_version
    "last": ("config_digest", "epoch", "model", "optimizer", "scheduler", "method", "epochs", "utilization", "best",
             "wall_s"),
    "selected": ("model", "epoch", "final", "trial_id", "normalizer"),
}


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not raybal's; the message names the file."""


def _load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        # weights_only: tensors, numbers, strings and containers of them; any other object in the file (a
        # pickled callable, a class to import) is refused before it is built, so opening a checkpoint from
        # someone else can never run code.
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{p}: not a raybal checkpoint (it holds objects other than tensors and plain "
                              "data; nothing in it was run)") from None
    except Exception as exc:
        raise CheckpointError(f"{p}: not a raybal checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(obj, dict) or "config_json" not in obj:
        raise CheckpointError(f"{p}: not a raybal checkpoint (no config_json)")
    if obj.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{p}: checkpoint format {obj.get('format_version')!r}, this raybal reads "
                              f"format {FORMAT_VERSION}: retrain, or use the raybal that wrote it")
    missing = [k for k in _KEYS.get(obj.get("kind"), ("kind",)) if k not in obj]
    if obj.get("kind") not in _KEYS or missing:
        raise CheckpointError(f"{p}: not a raybal checkpoint (kind {obj.get('kind')!r}, missing {missing})")
    return obj


def save_last(path: Path, *, config: RunConfig, epoch: int, model: dict[str, Any], optimizer: dict[str, Any],
              scheduler: dict[str, Any] | None, method: dict[str, Any], epochs: list[dict[str, Any]],
              utilization: list[dict[str, Any]], best: dict[str, Any], wall_s: float) -> None:
    """The state after ``epoch`` (state dicts, records so far, best so far)."""
    atomic_torch_save({
        "format_version": FORMAT_VERSION, "kind": "last", "config_digest": config.digest(),
        "config_json": config.to_json(), "epoch": epoch,
        "model": model, "optimizer": optimizer, "scheduler": scheduler, "method": method, "epochs": epochs,
        "utilization": utilization, "best": best, "wall_s": wall_s}, path)


def load_last(path: Path, config: RunConfig) -> dict[str, Any] | None:
    """The resumable state in ``path`` when it belongs to ``config`` (same digest), else None."""
    if not path.is_file():
        return None
    st = _load(path)
    return st if st.get("config_digest") == config.digest() else None


def read_records(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float] | None:
    """(epoch rows, utilization rows, wall_s) of an unfinished run, or None when unreadable
    (a checkpoint torn by a killed process)."""
    try:
        st = _load(path)
        return st["epochs"], st["utilization"], float(st["wall_s"])
    except Exception:
        return None


@dataclass
class Selected:
    """A ``model.pt``: the config it was trained with, its weights and what was measured on them."""

    config: RunConfig
    state: dict[str, Any]
    epoch: int
    final: dict[str, Any]
    trial_id: str
    path: Path
    normalizer: dict[str, Any] | None = None  # the data pipeline's statistics (data.normalize), reapplied on reload


def save_selected(path: Path, *, config: RunConfig, model: dict[str, Any], epoch: int, final: dict[str, Any],
                  trial_id: str, normalizer: dict[str, Any] | None = None) -> None:
    """The selected weights, with the input normalisation they were trained behind (``data.normalize``)."""
    atomic_torch_save({"format_version": FORMAT_VERSION, "kind": "selected", "config_json": config.to_json(),
                       "model": model, "epoch": epoch,
                       "final": final, "trial_id": trial_id, "normalizer": normalizer}, path)


def load_selected(path: str | Path) -> Selected:
    """Read a ``model.pt``; raises :class:`CheckpointError` naming the path, in one line."""
    st = _load(path)
    if st["kind"] != "selected":
        raise CheckpointError(f"{path}: a {st['kind']!r} checkpoint, not a raybal model checkpoint (model.pt)")
    try:
        cfg = config_from_json(st["config_json"])
    except Exception as exc:
        raise CheckpointError(f"{path}: the stored config is not valid ({exc})") from None
    return Selected(cfg, st["model"], int(st["epoch"]), dict(st["final"]), str(st["trial_id"]), Path(path),
                    st["normalizer"])
