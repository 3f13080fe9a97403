"""A modality that fails: some of its bands, or all of it, for a share of the samples.

* ``band_drop`` (a multi-band modality, severities 1-5): a band failure. In each sample,
  round(s / 5 * C) of its C bands (at least 1, at most C - 1: the modality keeps one) are drawn and
  zeroed, the value a dead detector gives; for C = 1 the corruption is refused.
* ``missing`` (any modality): the modality is absent for a **missing rate** eta of the samples (the
  level, 0-1; Lee et al., *Multimodal Prompting with Missing Modalities*, CVPR 2023): exactly
  round(eta N) of the N samples have it zero-filled: of a split's N in a sweep (``rate=True``: drawn once
  per split, whatever the batches), of the batch's N when called on a batch (``blackout`` draws each
  sample independently instead).
* ``missing_mean``: the same samples absent, filled with the modality's training mean per band (a
  missing-modality protocol's mean imputation) instead of zeros. After ``data.normalize`` the two differ
  only by how far the normalisation's statistics are from the training split's. No method of raybal has
  a missing-input path of its own: ``modality_dropout`` trains on zero-filled modalities, so ``missing``
  is its path.
* ``dead_bands``: named bands lost in every sample (a dead detector, e.g. ``[robustness] bands =
  {dead_nir = {eo = [3]}}``), zeroed; its level is the bit mask of the bands (:func:`band_mask`), which
  ``[robustness] bands`` builds.
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
    """Zero-fill the modality for exactly round(level * N) of N samples (a sweep: of the split's N)."""
    return _absent("missing", x, level, g, torch.zeros_like(x[:1]))


@CORRUPTIONS.register("missing_mean", levels=(0.1, 0.2, 0.3, 0.4, 0.5), level_range=(0.0, 1.0), rate=True,
                      fill="mean")
def missing_mean(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    """Fill the modality with its mean per band for exactly round(level * N) of N samples (a sweep: the
    training split's mean, of the split's N)."""
    return _absent("missing_mean", x, level, g, band_mean(x))


def band_mean(x: Tensor) -> Tensor:
    """The mean of each band (channel, or feature of a vector modality) over the samples and pixels of
    ``x`` (N, C, ...), shaped (1, C, 1, ...) to fill a sample."""
    dims = (0, *range(2, x.dim()))
    return x.mean(dim=dims, keepdim=True)


def _absent(name: str, x: Tensor, level: float, g: torch.Generator, fill: Tensor) -> Tensor:
    if not 0.0 <= level <= 1.0:
        raise CorruptionError(f"{name}: the missing rate must be in [0, 1], got {level:g}")
    n = x.shape[0]
    k = round(level * n)
    if k == 0:
        return x
    gone = torch.zeros(n, dtype=torch.bool)
    gone[torch.randperm(n, generator=g)[:k]] = True
    return torch.where(gone.view(-1, *([1] * (x.dim() - 1))), fill.to(x).expand_as(x), x)


@CORRUPTIONS.register("dead_bands", levels=(1.0,), draws=False)
def dead_bands(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    """Zero the bands whose bits are set in the level, sum_b 2^b: named band failures (``[robustness] bands``)."""
    mask = int(level)
    if mask != level or mask <= 0:
        raise CorruptionError(f"dead_bands: the level is a bit mask of band indices (sum of 2^b), got {level:g}")
    if x.dim() < 2:
        raise CorruptionError(f"dead_bands needs a modality with bands (N, C, ...), got shape {tuple(x.shape)}")
    bands = [b for b in range(mask.bit_length()) if mask >> b & 1]
    c = x.shape[1]
    if bands[-1] >= c:
        raise CorruptionError(f"band {bands[-1]} does not exist: the modality has {c} band{'s' if c > 1 else ''} "
                              f"(0-{c - 1})")
    out = x.clone()
    out[:, bands] = 0
    return out


def band_mask(bands: list[int] | tuple[int, ...]) -> float:
    """The ``dead_bands`` level that zeroes ``bands``."""
    return float(sum(1 << int(b) for b in set(bands)))
