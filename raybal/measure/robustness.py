"""The noise-robustness sweep: modalities x corruptions x levels on each split (DESIGN.md §2), and the
joint corruptions (several modalities at once, ``[robustness] joint``) step by step.

Each grid point measures the metric (accuracy, or mIoU for segmentation) and, when asked,
the permutation MU under that corruption; with ``robustness.bootstrap`` resamples, the metric on each
resample of the split too, and the clean metric on the same resamples (:mod:`raybal.measure.bootstrap`).
Each sample's corruption depends on (seed, grid point, sample) only (:func:`raybal.noise.joint_corrupter`).
The measurements are returned as :class:`Point`s; :func:`raybal.results.schema.robustness_rows` turns
them into ``robustness.parquet`` rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from raybal.config import ConfigError, RobustnessConfig, RunConfig
from raybal.data.base import MultiModalData
from raybal.measure.bootstrap import Bootstrap
from raybal.measure.utilization import MUResult, measure
from raybal.models.base import FusionModel
from raybal.noise import (
    CORRUPTIONS,
    CorruptionError,
    default_levels,
    joint_corrupter,
    joint_steps,
    needs_means,
    nonzero_levels,
)
from raybal.noise.absence import band_mask, band_mean


@dataclass(frozen=True)
class Point:
    """One grid point's measurement on one split."""

    split: str
    modality: str
    corruption: str
    level: float
    result: MUResult
    boot: tuple[float, ...] = ()  # the metric on each bootstrap resample of the split (raybal.measure.bootstrap)
    clean_boot: tuple[float, ...] = ()  # the clean metric on the same resamples
    resamples: str = ""  # what the resamples were drawn from (raybal.measure.bootstrap.resamples_key)


def grid(cfg: RobustnessConfig, modalities: tuple[str, ...]) -> list[tuple[str, str, float]]:
    mods = cfg.modalities or modalities
    out = []
    for m in mods:
        for c in cfg.corruptions:
            for level in cfg.levels.get(c, default_levels(c)):
                out.append((m, c, float(level)))
    return out


def joint_grid(cfg: RobustnessConfig, modalities: tuple[str, ...]) -> list[tuple[str, str, float,
                                                                                 list[tuple[str, str, float]]]]:
    """The joint corruptions' points: (modalities joined by "+" in the data set's order, the joint's name,
    step k = 1, 2, ..., the (modality, corruption, level) parts of that step)."""
    out = []
    for name, parts in cfg.joint.items():
        ordered = {m: parts[m] for m in modalities if m in parts}
        levels = {c: tuple(cfg.levels.get(c, default_levels(c))) for c in ordered.values()}
        for k, step in enumerate(joint_steps(ordered, levels), start=1):
            out.append(("+".join(ordered), name, float(k), step))
    return out


def band_grid(cfg: RobustnessConfig, modalities: tuple[str, ...]) -> list[tuple[str, str, float,
                                                                                 list[tuple[str, str, float]]]]:
    """The named band failures' points (``[robustness] bands``): (modalities joined by "+", the name, 1,
    a ``dead_bands`` part per modality)."""
    out = []
    for name, parts in cfg.bands.items():
        ordered = {m: parts[m] for m in modalities if m in parts}
        out.append(("+".join(ordered), name, 1.0, [(m, "dead_bands", band_mask(b)) for m, b in ordered.items()]))
    return out


def _misfit(corruption: str, level: float, x: Tensor) -> str | None:
    """Why ``corruption`` at ``level`` cannot apply to the batch ``x`` (None: it can)."""
    try:
        CORRUPTIONS.get(corruption).obj(x, level, torch.Generator().manual_seed(0))
    except CorruptionError as exc:
        return str(exc)
    return None


def _probe(data: MultiModalData) -> dict[str, Tensor]:
    """Two validation samples: what a corruption is tried on before it is swept."""
    return next(iter(data.val.batches(2)))[0]


