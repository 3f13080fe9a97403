"""The noise-robustness sweep: modalities x corruptions x levels on each split (DESIGN.md §2).

Each grid point measures the metric (accuracy, or mIoU for segmentation) and, when asked,
the permutation MU under that corruption. The measurements are returned as :class:`Point`s;
:func:`raybal.results.schema.robustness_rows` turns them into ``robustness.parquet`` rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from raybal.config import ConfigError, RobustnessConfig
from raybal.data.base import MultiModalData
from raybal.measure.utilization import MUResult, measure
from raybal.models.base import FusionModel
from raybal.noise import CORRUPTIONS, CorruptionError, corrupter, default_levels


@dataclass(frozen=True)
class Point:
    """One grid point's measurement on one split."""

    split: str
    modality: str
    corruption: str
    level: float
    result: MUResult


def grid(cfg: RobustnessConfig, modalities: tuple[str, ...]) -> list[tuple[str, str, float]]:
    mods = cfg.modalities or modalities
    out = []
    for m in mods:
        for c in cfg.corruptions:
            for level in cfg.levels.get(c, default_levels(c)):
                out.append((m, c, float(level)))
    return out


def check_corruptions(cfg: RobustnessConfig, data: MultiModalData) -> None:
    """Every grid point applies to its modality's shape (e.g. a shift smaller than the chip, a band to
    drop): tried on two validation samples before any training, a misfit is a :class:`ConfigError`
    naming the corruption's key."""
    if not cfg.enabled:
        return
    xb, _ = next(iter(data.val.batches(2)))
    index = {c: i for i, c in enumerate(cfg.corruptions)}
    for m, c, level in grid(cfg, data.modalities):
        try:
            CORRUPTIONS.get(c).obj(xb[m], level, torch.Generator().manual_seed(0))
        except CorruptionError as exc:
            raise ConfigError(f"robustness.corruptions[{index[c]}]", f"{c} on modality {m!r}: {exc}") from None


def sweep(model: FusionModel, data: MultiModalData, cfg: RobustnessConfig, *, mu_repeats: int = 3,
          progress: Callable[[int, int], None] | None = None) -> list[Point]:
    """Evaluate ``model`` over the corruption grid; returns one point per grid point and split."""
    points_out: list[Point] = []
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
            points_out.append(Point(split, mod, corruption, level, res))
            done += 1
            if progress is not None:
                progress(done, total)
    return points_out
