"""The noise-robustness sweep: modalities x corruptions x levels on each split (DESIGN.md §2).

Each grid point records the metric (accuracy, or mIoU for segmentation) and, when asked,
the permutation MU under that corruption. Rows are tidy, one per (split, modality,
corruption, level), ready for ``robustness.parquet``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raybal.config import RobustnessConfig
from raybal.data.base import MultiModalData
from raybal.models.base import FusionModel
from raybal.noise import DEFAULT_LEVELS, corrupter
from raybal.utilization import measure


def metric_name(task: str) -> str:
    return "accuracy" if task == "classification" else "miou"


def grid(cfg: RobustnessConfig, modalities: tuple[str, ...]) -> list[tuple[str, str, float]]:
    mods = cfg.modalities or modalities
    out = []
    for m in mods:
        for c in cfg.corruptions:
            for level in cfg.levels.get(c, DEFAULT_LEVELS.get(c, (1.0,))):
                out.append((m, c, float(level)))
    return out


def sweep(model: FusionModel, data: MultiModalData, cfg: RobustnessConfig, *, mu_repeats: int = 3,
          progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Evaluate ``model`` over the corruption grid; returns one row per grid point and split."""
    rows: list[dict[str, Any]] = []
    points = grid(cfg, data.modalities)
    total = len(points) * len(cfg.splits)
    metric = metric_name(data.task)
    done = 0
    for split in cfg.splits:
        for i, (mod, corruption, level) in enumerate(points):
            # The same seed per grid point on every split and model: paired comparisons.
            fn = corrupter(mod, corruption, level, seed=cfg.seed * 7919 + i)
            res = measure(model, data.split(split), num_classes=data.num_classes, task=data.task,
                          n_repeats=mu_repeats, seed=cfg.seed, corrupt=fn,
                          modalities=data.modalities if cfg.measure_mu else ())
            row: dict[str, Any] = {"split": split, "modality": mod, "corruption": corruption, "level": level,
                                   metric: res.metric, "loss": res.loss}
            if cfg.measure_mu:
                for m in data.modalities:
                    row[f"mu.{m}"] = res.shares[m]
                    row[f"mu_raw.{m}"] = res.raw[m]
            rows.append(row)
            done += 1
            if progress is not None:
                progress(done, total)
    return rows


def summarize(rows: list[dict[str, Any]], task: str) -> dict[str, float]:
    """``robust.<split>_mean_<metric>`` (the mean over the grid on each split) and one column per
    grid point, ``robust.<split>_<metric>.<modality>.<corruption>.<level>`` (a study objective can
    name either)."""
    metric = metric_name(task)
    out: dict[str, float] = {}
    for r in rows:
        out[f"robust.{r['split']}_{metric}.{r['modality']}.{r['corruption']}.{r['level']:g}"] = r[metric]
    for split in sorted({r["split"] for r in rows}):
        vals = [r[metric] for r in rows if r["split"] == split]
        out[f"robust.{split}_mean_{metric}"] = sum(vals) / len(vals)
    return out
