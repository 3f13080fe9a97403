"""The model contract every balancing method and measurement relies on (DESIGN.md §5.4).

A fusion model splits at the point where modalities first meet:

* ``encode(x) -> features``: per-modality tensors (or tuples of tensors, e.g. U-Net skips)
  computed by each modality's own branch only;
* ``fuse(features) -> ModelOutput``: everything from the first cross-modal layer on.

Shuffling a modality's *inputs* across a batch is then exactly the same as shuffling its
*features* across the batch, which lets permutation MU and the mu_target penalty rerun only
``fuse`` (Singh et al. 2024; DESIGN.md §2 "Cost"). Methods read per-modality logits and
parameter groups from public methods and never touch private layers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from raybal.config.registry import RegistrationError, Registry
from raybal.models.convnext import STANDARD_WIDTH as CONVNEXT_WIDTH
from raybal.models.convnext import ConvNeXt
from raybal.models.resnet import STANDARD_WIDTH, ResNet

Features = dict[str, Any]  # modality -> Tensor or tuple of Tensors (batch first)


@dataclass
class ModelOutput:
    logits: Tensor
    features: Features
    modality_logits: dict[str, Tensor] | None = None


def index_features(feat: Any, idx: Tensor) -> Any:
    """Reorder one modality's features along the batch (works on tensors and tuples)."""
    if isinstance(feat, tuple):
        return tuple(index_features(f, idx) for f in feat)
    return feat[idx]


def map_features(feat: Any, fn: Any) -> Any:
    if isinstance(feat, tuple):
        return tuple(map_features(f, fn) for f in feat)
    return fn(feat)


class FusionModel(nn.Module):
    """Base class: subclasses implement ``encode``, ``fuse`` and ``branch_parameters``."""

    # Pooled logits (N, C) serve single-label and multi-label classification alike.
    tasks: ClassVar[tuple[str, ...]] = ("classification", "multilabel")
    has_modality_logits: ClassVar[bool] = True
    has_gates: ClassVar[bool] = False
    # ``encode`` returns one pooled vector (N, D) per modality (late / sum fusion), not feature maps
    pooled_features: ClassVar[bool] = False

    def __init__(self, modalities: tuple[str, ...]) -> None:
        super().__init__()
        if len(modalities) < 2:
            raise ValueError("a fusion model needs at least two modalities")
        self.modalities = tuple(modalities)

    def encode(self, x: dict[str, Tensor]) -> Features:
        raise NotImplementedError

    def fuse(self, features: Features) -> ModelOutput:
        raise NotImplementedError

    def forward(self, x: dict[str, Tensor]) -> ModelOutput:
        return self.fuse(self.encode(x))

    def branch_modules(self, modality: str) -> list[nn.Module]:
        """Modules that only ``modality``'s branch uses (its encoder)."""
        raise NotImplementedError

    def branch_parameters(self, modality: str) -> list[nn.Parameter]:
        return [p for mod in self.branch_modules(modality) for p in mod.parameters()]

    def encoder_modules(self, modality: str) -> list[nn.Module]:
        """The feature extractor of ``modality`` (its branch without a per-modality head)."""
        return self.branch_modules(modality)

    def encoder_parameters(self, modality: str) -> list[nn.Parameter]:
        return [p for mod in self.encoder_modules(modality) for p in mod.parameters()]

    def backbone_module(self, modality: str) -> nn.Module | None:
        """``modality``'s standard backbone (torchvision / timm layout) that ``model.pretrained`` loads
        into, or None (raybal.models.pretrained). By default the encoder, when it is a ResNet."""
        mods = self.encoder_modules(modality)
        return mods[0] if len(mods) == 1 and isinstance(mods[0], (ResNet, ConvNeXt)) else None

    @contextmanager
    def frozen_running_stats(self) -> Iterator[None]:
        """Forward passes inside do not move running statistics (BatchNorm running mean / var, MMTM
        running gates): every module's ``momentum`` is 0 for the duration. For passes on altered
        data (shuffled modalities) that must not leak into the model's state."""
        saved = [(m, m.momentum) for m in self.modules()
                 if isinstance(getattr(m, "momentum", None), float) and m is not self]
        try:
            for m, _ in saved:
                m.momentum = 0.0
            yield
        finally:
            for m, mom in saved:
                m.momentum = mom

    def freeze_branches(self) -> None:
        """Freeze every branch (no gradients, batch-norm statistics fixed): train fusion + head only."""
        for m in self.modalities:
            for mod in self.branch_modules(m):
                mod.eval()
                for p in mod.parameters():
                    p.requires_grad_(False)

    def fusion_parameters(self) -> list[nn.Parameter]:
        """Everything that is not a branch: fusion layers and heads."""
        own = {id(p) for m in self.modalities for p in self.branch_parameters(m)}
        return [p for p in self.parameters() if id(p) not in own]

    def classifier_parameters(self) -> list[nn.Parameter]:
        """The layers that turn the fused features into logits (a reference's "classifier"): by default
        everything that is not a branch; a model with fusion units between its branches (MMTM) gives
        its heads only."""
        return self.fusion_parameters()

    def shared_head(self) -> nn.Module | None:
        """The one head every modality's features go through, when the model has one (MLA)."""
        return None

    # Cross-modal gates (Wu et al. 2022). Only models with has_gates implement these.
    def gate_parameters(self, modality: str) -> list[nn.Parameter]:
        raise NotImplementedError(f"{type(self).__name__} has no cross-modal gates")

    def shared_fusion_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError(f"{type(self).__name__} has no cross-modal gates")

    def set_gate_override(self, modality: str | None) -> None:
        """Replace ``modality``'s cross-modal gate by its running average (None = normal)."""
        raise NotImplementedError(f"{type(self).__name__} has no cross-modal gates")

    def squeezed_vectors(self, features: Features) -> list[dict[str, Tensor]]:
        """Per cross-modal unit, each modality's pooled vector entering it (normal flow)."""
        raise NotImplementedError(f"{type(self).__name__} has no cross-modal gates")

    def cross_modal_flow_off(self, squeeze_means: list[dict[str, Tensor]]) -> Any:
        """Context manager: each gate sees its own modality and the others' training means."""
        raise NotImplementedError(f"{type(self).__name__} has no cross-modal gates")