def check_corruptions(run: RunConfig, data: MultiModalData) -> None:
    """Every corruption applies to its modality's shape (e.g. a shift smaller than the chip, a band to
    drop): each sweep grid point and each training augmentation (``[data.augment] corruptions``) is
    tried on validation samples before any training; a misfit is a :class:`ConfigError` naming its key.
    With ``robustness.modalities`` empty (every modality) a corruption is swept on the modalities whose
    shape it fits (a band drop skips a 1-band SAR chip) and must fit at least one."""
    cfg = run.robustness
    xb = _probe(data)
    index = {c: i for i, c in enumerate(cfg.corruptions)}
    fitting: dict[str, int] = {c: 0 for c in cfg.corruptions}
    for m, c, level in grid(cfg, data.modalities) if cfg.enabled else ():
        why = _misfit(c, level, xb[m])
        if why is None:
            fitting[c] += 1
        elif cfg.modalities:  # named modalities: every pair must apply
            raise ConfigError(f"robustness.corruptions[{index[c]}]", f"{c} on modality {m!r}: {why}")
    for c, n in fitting.items() if cfg.enabled and not cfg.modalities else ():
        if not n:  # every modality swept: a corruption skips those it does not fit, but must fit one
            raise ConfigError(f"robustness.corruptions[{index[c]}]", f"{c} applies to no modality of the data set "
                              f"({', '.join(f'{m} {tuple(xb[m].shape[1:])}' for m in data.modalities)})")
    for _, name, _, parts in joint_grid(cfg, data.modalities) if cfg.enabled else ():
        for m, c, level in parts:
            if (why := _misfit(c, level, xb[m])) is not None:
                raise ConfigError(f"robustness.joint.{name}.{m}", f"{c} on modality {m!r}: {why}")
    for _, name, _, parts in band_grid(cfg, data.modalities) if cfg.enabled else ():
        for m, c, level in parts:
            if (why := _misfit(c, level, xb[m])) is not None:
                raise ConfigError(f"robustness.bands.{name}.{m}", f"on modality {m!r}: {why}")
    augment = getattr(run.data.params, "augment", None)
    for m, table in augment.corruptions.items() if augment is not None else ():
        for c in table:
            for level in nonzero_levels(c):
                if (why := _misfit(c, level, xb[m][:1])) is not None:
                    raise ConfigError(f"data.augment.corruptions.{m}.{c}", f"on modality {m!r}: {why}")


@torch.no_grad()
def train_means(data: MultiModalData, modalities: set[str], batch_size: int = 512) -> dict[str, Tensor]:
    """Each of ``modalities``' mean per band over the training split, as fed to the network (after
    normalisation, without augmentation): what ``missing_mean`` fills an absent modality with."""
    sums: dict[str, Tensor] = {}
    n = 0
    for xb, _ in data.train.batches(batch_size) if modalities else ():
        k = len(next(iter(xb.values())))
        for m in modalities:
            s = band_mean(xb[m].double()) * k
            sums[m] = s if m not in sums else sums[m] + s
        n += k
    return {m: (s / max(n, 1)).float() for m, s in sums.items()}


def sweep(model: FusionModel, data: MultiModalData, cfg: RobustnessConfig, *, mu_repeats: int = 3,
          progress: Callable[[int, int], None] | None = None) -> list[Point]:
    """Evaluate ``model`` over the corruption grid; returns one point per grid point and split."""
    points_out: list[Point] = []
    xb = _probe(data) if not cfg.modalities else {}
    points = [(m, c, level, [(m, c, level)]) for m, c, level in grid(cfg, data.modalities)
              if cfg.modalities or _misfit(c, level, xb[m]) is None]  # every modality swept: where it fits
    points += joint_grid(cfg, data.modalities) + band_grid(cfg, data.modalities)
    total = len(points) * len(cfg.splits)
    done = 0
    means = train_means(data, {m for _, _, _, parts in points for m, c, _ in parts if needs_means(c)})
    for split in cfg.splits:
        s = data.split(split)
        boot, clean = None, ()
        if cfg.bootstrap:  # the same resamples for every run of this split and seed: paired intervals
            boot = Bootstrap.for_split(len(s), cfg.bootstrap, cfg.seed, data.task, data.num_classes,
                                       device=next(model.parameters()).device)
            acc = boot.fresh()
            measure(model, s, num_classes=data.num_classes, task=data.task, modalities=(), boot=acc)
            clean = tuple(acc.metrics())
        for i, (mod, corruption, level, parts) in enumerate(points):
            # The same seed per grid point on every split and model: paired comparisons.
            fn = joint_corrupter(parts, seed=cfg.seed * 7919 + i, n=len(s), means=means)
            acc = boot.fresh() if boot is not None else None
            res = measure(model, s, num_classes=data.num_classes, task=data.task, n_repeats=mu_repeats,
                          seed=cfg.seed, corrupt=fn, modalities=data.modalities if cfg.measure_mu else (), boot=acc)
            points_out.append(Point(split, mod, corruption, level, res, tuple(acc.metrics()) if acc else (), clean,
                                    boot.key if boot is not None else ""))
            done += 1
            if progress is not None:
                progress(done, total)
    return points_out
