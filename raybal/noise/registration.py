"""``misregistration``: one modality shifted relative to the others (N, C, H, W), severities 1-5.

Optical and SAR chips of the same scene are co-registered to within a few pixels in practice; here
the corrupted modality's content moves by exactly k = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6} pixels in a
direction drawn per sample among the eight compass directions (a diagonal moves k along each axis),
and the strip it uncovers is filled with the sample's per-band mean (no wrap-around). The labels
and the other modalities stay where they are: for segmentation the mask stays with the reference
modalities.
"""

from __future__ import annotations

import torch
from torch import Tensor

from raybal.noise.base import CORRUPTIONS, CorruptionError, image_only, severity_value

SHIFT = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6}
DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))


def shift(x: Tensor, dy: int, dx: int, fill: Tensor) -> Tensor:
    """(C, H, W) content moved by (dy, dx) pixels; the uncovered strip holds ``fill`` (C, 1, 1)."""
    out = fill.expand_as(x).clone()
    h, w = x.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[:, yd, xd] = x[:, ys, xs]
    return out


@CORRUPTIONS.register("misregistration", levels=(1, 2, 3, 4, 5), severities=True)
def misregistration(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    """Each sample's modality moved by the severity's k pixels in a random compass direction."""
    image_only("misregistration", x)
    k = int(severity_value("misregistration", level, SHIFT))
    if k >= min(x.shape[-2:]):
        raise CorruptionError(f"misregistration: a shift of {k} pixels is not smaller than the "
                              f"{x.shape[-2]}x{x.shape[-1]} chip")
    which = torch.randint(len(DIRECTIONS), (x.shape[0],), generator=g).tolist()
    fill = x.mean(dim=(2, 3), keepdim=True)
    return torch.stack([shift(x[i], k * DIRECTIONS[d][0], k * DIRECTIONS[d][1], fill[i])
                        for i, d in enumerate(which)])
