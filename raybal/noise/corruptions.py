"""The built-in corruptions (DESIGN.md §2 "Noise robustness").

* ``gaussian``: x + N(0, level) (``level`` is the variance);
* ``blackout``: the modality replaced by zeros for a fraction ``level`` of the samples
  (1.0 = a dead sensor);
* ``speckle``: x * (1 + N(0, level)), the multiplicative noise of coherent sensors (SAR).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from raybal.noise.base import CORRUPTIONS


@CORRUPTIONS.register("gaussian", levels=(0.0, 0.03, 0.06, 0.09, 0.12, 0.15))
def gaussian(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    """Additive Gaussian noise with variance ``level``."""
    if level <= 0:
        return x
    return x + math.sqrt(level) * torch.randn(x.shape, generator=g, dtype=x.dtype)


@CORRUPTIONS.register("blackout", levels=(1.0,))
def blackout(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    """Zero the modality for a fraction ``level`` of the samples."""
    if level <= 0:
        return x
    dead = torch.rand(x.shape[0], generator=g) < level
    return torch.where(dead.view(-1, *([1] * (x.dim() - 1))), torch.zeros_like(x), x)


@CORRUPTIONS.register("speckle", levels=(0.0, 0.1, 0.2, 0.3))
def speckle(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    """Multiplicative noise x * (1 + n), n ~ N(0, level)."""
    if level <= 0:
        return x
    return x * (1 + math.sqrt(level) * torch.randn(x.shape, generator=g, dtype=x.dtype))
