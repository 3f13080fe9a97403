"""A small U-Net with one encoder per modality for segmentation.

Each modality has its own down path; the modalities first meet in the shared decoder, where
the skip features of every modality are concatenated level by level. ``encode`` returns each
modality's tuple of skip features, so shuffling a modality shuffles all its scales with
the same permutation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raybal.config import knob
from raybal.models.base import MODELS, Features, FusionModel, ModelOutput, conv_block


@dataclass(frozen=True)
class UNetParams:
    width: int = knob(16, ge=2, le=256)
    depth: int = knob(3, ge=1, le=5, doc="down-sampling levels")


class _Down(nn.Module):
    def __init__(self, cin: int, width: int, depth: int) -> None:
        super().__init__()
        chans = [width * 2 ** i for i in range(depth + 1)]
        self.blocks = nn.ModuleList()
        c = cin
        for co in chans:
            self.blocks.append(nn.Sequential(conv_block(c, co), conv_block(co, co)))
            c = co
        self.chans = chans

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        outs = []
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            outs.append(x)
        return tuple(outs)


@MODELS.register("unet", UNetParams)
class UNetFusion(FusionModel):
    """Per-modality encoders, fused skips, one decoder (segmentation)."""

    tasks = ("segmentation",)
    has_modality_logits = False

    def __init__(self, p: UNetParams, modalities: tuple[str, ...], shapes: dict[str, tuple[int, ...]],
                 num_classes: int) -> None:
        super().__init__(modalities)
        self.down = nn.ModuleDict({m: _Down(shapes[m][0], p.width, p.depth) for m in modalities})
        chans = self.down[modalities[0]].chans
        k = len(modalities)
        self.up = nn.ModuleList()
        c = chans[-1] * k
        for level in range(len(chans) - 2, -1, -1):
            self.up.append(nn.Sequential(conv_block(c + chans[level] * k, chans[level]),
                                         conv_block(chans[level], chans[level])))
            c = chans[level]
        self.out = nn.Conv2d(c, num_classes, 1)

    def encode(self, x: dict[str, Tensor]) -> Features:
        return {m: self.down[m](x[m]) for m in self.modalities}

    def fuse(self, features: Features) -> ModelOutput:
        levels = [torch.cat([features[m][i] for m in self.modalities], dim=1)
                  for i in range(len(features[self.modalities[0]]))]
        h = levels[-1]
        for block, skip in zip(self.up, reversed(levels[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1))
        return ModelOutput(self.out(h), features, None)

    def branch_modules(self, modality: str) -> list[nn.Module]:
        return [self.down[modality]]
