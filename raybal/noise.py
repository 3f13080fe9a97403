"""Corruptions applied to one modality at evaluation time (DESIGN.md §2 "Noise robustness").

Inputs are scaled to [0, 1]; corruptions are applied to the modality as fed to the network
and are *not* clipped back into [0, 1], as in Singh et al. 2024 (additive noise of variance v
on the normalised input). Each corruption is a function ``(x, level, generator) -> x``:

* ``gaussian``: x + N(0, level) (``level`` is the variance);
* ``blackout``: the modality replaced by zeros for a fraction ``level`` of the samples
  (1.0 = a dead sensor);
* ``speckle``: x * (1 + N(0, level)), the multiplicative noise of coherent sensors (SAR).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from raybal.registry import Registry

DEFAULT_LEVELS: dict[str, tuple[float, ...]] = {
    "gaussian": (0.0, 0.03, 0.06, 0.09, 0.12, 0.15),
    "blackout": (1.0,),
    "speckle": (0.0, 0.1, 0.2, 0.3),
}

CorruptionFn = Callable[[Tensor, float, torch.Generator], Tensor]
CORRUPTIONS: Registry[CorruptionFn] = Registry("corruption")


@CORRUPTIONS.register("gaussian")
def gaussian(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    """Additive Gaussian noise with variance ``level``."""
    if level <= 0:
        return x
    return x + math.sqrt(level) * torch.randn(x.shape, generator=g, dtype=x.dtype)


@CORRUPTIONS.register("blackout")
def blackout(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    """Zero the modality for a fraction ``level`` of the samples."""
    if level <= 0:
        return x
    dead = torch.rand(x.shape[0], generator=g) < level
    return torch.where(dead.view(-1, *([1] * (x.dim() - 1))), torch.zeros_like(x), x)


@CORRUPTIONS.register("speckle")
def speckle(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    """Multiplicative noise x * (1 + n), n ~ N(0, level)."""
    if level <= 0:
        return x
    return x * (1 + math.sqrt(level) * torch.randn(x.shape, generator=g, dtype=x.dtype))


def corrupter(modality: str, corruption: str, level: float, seed: int) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """A batch transform corrupting one modality; seeded, so a sweep is reproducible."""
    fn = CORRUPTIONS.get(corruption).obj
    g = torch.Generator().manual_seed(seed)

    def apply(batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = dict(batch)
        out[modality] = fn(batch[modality], level, g)
        return out

    return apply
