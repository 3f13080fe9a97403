"""The corruption registry and the batch transform a robustness sweep applies (DESIGN.md §2).

A corruption is a function ``(x, level, generator) -> x`` applied to one modality at
evaluation time, on the modality as fed to the network (inputs scaled to [0, 1]); results are
*not* clipped back into [0, 1], as in Singh et al. 2024. It registers itself where it is
defined, with the levels a sweep uses when the run file gives none::

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


def default_levels(corruption: str) -> tuple[float, ...]:
    """The levels a sweep uses for ``corruption`` when ``[robustness] levels`` names none."""
    return tuple(CORRUPTIONS.get(corruption).meta.get("levels", (1.0,)))


def corrupter(modality: str, corruption: str, level: float,
              seed: int) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """A batch transform corrupting one modality; seeded, so a sweep is reproducible."""
    fn = CORRUPTIONS.get(corruption).obj
    g = torch.Generator().manual_seed(seed)

    def apply(batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = dict(batch)
        out[modality] = fn(batch[modality], level, g)
        return out

    return apply
