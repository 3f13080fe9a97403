"""Optical degradations of an image modality (N, C, H, W), at severities 1-5:

* ``blur``: a Gaussian point-spread function (defocus, motion-free), standard deviation
  {1: 0.5, 2: 1.0, 3: 1.5, 4: 2.0, 5: 3.0} pixels, kernel 2 ceil(3 sigma) + 1, reflected borders;
* ``resolution``: a coarser sensor: each band averaged over f x f blocks and up-sampled back
  (bilinear) to the chip's size, f = {1: 2, 2: 3, 3: 4, 4: 6, 5: 8}.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from raybal.noise.base import CORRUPTIONS, image_only, severity_value

SIGMA = {1: 0.5, 2: 1.0, 3: 1.5, 4: 2.0, 5: 3.0}
FACTOR = {1: 2, 2: 3, 3: 4, 4: 6, 5: 8}


def gaussian_kernel(sigma: float) -> Tensor:
    r = math.ceil(3 * sigma)
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float64) ** 2 / (2 * sigma * sigma))
    return k / k.sum()


@CORRUPTIONS.register("blur", levels=(1, 2, 3, 4, 5), severities=True, draws=False)
def blur(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    """Separable Gaussian blur of every band."""
    image_only("blur", x)
    k = gaussian_kernel(severity_value("blur", level, SIGMA)).to(x)
    n, c, h, w = x.shape
    r = len(k) // 2
    y = x.reshape(n * c, 1, h, w)
    mode = "reflect" if r < min(h, w) else "replicate"
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    return y.view(n, c, h, w)


@CORRUPTIONS.register("resolution", levels=(1, 2, 3, 4, 5), severities=True, draws=False)
def resolution(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    """Down-sample by block averaging, then up-sample back (bilinear)."""
    image_only("resolution", x)
    f = int(severity_value("resolution", level, FACTOR))
    h, w = x.shape[-2:]
    small = F.adaptive_avg_pool2d(x, (max(h // f, 1), max(w // f, 1)))
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
