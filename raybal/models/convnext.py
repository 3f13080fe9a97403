"""ConvNeXt-T (Liu et al. 2022, "A ConvNet for the 2020s") encoder in timm's parameter layout.

The modern option beside the ResNets of :mod:`raybal.models.resnet`, for ``late``, ``sum`` and
``mmtm`` (``model.backbone = "convnext_tiny"``). Parameter names are timm's ``convnext_tiny``:
``stem.0`` (4x4/4 conv), ``stem.1`` (channels-first LayerNorm), ``stages.<i>.downsample.0/1``
(LayerNorm, 2x2/2 conv; none in stage 0), ``stages.<i>.blocks.<j>.conv_dw`` (7x7 depthwise),
``.norm`` (LayerNorm over channels), ``.mlp.fc1`` / ``.mlp.fc2`` (Linear, 4x expansion, GELU) and
``.gamma`` (layer scale, 1e-6 at init). The classifier ``head.*`` is left out, so a timm
state_dict loads with :func:`raybal.models.pretrained.load_pretrained`. Stochastic depth is not
implemented (timm's default rate is 0). Four stages as for the ResNets: stage 0 is the stem and
``stages.0``; ``forward`` ends in global average pooling, so any image size from 32 px works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ARCHS: dict[str, tuple[int, int, int, int]] = {"convnext_tiny": (3, 3, 9, 3)}
STANDARD_WIDTH = 96  # dims (96, 192, 384, 768) of convnext_tiny


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) tensor."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """x + gamma * MLP(LN(dwconv7x7(x))), the MLP and LayerNorm over channels (channels-last)."""

    def __init__(self, dim: int, ls_init: float = 1e-6) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(ls_init * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class Stage(nn.Module):
    def __init__(self, cin: int, cout: int, depth: int) -> None:
        super().__init__()
        self.downsample = (nn.Sequential(LayerNorm2d(cin, eps=1e-6), nn.Conv2d(cin, cout, 2, stride=2))
                           if cin != cout else nn.Identity())
        self.blocks = nn.Sequential(*[Block(cout) for _ in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXt(nn.Module):
    """A ConvNeXt feature extractor; ``width`` = the first stage's channels (96 in convnext_tiny)."""

    num_stages = 4
    ignored_prefixes: tuple[str, ...] = ("head.",)
    first_conv = "stem.0.weight"

    def __init__(self, arch: str, in_chans: int, width: int = STANDARD_WIDTH) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown ConvNeXt {arch!r} (known: {', '.join(ARCHS)})")
        self.arch = arch
        dims = [width * 2 ** i for i in range(4)]
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
        self.stages = nn.Sequential(*[Stage(dims[max(i - 1, 0)], dims[i], d) for i, d in enumerate(ARCHS[arch])])
        self.out_channels = dims
        self.dim = dims[-1]
        for mod in self.modules():  # timm's initialisation
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(mod.weight, std=0.02)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)

    def run(self, x: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """Stages ``start`` .. ``stop - 1`` (stage 0 includes the stem)."""
        stop = self.num_stages if stop is None else stop
        for i in range(start, stop):
            if i == 0:
                x = self.stem(x)
            x = self.stages[i](x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x).mean(dim=(2, 3))
