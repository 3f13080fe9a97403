"""Classification fusion models: late concatenation, sum of per-modality heads, and MMTM.

All share :class:`~raybal.models.base.FusionModel`'s encode / fuse split.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from raybal.config import ConfigError, knob
from raybal.models.base import MODELS, Features, FusionModel, ModelOutput, make_encoder
from raybal.models.crossrank import global_mean
from raybal.models.pretrained import check_files

Backbone = Literal["cnn", "resnet18", "resnet34", "resnet50", "convnext_tiny"]


@dataclass(frozen=True)
class EncoderParams:
    backbone: Backbone = "cnn"
    width: int | None = knob(None, ge=2, le=512, doc="channels of the first stage; unset = 16 for the cnn and the "
                             "MLP of vector modalities, 64 for resnets, 96 for convnext_tiny (the widths "
                             "pretrained files have)")
    stages: int = knob(4, ge=1, le=6, doc="conv stages of the cnn (each halves the resolution); resnets, convnext: 4")
    pretrained: Mapping[str, str] = knob({}, doc="modality -> local .pth / .pt / .safetensors file of ResNet / "
                                          "ConvNeXt weights in the torchvision / timm layout (never downloaded)")

    def validate(self, prefix: str) -> None:
        if self.backbone != "cnn" and self.stages != 4:
            raise ConfigError(f"{prefix}.stages", f"a {self.backbone} has 4 stages (layer1-4), got {self.stages}")
        object.__setattr__(self, "pretrained",
                           check_files(self.pretrained, f"{prefix}.pretrained", self.backbone, "cnn"))


@dataclass(frozen=True)
class LateParams(EncoderParams):
    hidden: int = knob(0, ge=0, doc="hidden units of an MLP fusion layer; 0 = linear head")
    dropout: float = knob(0.0, ge=0.0, lt=1.0)


@MODELS.register("late", LateParams)
class LateFusion(FusionModel):
    """Late fusion by concatenation of per-modality features, then a (linear) head.

    With a linear head, logits = sum_m W_m f_m + b, so each modality's own logit share is
    exactly W_m f_m + b / M (the decomposition OGM-GE uses, Peng et al. 2022 Eq. 1-2).
    """

    pooled_features = True

    def __init__(self, p: LateParams, modalities: tuple[str, ...], shapes: dict[str, tuple[int, ...]],
                 num_classes: int) -> None:
        super().__init__(modalities)
        self.encoders = nn.ModuleDict({m: make_encoder(shapes[m], p.width, p.stages, p.backbone) for m in modalities})
        self.dims = [self.encoders[m].dim for m in modalities]
        total = sum(self.dims)
        self.drop = nn.Dropout(p.dropout)
        if p.hidden > 0:
            self.fusion: nn.Module = nn.Sequential(nn.Linear(total, p.hidden), nn.ReLU(inplace=True))
            self.head = nn.Linear(p.hidden, num_classes)
        else:
            self.fusion = nn.Identity()
            self.head = nn.Linear(total, num_classes)
        self.linear_head = p.hidden == 0

    def encode(self, x: dict[str, Tensor]) -> Features:
        return {m: self.encoders[m](x[m]) for m in self.modalities}

    def fuse(self, features: Features) -> ModelOutput:
        z = torch.cat([features[m] for m in self.modalities], dim=1)
        logits = self.head(self.fusion(self.drop(z)))
        if self.linear_head:
            parts = torch.split(self.head.weight, self.dims, dim=1)
            bias = self.head.bias / len(self.modalities)
            mod_logits = {m: features[m] @ w.t() + bias for m, w in zip(self.modalities, parts)}
        else:
            # With a hidden layer the share is not additive: use each modality alone (others zeroed).
            mod_logits = {}
            for m in self.modalities:
                zs = [features[k] if k == m else torch.zeros_like(features[k]) for k in self.modalities]
                mod_logits[m] = self.head(self.fusion(torch.cat(zs, dim=1)))
        return ModelOutput(logits, features, mod_logits)

    def branch_modules(self, modality: str) -> list[nn.Module]:
        return [self.encoders[modality]]


@dataclass(frozen=True)
class SumParams(EncoderParams):
    shared_head: bool = knob(False, doc="one linear head for every modality (their features must have one "
                             "width), e.g. for MLA's alternating unimodal updates")
    fusion: Literal["sum", "entropy"] = knob("sum", doc="fused logits: the sum of the modalities' logits, or "
                                             "their mean weighted per sample by softmax(-entropy) (MLA, Zhang "
                                             "et al. 2024: the more certain modality counts more)")


@MODELS.register("sum", SumParams)
class SumFusion(FusionModel):
    """Each modality has its own linear head (or one shared head); the fused logits are their sum, or
    their entropy-weighted mean (``fusion = "entropy"``)."""

    pooled_features = True

    def __init__(self, p: SumParams, modalities: tuple[str, ...], shapes: dict[str, tuple[int, ...]],
                 num_classes: int) -> None:
        super().__init__(modalities)
        self.encoders = nn.ModuleDict({m: make_encoder(shapes[m], p.width, p.stages, p.backbone) for m in modalities})
        dims = {m: self.encoders[m].dim for m in modalities}
        self.fusion_rule = p.fusion
        self.shared: nn.Linear | None = None
        if p.shared_head:
            if len(set(dims.values())) != 1:
                raise ConfigError("model.shared_head", "needs every modality's features to have one width, got "
                                  + ", ".join(f"{m} {d}" for m, d in dims.items()))
            self.shared = nn.Linear(next(iter(dims.values())), num_classes)
        else:
            self.heads = nn.ModuleDict({m: nn.Linear(dims[m], num_classes) for m in modalities})

    def head(self, modality: str) -> nn.Linear:
        return self.shared if self.shared is not None else self.heads[modality]

    def shared_head(self) -> nn.Linear | None:
        return self.shared

    def encode(self, x: dict[str, Tensor]) -> Features:
        return {m: self.encoders[m](x[m]) for m in self.modalities}

    def fuse(self, features: Features) -> ModelOutput:
        mod_logits = {m: self.head(m)(features[m]) for m in self.modalities}
        stacked = torch.stack(list(mod_logits.values()))  # (M, N, C)
        if self.fusion_rule == "entropy":
            return ModelOutput(entropy_fusion(stacked), features, mod_logits)
        return ModelOutput(stacked.sum(0), features, mod_logits)

    def branch_modules(self, modality: str) -> list[nn.Module]:
        return [self.encoders[modality]]


def entropy_fusion(stacked: Tensor) -> Tensor:
    """Per sample, sum_m w_m logits_m with w = softmax_m(-H_m), H_m the entropy of modality m's
    prediction (MLA's test-time fusion, Zhang et al. CVPR 2024; per sample as the paper and
    BalanceBenchmark, the reference code takes one weight per batch)."""
    logp = stacked.float().log_softmax(-1)
    entropy = -(logp.exp() * logp).sum(-1)  # (M, N)
    w = (-entropy).softmax(0)
    return (w[..., None] * stacked).sum(0)


@dataclass(frozen=True)
class MMTMParams(EncoderParams):
    fuse_after: tuple[int, ...] = knob((2, 3), ge=1, doc="1-based conv stages followed by an MMTM unit")
    reduction: int = knob(4, ge=1)
    momentum: float = knob(0.1, gt=0.0, le=1.0, doc="running-average momentum of the gates (running = \"ema\")")
    gate: Literal["2sigmoid", "sigmoid"] = knob("2sigmoid", doc="the gate's activation: 2 sigmoid (Joze et al. "
                                                "2020) or sigmoid (Wu et al. 2022's reference code)")
    running: Literal["ema", "mean"] = knob("ema", doc="the gates' running average: an EMA with `momentum`, or "
                                           "the mean since the start of training (Wu et al.'s reference)")

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if not self.fuse_after:
            raise ConfigError(f"{prefix}.fuse_after", "needs at least one stage")
        if list(self.fuse_after) != sorted(set(self.fuse_after)):
            raise ConfigError(f"{prefix}.fuse_after", "must be strictly increasing")
        if self.fuse_after[-1] > self.stages:
            raise ConfigError(f"{prefix}.fuse_after", f"stage {self.fuse_after[-1]} > model.stages = {self.stages}")


class MMTMUnit(nn.Module):
    """Multimodal transfer module (Joze et al. 2020) with per-modality cross-modal gates.

    squeeze: z = relu(W_s [gap(x_1); ...; gap(x_M)]); gate_m = 2 sigmoid(W_m z); x_m <- x_m * gate_m.
    W_s is shared by every modality, W_m is modality m's own gate. A running average of
    each modality's gate is kept as a *buffer* updated only in training (the reference code
    of Wu et al. keeps plain attributes that also move in evaluation and updates one with
    the other modality's gate; DESIGN.md §2). When a modality is overridden, its gate is
    replaced by that running average, which carries no information about the current sample,
    so the cross-modal flow into that modality's branch is cut (Wu et al. 2022, §4).

    Joze et al.'s gate is 2 sigmoid (1 at a zero input: the unit starts as the identity) and the
    running average an EMA (``momentum``); Wu et al.'s reference code (nyukat/greedy_multimodal_learning,
    ``src/balanced_mmtm.py``) uses sigmoid and the mean of every training batch's gate since the start:
    ``gate = "sigmoid"``, ``running = "mean"``.
    """

    def __init__(self, channels: dict[str, int], reduction: int, momentum: float, gate: str = "2sigmoid",
                 running: str = "ema") -> None:
        super().__init__()
        total = sum(channels.values())
        hidden = max(total // reduction, 4)
        self.mods = tuple(channels)
        self.squeeze = nn.Linear(total, hidden)
        self.excite = nn.ModuleDict({m: nn.Linear(hidden, c) for m, c in channels.items()})
        for m, c in channels.items():
            self.register_buffer(f"running_gate_{m}", torch.ones(c))
        self.momentum = momentum
        self.gate_scale = 2.0 if gate == "2sigmoid" else 1.0
        self.running_mean = running == "mean"
        if self.running_mean:  # per modality, the batches averaged so far (buffers: a resumed run continues)
            for m in channels:
                self.register_buffer(f"running_count_{m}", torch.zeros((), dtype=torch.float64))
        self.override: str | None = None
        # Wu et al.'s "cross-modal flow off": modality -> training-set mean of its squeezed vector;
        # each modality's gate then sees its own squeezed vector and the others' means.
        self.flow_off: dict[str, Tensor] | None = None
        self.capture: list[dict[str, Tensor]] | None = None  # squeezed vectors are appended when set
        self.cross_rank = False  # data-parallel: running gates average the global batch (models.crossrank)

    def forward(self, xs: dict[str, Tensor]) -> dict[str, Tensor]:
        sq = {m: xs[m].mean(dim=(2, 3)) for m in self.mods}
        if self.capture is not None:
            self.capture.append({m: v.detach() for m, v in sq.items()})
        if self.flow_off is None:
            z = torch.relu(self.squeeze(torch.cat([sq[m] for m in self.mods], dim=1)))
            zs = {m: z for m in self.mods}
        else:
            # Both directions at once (reference: balanced_mmtm.py `turnoff_cross_modal_flow`).
            off = self.flow_off
            zs = {m: torch.relu(self.squeeze(torch.cat(
                [sq[k] if k == m else off[k].to(sq[k]).expand_as(sq[k]) for k in self.mods], dim=1)))
                for m in self.mods}
        out = {}
        for m in self.mods:
            gate = self.gate_scale * torch.sigmoid(self.excite[m](zs[m]))
            running = getattr(self, f"running_gate_{m}")
            # momentum 0: running statistics frozen (FusionModel.frozen_running_stats), for either average
            if self.training and self.override != m and self.momentum > 0:
                with torch.no_grad():
                    batch_mean = gate.detach().mean(0)
                    if self.cross_rank:
                        batch_mean = global_mean(batch_mean)
                    if self.running_mean:  # the mean of every batch so far: r <- r + (b - r) / (n + 1)
                        count = getattr(self, f"running_count_{m}")
                        count.add_(1.0)
                        running.add_((batch_mean - running) / count.to(running))
                    else:
                        running.mul_(1 - self.momentum).add_(self.momentum * batch_mean)
            if self.override == m and self.training:
                # The override exists only inside a training step: evaluation, checkpoints, MU and
                # robustness always see the normal model (DESIGN.md §2).
                gate = running.expand_as(gate)
            out[m] = xs[m] * gate[:, :, None, None]
        return out


@MODELS.register("mmtm", MMTMParams)
class MMTMFusion(FusionModel):
    """Intermediate fusion: CNN or ResNet branches exchanging information through MMTM units.

    Each branch keeps its own linear head on its own pooled features and the fused logits
    are the mean of the heads, as in Wu et al. 2022. ``encode`` runs the branches up to the
    first MMTM unit (where modalities first meet), ``fuse`` runs from there.
    """

    has_gates = True

    def __init__(self, p: MMTMParams, modalities: tuple[str, ...], shapes: dict[str, tuple[int, ...]],
                 num_classes: int) -> None:
        super().__init__(modalities)
        for m in modalities:
            if len(shapes[m]) != 3:
                raise ValueError("mmtm fusion needs image modalities (C, H, W)")
        self.encoders = nn.ModuleDict({m: make_encoder(shapes[m], p.width, p.stages, p.backbone) for m in modalities})
        chans = self.encoders[modalities[0]].out_channels
        self.fuse_after = tuple(p.fuse_after)
        self.mmtm = nn.ModuleList([MMTMUnit({m: chans[s - 1] for m in modalities}, p.reduction, p.momentum,
                                            p.gate, p.running) for s in self.fuse_after])
        self.heads = nn.ModuleDict({m: nn.Linear(chans[-1], num_classes) for m in modalities})

    def encode(self, x: dict[str, Tensor]) -> Features:
        first = self.fuse_after[0]
        return {m: self.encoders[m].run(x[m], 0, first) for m in self.modalities}

    def fuse(self, features: Features) -> ModelOutput:
        h = dict(features)
        bounds = list(self.fuse_after) + [self.encoders[self.modalities[0]].num_stages]
        for unit, start, stop in zip(self.mmtm, bounds[:-1], bounds[1:]):
            h = unit(h)
            h = {m: self.encoders[m].run(h[m], start, stop) for m in self.modalities}
        mod_logits = {m: self.heads[m](h[m].mean(dim=(2, 3))) for m in self.modalities}
        logits = torch.stack(list(mod_logits.values())).mean(0)
        return ModelOutput(logits, features, mod_logits)

    def branch_modules(self, modality: str) -> list[nn.Module]:
        return [self.encoders[modality], self.heads[modality]]

    def encoder_modules(self, modality: str) -> list[nn.Module]:
        return [self.encoders[modality]]

    def classifier_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modalities for p in self.heads[m].parameters()]

    def gate_parameters(self, modality: str) -> list[nn.Parameter]:
        return [p for unit in self.mmtm for p in unit.excite[modality].parameters()]

    def shared_fusion_parameters(self) -> list[nn.Parameter]:
        return [p for unit in self.mmtm for p in unit.squeeze.parameters()]

    def set_gate_override(self, modality: str | None) -> None:
        if modality is not None and modality not in self.modalities:
            raise KeyError(modality)
        for unit in self.mmtm:
            unit.override = modality

    def squeezed_vectors(self, features: Features) -> list[dict[str, Tensor]]:
        """Per MMTM unit, each modality's squeezed (pooled) vector of this batch under normal flow."""
        for unit in self.mmtm:
            unit.capture = []
        try:
            self.fuse(features)
            return [unit.capture[0] for unit in self.mmtm]  # type: ignore[index]
        finally:
            for unit in self.mmtm:
                unit.capture = None

    @contextmanager
    def cross_modal_flow_off(self, squeeze_means: list[dict[str, Tensor]]) -> Iterator[None]:
        """Inside, every MMTM unit replaces the other modalities' squeezed vectors by ``squeeze_means``
        (their training-set means, one dict per unit) when computing a modality's gate."""
        if len(squeeze_means) != len(self.mmtm):
            raise ValueError(f"{len(squeeze_means)} squeeze means for {len(self.mmtm)} MMTM units")
        try:
            for unit, means in zip(self.mmtm, squeeze_means):
                unit.flow_off = means
            yield
        finally:
            for unit in self.mmtm:
                unit.flow_off = None