def _check_model(name: str, obj: Any, params: type | None) -> None:
    if not (isinstance(obj, type) and issubclass(obj, FusionModel)):
        raise RegistrationError(f"model {name!r}: {obj!r} must subclass FusionModel (encode / fuse / branch_modules)")
    for hook in ("encode", "fuse", "branch_modules"):
        if getattr(obj, hook) is getattr(FusionModel, hook):
            raise RegistrationError(f"model {name!r}: {obj.__name__} must implement `{hook}`")


# name -> FusionModel subclass, constructed as cls(params, modalities, shapes, num_classes)
MODELS: Registry[type[FusionModel]] = Registry("model", _check_model)


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class CNNEncoder(nn.Module):
    """``stages`` conv stages (conv-BN-ReLU, then 2x max-pool) and global average pooling.

    Four stages on 32x32 chips give a receptive field that covers the whole object; with
    three it is smaller than the object, and a SAR-only branch, which has only the object's
    shape to go by, stalls far below what SAR alone can reach (DESIGN.md §2).
    """

    def __init__(self, in_ch: int, width: int, stages: int) -> None:
        super().__init__()
        chans = [width * min(2 ** i, 4) for i in range(stages)]
        blocks = []
        c = in_ch
        for co in chans:
            blocks.append(nn.Sequential(conv_block(c, co), nn.MaxPool2d(2)))
            c = co
        self.stages = nn.ModuleList(blocks)
        self.num_stages = stages
        self.out_channels = chans
        self.dim = chans[-1]

    def run(self, x: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        for block in self.stages[start:stop]:
            x = block(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x).mean(dim=(2, 3))


class MLPEncoder(nn.Module):
    """Encoder for vector modalities (N, D)."""

    def __init__(self, in_dim: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 4 * width), nn.ReLU(inplace=True),
                                 nn.Linear(4 * width, 4 * width), nn.ReLU(inplace=True))
        self.dim = 4 * width

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


DEFAULT_WIDTH = 16  # the small CNN's and the MLP's width when model.width is not set


def make_encoder(shape: tuple[int, ...], width: int | None, stages: int, backbone: str = "cnn") -> nn.Module:
    """One modality's encoder: an image (C, H, W) gets ``backbone`` (the small CNN or a ResNet of
    :mod:`raybal.models.resnet`, ConvNeXt-T of :mod:`raybal.models.convnext`), a vector (D,) an MLP.
    ``width`` None means the backbone's own default (16; 64 for ResNets, 96 for ConvNeXt-T: the
    widths of pretrained files)."""
    if len(shape) == 3:
        if backbone == "cnn":
            return CNNEncoder(shape[0], width or DEFAULT_WIDTH, stages)
        if backbone.startswith("convnext"):
            return ConvNeXt(backbone, shape[0], width or CONVNEXT_WIDTH)
        return ResNet(backbone, shape[0], width or STANDARD_WIDTH)
    if len(shape) == 1:
        return MLPEncoder(shape[0], width or DEFAULT_WIDTH)
    raise ValueError(f"unsupported modality shape {shape}")

