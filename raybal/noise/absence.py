"""A modality that fails: some of its bands, or all of it, for a share of the samples.

* ``band_drop`` (a multi-band modality, severities 1-5): a band failure. In each sample,
  round(s / 5 * C) of its C bands (at least 1, at most C - 1: the modality keeps one) are drawn and
  zeroed, the value a dead detector gives; for C = 1 the corruption is refused.
* ``missing`` (any modality): the modality is absent for a **missing rate** eta of the samples (the
  level, 0-1; Lee et al., *Multimodal Prompting with Missing Modalities*, CVPR 2023): exactly
  round(eta N) of the N samples have it zero-filled: of a split's N in a sweep (``rate=True``: drawn once
  per split, whatever the batches), of the batch's N when called on a batch (``blackout`` draws each
  sample independently instead).
"""

from __future__ import annotations

import torch
from torch import Tensor

from raybal.noise.base import CORRUPTIONS, CorruptionError, severity_value

BAND_SHARE = {1: 0.2, 2: 0.4, 3: 0.6, 4: 0.8, 5: 1.0}


@CORRUPTIONS.register("band_drop", levels=(1, 2, 3, 4, 5), severities=True)
def band_drop(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    """Zero round(s / 5 * C) bands (1 to C - 1) of each sample, drawn per sample."""
    share = severity_value("band_drop", level, BAND_SHARE)
    if x.dim() < 3 or x.shape[1] < 2:
        raise CorruptionError(f"band_drop needs a modality of at least 2 bands (N, C, ...), got shape "
                              f"{tuple(x.shape)}")
    c = x.shape[1]
    k = min(max(round(share * c), 1), c - 1)
    ranks = torch.rand(x.shape[0], c, generator=g).argsort(dim=1)
    dead = ranks < k  # each sample: k bands, uniformly
    return torch.where(dead.view(*dead.shape, *([1] * (x.dim() - 2))), torch.zeros_like(x), x)


@CORRUPTIONS.register("missing", levels=(0.1, 0.2, 0.3, 0.4, 0.5), level_range=(0.0, 1.0), rate=True)
def missing(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    """Zero-fill the modality for exactly round(level * N) of the batch's N samples."""
    if not 0.0 <= level <= 1.0:
        raise CorruptionError(f"missing: the missing rate must be in [0, 1], got {level:g}")
    n = x.shape[0]
    k = round(level * n)
    if k == 0:
        return x
    gone = torch.zeros(n, dtype=torch.bool)
    gone[torch.randperm(n, generator=g)[:k]] = True
    return torch.where(gone.view(-1, *([1] * (x.dim() - 1))), torch.zeros_like(x), x)
