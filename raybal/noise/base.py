"""The corruption registry and the batch transform a robustness sweep applies (DESIGN.md §2).

A corruption is a function ``(x, level, generator) -> x`` applied to one modality at
evaluation time, on the modality as fed to the network; results are *not* clipped, as in Singh
et al. 2024. It registers itself where it is defined, with the levels a sweep uses when the run
file gives none, and ``severities=True`` when its levels are severities 1-5, each mapped to a
documented physical parameter (the ImageNet-C convention; checked when a run file is loaded)::

    @CORRUPTIONS.register("gaussian", levels=(0.0, 0.03, 0.06, 0.09, 0.12, 0.15))
    def gaussian(x, level, g): ...

A sweep corrupts each sample with draws of its own (:func:`joint_corrupter`), so a corruption is
deterministic per (seed, sample) on any batching and any number of workers. ``draws=False`` declares a
corruption without randomness (applied to a whole batch at once); ``rate=True`` one whose level is a
share of a split's samples (``missing``: exactly round(level n) of the n, whatever the batches).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from raybal.config.registry import RegistrationError, Registry

CorruptionFn = Callable[[Tensor, float, torch.Generator], Tensor]
# A batch transform ``(batch, idx) -> batch``; ``idx`` holds the batch's sample indices in its split.
Corrupter = Callable[[dict[str, Tensor], Tensor], dict[str, Tensor]]


def _check_corruption(name: str, obj: Any, params: type | None) -> None:
    if not callable(obj):
        raise RegistrationError(f"corruption {name!r}: must be a function (x, level, generator) -> x")
    try:
        n = len(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return
    if n != 3:
        raise RegistrationError(f"corruption {name!r}: must take (x, level, generator), takes {n} arguments")


CORRUPTIONS: Registry[CorruptionFn] = Registry("corruption", _check_corruption)
SEVERITIES = (1, 2, 3, 4, 5)  # the levels of a corruption registered with ``severities=True``


class CorruptionError(ValueError):
    """A corruption cannot apply to this input (its shape, its level): the message names both."""


def is_severity(corruption: str) -> bool:
    """Are ``corruption``'s levels severities 1-5 (each mapped to documented physical parameters)?"""
    return bool(CORRUPTIONS.get(corruption).meta.get("severities"))


def severity_value(name: str, level: float, table: dict[int, float]) -> float:
    """The physical parameter of severity ``level`` (an integer 1-5) in ``table``."""
    s = int(level)
    if s != level or s not in table:
        raise CorruptionError(f"{name}: the level is a severity, one of {', '.join(map(str, table))}, got {level:g}")
    return table[s]


def image_only(name: str, x: Tensor) -> None:
    """Refuse a modality that is not an image batch (N, C, H, W)."""
    if x.dim() != 4:
        raise CorruptionError(f"{name} needs an image modality (N, C, H, W), got shape {tuple(x.shape)}")


def default_levels(corruption: str) -> tuple[float, ...]:
    """The levels a sweep uses for ``corruption`` when ``[robustness] levels`` names none."""
    return tuple(CORRUPTIONS.get(corruption).meta.get("levels", (1.0,)))


def nonzero_levels(corruption: str) -> list[float]:
    """Its default levels other than 0 (the clean point), or all of them if every one is 0."""
    levels = [float(lv) for lv in default_levels(corruption)]
    return [lv for lv in levels if lv > 0] or levels


def sample_generator(seed: int, stream: int, index: int) -> torch.Generator:
    """The generator of sample ``index``'s draws in ``stream`` (a sweep's corruption part; a training
    epoch) under ``seed``."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + stream) * 1_000_000_007 + index) % (2 ** 63))


def corrupter(modality: str, corruption: str, level: float, seed: int, n: int | None = None,
              means: Mapping[str, Tensor] | None = None) -> Corrupter:
    """A batch transform corrupting one modality (:func:`joint_corrupter` with one part)."""
    return joint_corrupter([(modality, corruption, level)], seed, n, means)


def needs_means(corruption: str) -> bool:
    """Does ``corruption`` fill with the training split's mean (``fill="mean"``, e.g. ``missing_mean``)?"""
    return CORRUPTIONS.get(corruption).meta.get("fill") == "mean"


def joint_corrupter(parts: list[tuple[str, str, float]], seed: int, n: int | None = None,
                    means: Mapping[str, Tensor] | None = None) -> Corrupter:
    """A transform ``(batch, idx) -> batch`` corrupting each (modality, corruption, level) of ``parts`` at
    once (a joint fault, e.g. clouds on EO and extra speckle on SAR); ``idx`` holds the batch's sample
    indices in its split, of ``n`` samples.

    Deterministic per (seed, sample): sample i's draws come from a generator of its own, seeded by
    (``seed``, the part, i), so its corruption does not depend on the batches the split is cut into, their
    order or the number of workers. A corruption registered with ``draws=False`` (no randomness) is applied
    to the whole batch at once. One registered with ``rate=True`` (``missing``) takes exactly
    round(level n) of the split's ``n`` samples, drawn once from (``seed``, the part), and applies itself
    at rate 1 to those; with ``fill="mean"`` (``missing_mean``) those samples hold ``means[modality]``
    instead, the training split's mean per band (:func:`raybal.measure.robustness.train_means`)."""
    steps = []
    for j, (m, c, level) in enumerate(parts):
        entry = CORRUPTIONS.get(c)
        chosen = None
        if entry.meta.get("rate"):
            if n is None:
                raise ValueError(f"{c} is a rate over a split's samples: the corrupter needs the split's size")
            chosen = torch.zeros(n, dtype=torch.bool)
            chosen[torch.randperm(n, generator=sample_generator(seed, j, n))[:round(float(level) * n)]] = True
        fill = None
        if needs_means(c):
            if means is None or m not in means:
                raise ValueError(f"{c} fills with the training mean: the corrupter needs modality {m!r}'s mean")
            fill = means[m]
        steps.append((j, m, entry.obj, float(level), chosen, bool(entry.meta.get("draws", True)), fill))

    def apply(batch: dict[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
        out = dict(batch)
        idx = torch.as_tensor(idx).long().cpu()
        for j, m, fn, level, chosen, draws, fill in steps:
            x = out[m]
            if not len(x) or level <= 0:  # a level 0 is the clean point
                continue
            if len(idx) != len(x):
                raise ValueError(f"{len(idx)} sample indices for a batch of {len(x)}")
            if chosen is not None:
                rows = chosen[idx].to(x.device)
                if bool(rows.any()):
                    x = x.clone()
                    x[rows] = (fill.to(x).expand_as(x[rows]) if fill is not None
                               else fn(x[rows], 1.0, sample_generator(seed, j, -1)))
            elif not draws:
                x = fn(x, level, sample_generator(seed, j, -1))
            else:
                x = torch.cat([fn(x[k:k + 1], level, sample_generator(seed, j, i))
                               for k, i in enumerate(idx.tolist())])
            out[m] = x
        return out

    return apply


def joint_steps(parts: dict[str, str], levels: dict[str, tuple[float, ...]]) -> list[list[tuple[str, str, float]]]:
    """A joint corruption's steps: step k applies each part's k-th non-zero level (as many steps as the
    part with the fewest)."""
    nonzero = {m: [lv for lv in levels[c] if lv > 0] for m, c in parts.items()}
    steps = min(len(v) for v in nonzero.values()) if nonzero else 0
    return [[(m, c, float(nonzero[m][k])) for m, c in parts.items()] for k in range(steps)]
