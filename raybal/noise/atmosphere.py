"""Atmospheric corruptions of optical (EO) imagery: clouds with their shadows, and haze.

Both act on an image modality (N, C, H, W) as fed to the network, at severities 1-5:

* ``clouds``: a procedural cloud mask per sample, fractal (value) noise (octaves of bilinearly
  up-sampled uniform noise, amplitudes halving) thresholded at the sample's own quantile so that the
  cloud covers exactly the severity's fraction of the chip, {1: 0.1, 2: 0.2, 3: 0.35, 4: 0.5, 5: 0.7}
  (CloudyBigEarthNet's cloudy chips range from thin patches to mostly covered), with soft edges (the
  mask ramps from 0 to 1 over the top 30 % of the noise above the threshold). Cloud pixels take the
  chip's brightest value per band (clouds saturate the optical sensor); the cloud's shadow, the mask
  offset by 1/8 of the chip down-right, darkens what it covers to 40 %.
* ``haze``: the atmospheric scattering model I = J t + A (1 - t) (Koschmieder; the dark-channel
  prior's form, He et al., CVPR 2009), transmission t = {1: 0.9, 2: 0.75, 3: 0.6, 4: 0.45, 5: 0.3},
  airlight A = the chip's brightest value per band.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raybal.noise.base import CORRUPTIONS, image_only, severity_value

COVERAGE = {1: 0.1, 2: 0.2, 3: 0.35, 4: 0.5, 5: 0.7}
TRANSMISSION = {1: 0.9, 2: 0.75, 3: 0.6, 4: 0.45, 5: 0.3}
SHADOW_DARKENING = 0.4
EDGE = 0.3  # the share of the noise range above the threshold over which the mask ramps up


def fractal_noise(n: int, h: int, w: int, g: torch.Generator, octaves: int = 4) -> Tensor:
    """(n, h, w) value noise in [0, 1]-ish: octaves of random grids (2, 4, 8, ... cells), bilinearly
    up-sampled, with amplitudes halving per octave."""
    out = torch.zeros(n, 1, h, w)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = 2 ** (o + 1)
        grid = torch.rand(n, 1, cells + 1, cells + 1, generator=g)
        out += amp * F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=True)
        total += amp
        amp /= 2
    return out[:, 0] / total


def cloud_mask(n: int, h: int, w: int, coverage: float, g: torch.Generator) -> Tensor:
    """(n, h, w) soft masks in [0, 1] whose core (mask > 0) covers ``coverage`` of each chip: the
    noise above its own (1 - coverage) quantile, ramping to 1 over ``EDGE`` of the range above it."""
    noise = fractal_noise(n, h, w, g)
    flat = noise.flatten(1)
    k = round(coverage * h * w)
    if k <= 0:
        return torch.zeros(n, h, w)
    top = flat.topk(k, dim=1).values
    thr = top[:, -1:]  # the k-th largest: exactly k pixels >= it (ties have probability 0)
    span = (flat.max(1, keepdim=True).values - thr).clamp_min(1e-12) * EDGE
    soft = ((flat - thr) / span + 1e-6).clamp(0.0, 1.0) * (flat >= thr)
    return soft.view(n, h, w)


@CORRUPTIONS.register("clouds", levels=(1, 2, 3, 4, 5), severities=True)
def clouds(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    """Clouds covering the severity's fraction of each chip, with soft edges and an offset shadow."""
    image_only("clouds", x)
    cover = severity_value("clouds", level, COVERAGE)
    n, _, h, w = x.shape
    mask = cloud_mask(n, h, w, cover, g).to(x)[:, None]
    dy, dx = max(h // 8, 1), max(w // 8, 1)
    shadow = torch.zeros_like(mask)
    shadow[..., dy:, dx:] = mask[..., :h - dy, :w - dx]
    shadow = shadow * (1 - mask)  # no shadow under the cloud itself
    bright = x.amax(dim=(2, 3), keepdim=True)
    shaded = x * (1 - shadow * (1 - SHADOW_DARKENING))
    return shaded * (1 - mask) + bright * mask


@CORRUPTIONS.register("haze", levels=(1, 2, 3, 4, 5), severities=True, draws=False)
def haze(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    """I = J t + A (1 - t): transmission t per severity, airlight A the chip's brightest value per band."""
    image_only("haze", x)
    t = severity_value("haze", level, TRANSMISSION)
    airlight = x.amax(dim=(2, 3), keepdim=True)
    return x * t + airlight * (1 - t)
