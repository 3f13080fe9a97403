"""A U-Net with one encoder per modality for segmentation.

Each modality has its own down path; the modalities first meet in the shared decoder, where
the skip features of every modality are concatenated level by level. ``encode`` returns each
modality's tuple of skip features, so shuffling a modality shuffles all its scales with
the same permutation.

The down path is the original U-Net's (two conv-BN-ReLU per level, ``backbone = "unet"``) or
a ResNet of :mod:`raybal.models.resnet` (``backbone = "resnet18"`` ...): its skips are one
conv block at full resolution, the stem at 1/2 and ``layer1`` .. ``layer<depth>`` at 1/4 ..
1/32; the decoder upsamples to each skip's size, so any image size works.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raybal.config import ConfigError, knob
from raybal.models.base import DEFAULT_WIDTH, MODELS, Features, FusionModel, ModelOutput, conv_block
from raybal.models.pretrained import check_files
from raybal.models.resnet import STANDARD_WIDTH, ResNet

DECODER_MAX = 256  # decoder channels per level are capped (a ResNet-50's 2048 would dominate the cost)


class _AloneLogits(Mapping[str, Tensor]):
    """``ModelOutput.modality_logits`` of the U-Net, decoded on first access (one decoder pass per
    modality asked for, with autograd as the caller's context): evaluation and methods that never
    read them pay nothing."""

    def __init__(self, model: UNetFusion, features: Features) -> None:
        self._model, self._features, self._done = model, features, {}

    def __getitem__(self, m: str) -> Tensor:
        if m not in self._model.modalities:
            raise KeyError(m)
        if m not in self._done:
            self._done[m] = self._model.alone_logits(self._features, m)
        return self._done[m]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._model.modalities)

    def __len__(self) -> int:
        return len(self._model.modalities)


@dataclass(frozen=True)
class UNetParams:
    backbone: Literal["unet", "resnet18", "resnet34", "resnet50"] = "unet"
    width: int | None = knob(None, ge=2, le=256, doc="first level's channels; unset = 16 (unet), 64 (resnets)")
    depth: int = knob(3, ge=1, le=5, doc="down-sampling levels (resnets: layers used, at most 4)")
    pretrained: Mapping[str, str] = knob({}, doc="modality -> local ResNet weights file (torchvision / timm layout)")

    def validate(self, prefix: str) -> None:
        if self.backbone != "unet" and self.depth > 4:
            raise ConfigError(f"{prefix}.depth", f"a {self.backbone} encoder has 4 layers, got depth {self.depth}")
        object.__setattr__(self, "pretrained",
                           check_files(self.pretrained, f"{prefix}.pretrained", self.backbone, "unet"))


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


class _ResNetDown(nn.Module):
    """A ResNet's skips: a full-resolution conv block, the stem (1/2), layer1 .. layer<depth>."""

    def __init__(self, arch: str, cin: int, width: int, depth: int) -> None:
        super().__init__()
        self.backbone = ResNet(arch, cin, width)
        self.backbone.truncate(depth)
        self.full = conv_block(cin, max(width // 4, 4))
        self.chans = [max(width // 4, 4), self.backbone.stem_channels, *self.backbone.out_channels]

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        outs = [self.full(x)]
        h = self.backbone.stem(x)
        outs.append(h)
        h = self.backbone.maxpool(h)
        for i in range(self.backbone.num_stages):
            h = self.backbone.layer(i)(h)
            outs.append(h)
        return tuple(outs)


@MODELS.register("unet", UNetParams)
class UNetFusion(FusionModel):
    """Per-modality encoders, fused skips, one decoder (segmentation)."""

    tasks = ("segmentation",)

    def __init__(self, p: UNetParams, modalities: tuple[str, ...], shapes: dict[str, tuple[int, ...]],
                 num_classes: int) -> None:
        super().__init__(modalities)
        if p.backbone == "unet":
            self.down = nn.ModuleDict({m: _Down(shapes[m][0], p.width or DEFAULT_WIDTH, p.depth) for m in modalities})
        else:
            self.down = nn.ModuleDict({m: _ResNetDown(p.backbone, shapes[m][0], p.width or STANDARD_WIDTH, p.depth)
                                       for m in modalities})
        chans = self.down[modalities[0]].chans
        dec = chans if p.backbone == "unet" else [min(c, DECODER_MAX) for c in chans]
        k = len(modalities)
        self.up = nn.ModuleList()
        c = chans[-1] * k
        for level in range(len(chans) - 2, -1, -1):
            self.up.append(nn.Sequential(conv_block(c + chans[level] * k, dec[level]),
                                         conv_block(dec[level], dec[level])))
            c = dec[level]
        self.out = nn.Conv2d(c, num_classes, 1)

    def encode(self, x: dict[str, Tensor]) -> Features:
        return {m: self.down[m](x[m]) for m in self.modalities}

    def fuse(self, features: Features) -> ModelOutput:
        return ModelOutput(self._decode(features), features, _AloneLogits(self, features))

    def _decode(self, features: Features) -> Tensor:
        levels = [torch.cat([features[m][i] for m in self.modalities], dim=1)
                  for i in range(len(features[self.modalities[0]]))]
        h = levels[-1]
        for block, skip in zip(self.up, reversed(levels[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1))
        return self.out(h)

    def alone_logits(self, features: Features, modality: str) -> Tensor:
        """The per-pixel logits of ``modality`` alone: the decoder with every other modality's skips
        zeroed (what a linear head's per-modality share is for late fusion; Peng et al. 2022 Eq. 1-2).
        The decoder's running statistics do not move: these passes see altered data."""
        with self.frozen_running_stats():
                return self._decode({m: f if m == modality else tuple(torch.zeros_like(x) for x in f)
                                 for m, f in features.items()})

    def branch_modules(self, modality: str) -> list[nn.Module]:
        return [self.down[modality]]

    def backbone_module(self, modality: str) -> nn.Module | None:
        down = self.down[modality]
        return down.backbone if isinstance(down, _ResNetDown) else None
