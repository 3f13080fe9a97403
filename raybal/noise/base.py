"""The corruption registry and the batch transform a robustness sweep applies (DESIGN.md §2).

A corruption is a function ``(x, level, generator) -> x`` applied to one modality at
evaluation time, on the modality as fed to the network; results are *not* clipped, as in Singh
et al. 2024. It registers itself where it is defined, with the levels a sweep uses when the run
file gives none, and ``severities=True`` when its levels are severities 1-5, each mapped to a
documented physical parameter (the ImageNet-C convention; checked when a run file is loaded)::

    @CORRUPTIONS.register("gaussian", levels=(0.0, 0.03, 0.06, 0.09, 0.12, 0.15))
    def gaussian(x, level, g): ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from raybal.config.registry import RegistrationError, Registry

CorruptionFn = Callable[[Tensor, float, torch.Generator], Tensor]


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


def corrupter(modality: str, corruption: str, level: float,
              seed: int) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """A batch transform corrupting one modality; seeded, so a sweep is reproducible."""
    return joint_corrupter([(modality, corruption, level)], seed)


def joint_corrupter(parts: list[tuple[str, str, float]],
                    seed: int) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """A batch transform corrupting each (modality, corruption, level) of ``parts`` at once (a joint fault,
    e.g. clouds on EO and extra speckle on SAR); one seeded generator, so a sweep is reproducible."""
    fns = [(m, CORRUPTIONS.get(c).obj, level) for m, c, level in parts]
    g = torch.Generator().manual_seed(seed)

    def apply(batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = dict(batch)
        for m, fn, level in fns:
            out[m] = fn(out[m], level, g)
        return out

    return apply


def joint_steps(parts: dict[str, str], levels: dict[str, tuple[float, ...]]) -> list[list[tuple[str, str, float]]]:
    """A joint corruption's steps: step k applies each part's k-th non-zero level (as many steps as the
    part with the fewest)."""
    nonzero = {m: [lv for lv in levels[c] if lv > 0] for m, c in parts.items()}
    steps = min(len(v) for v in nonzero.values()) if nonzero else 0
    return [[(m, c, float(nonzero[m][k])) for m, c in parts.items()] for k in range(steps)]
