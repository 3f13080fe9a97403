"""ResNet-18/34/50 encoders (He et al. 2016) in the torchvision / timm parameter layout.

``torchvision`` and ``timm`` cannot be installed here (DESIGN.md §7), so the standard backbones
are the project's own modules. Parameter names are those of ``torchvision.models.resnet`` (and
timm's ``resnet*``, which shares them): ``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layerN.0.downsample.0/1``; the classifier ``fc`` is left out (the fusion model has its own
heads). A state_dict saved from either library therefore loads into :class:`ResNet` with
:func:`raybal.models.pretrained.load_pretrained`. The bottleneck is ResNet v1.5 (stride on the
3x3 convolution), as in torchvision.

As an encoder, a ResNet is four *stages*: stage 0 is the stem (7x7/2 conv, BN, ReLU, 3x3/2
max-pool) followed by ``layer1``; stages 1-3 are ``layer2``-``layer4``. :meth:`ResNet.run` runs
a range of stages (MMTM units sit between them) and ``forward`` ends in global average pooling,
so any image size from 32 px up works (a 32 px chip is 1x1 after ``layer4``).
"""

from __future__ import annotations

from torch import Tensor, nn

# name -> (block, blocks per layer)
ARCHS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
STANDARD_WIDTH = 64  # the torchvision / timm width of the stem and layer1


def _conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet feature extractor; ``width`` = channels of the stem and of ``layer1``'s planes
    (64 in the standard networks, smaller for tests and CPU runs)."""

    num_stages = 4
    ignored_prefixes: tuple[str, ...] = ("fc.",)  # a pretrained file's keys that this network has no use for
    first_conv = "conv1.weight"  # adapted to the modality's channel count on loading (raybal.models.pretrained)

    def __init__(self, arch: str, in_chans: int, width: int = STANDARD_WIDTH) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown ResNet {arch!r} (known: {', '.join(ARCHS)})")
        kind, counts = ARCHS[arch]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.arch, self.in_chans, self.width = arch, in_chans, width
        self.conv1 = nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = width
        self.out_channels: list[int] = []
        for i, n in enumerate(counts):
            planes = width * 2 ** i
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or cin != planes * block.expansion:
                down = nn.Sequential(_conv1(cin, planes * block.expansion, stride),
                                     nn.BatchNorm2d(planes * block.expansion))
            blocks = [block(cin, planes, stride, down)]
            cin = planes * block.expansion
            blocks += [block(cin, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.out_channels.append(cin)
        self.stem_channels = width
        self.dim = cin
        for mod in self.modules():  # torchvision's initialisation
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(mod, nn.BatchNorm2d):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)

    def truncate(self, layers: int) -> None:
        """Keep ``layer1`` .. ``layer<layers>`` only (a U-Net of that depth); the rest is deleted, and
        a pretrained file's weights for it are ignored (``ignored_prefixes``)."""
        for i in range(layers, self.num_stages):
            delattr(self, f"layer{i + 1}")
            self.ignored_prefixes += (f"layer{i + 1}.",)
        self.num_stages = layers
        self.out_channels = self.out_channels[:layers]
        self.dim = self.out_channels[-1]

    def stem(self, x: Tensor) -> Tensor:
        """conv1 / bn1 / relu at half resolution (before the max-pool): the U-Net's first skip."""
        return self.relu(self.bn1(self.conv1(x)))

    def layer(self, i: int) -> nn.Sequential:
        """``layer1`` .. ``layer4`` by 0-based index."""
        return getattr(self, f"layer{i + 1}")

    def run(self, x: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """Stages ``start`` .. ``stop - 1`` (stage 0 includes the stem)."""
        stop = self.num_stages if stop is None else stop
        for i in range(start, stop):
            if i == 0:
                x = self.maxpool(self.stem(x))
            x = self.layer(i)(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x).mean(dim=(2, 3))
