"""The noise-robustness sweep: modalities x corruptions x levels on each split (DESIGN.md §2).

Each grid point records the metric (accuracy, or mIoU for segmentation) and, when asked,
the permutation MU under that corruption. Rows are tidy, one per (split, modality,
corruption, level), built by :func:`raybal.records.robustness_row`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raybal.config import RobustnessConfig
from raybal.data.base import MultiModalData
from raybal.models.base import FusionModel
from raybal.noise import corrupter, default_levels
from raybal.records import robustness_row
from raybal.utilization import measure


def grid(cfg: RobustnessConfig, modalities: tuple[str, ...]) -> list[tuple[str, str, float]]:
    mods = cfg.modalities or modalities
    out = []
    for m in mods:
        for c in cfg.corruptions:
            for level in cfg.levels.get(c, default_levels(c)):
                out.append((m, c, float(level)))
    return out


def sweep(model: FusionModel, data: MultiModalData, cfg: RobustnessConfig, *, trial_id: str, mu_repeats: int = 3,
          progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Evaluate ``model`` over the corruption grid; returns one row per grid point and split."""
    rows: list[dict[str, Any]] = []
    points = grid(cfg, data.modalities)
    total = len(points) * len(cfg.splits)
    done = 0
    for split in cfg.splits:
        for i, (mod, corruption, level) in enumerate(points):
            # The same seed per grid point on every split and model: paired comparisons.
            fn = corrupter(mod, corruption, level, seed=cfg.seed * 7919 + i)
            res = measure(model, data.split(split), num_classes=data.num_classes, task=data.task,
                          n_repeats=mu_repeats, seed=cfg.seed, corrupt=fn,
                          modalities=data.modalities if cfg.measure_mu else ())
            rows.append(robustness_row(trial_id, split, mod, corruption, level, data.task, res, cfg.measure_mu))
            done += 1
            if progress is not None:
                progress(done, total)
    return rows
