"""``mla``: multimodal learning with alternating unimodal adaptation (Zhang, Yoon, Bansal, Yao,
*Multimodal Representation Learning by Alternating Unimodal Adaptation*, CVPR 2024).

The modalities never meet in training: every modality's encoder is trained through one *shared*
head (``model.name = "sum"`` with ``shared_head = true``), one modality at a time. Per batch, for
each modality m in turn: loss_m = CE(head(f_m), y), a backward pass (encoder m and the head), the
head's weight gradient projected, an optimizer step. The projection keeps the head from forgetting
what the previous modalities taught it (an orthogonal-weight-modification projector, §3.2):

    r     = the batch mean of f_m;  alpha = 0.1^(b / B + 1)   (b: the batch's index in the epoch, B batches)
    k     = P r;   P <- P - (k k^T) / (alpha + k r^T);   P <- P / |P|_F
    g_W  <- g_W P^T                                     (the head's weight; its bias is not projected)

The division is element-wise, by the matrix alpha + k r^T: that is the authors' code (``GSPlugin.before_update``
divides by ``alpha + torch.mm(k, r)``, a d x d matrix) and BalanceBenchmark's, so it is the default
(``projector = "reference"``). The orthogonal-weight-modification update it descends from (Zeng, Chen, Cui,
Yu, *Continual learning of context-dependent processing in neural networks*, Nature Machine Intelligence
2019) divides by the scalar alpha + r^T k; ``projector = "owm"`` gives that form. They are different maps:
after 20 updates on the same features the two projected gradients are nearly orthogonal.

with P = I at the start of training, shared by the modalities and never reset; the very first call
only starts the count (the reference skips it). At test time the fused prediction weights each
modality per sample by softmax(-entropy) of its prediction (``model.fusion = "entropy"``, §3.3);
training does not use the fused logits.

Differences from the reference code (Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation,
``main.py`` with ``--gs_flag``, ``utils/utils.py`` ``GSPlugin``) and why:

* the newest reference commit checks the head's parameter name as ``module.weight``, so for a bare
  linear head the projection is never applied; an earlier commit (and this file) applies it;
  BalanceBenchmark adds the projected gradient to the original (g + gP, ``apply = "add"``), this file
  replaces it by default (gP, ``apply = "replace"``);
* the test-time entropy weights are per sample (the paper, BalanceBenchmark); the reference code takes
  one weight per modality per batch (a softmax over the batch dimension);
* the modalities take turns in the data set's order; any M >= 2 (the reference: 2 and 3).

Under data-parallel training the gradients of each modality's step and the batch mean r are averaged
over ranks before the projection and the step: every rank makes the same M updates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from raybal.balancing.base import METHODS, BalanceMethod, MethodContext, full_precision
from raybal.config import ConfigError, RunConfig, knob
from raybal.measure.metrics import task_loss
from raybal.models.base import FusionModel, ModelOutput


@dataclass(frozen=True)
class MLAParams:
    project: bool = knob(True, doc="project the shared head's gradient (the paper's gradient modification)")
    projector: Literal["reference", "owm"] = knob("reference", doc="the projector's update: reference = the authors' "
                                                  "code (element-wise by alpha + k r^T); owm = the scalar "
                                                  "alpha + r^T k of orthogonal weight modification")
    apply: Literal["replace", "add"] = knob("replace", doc="the head's weight gradient becomes g P^T (replace: the "
                                            "authors' earlier commit) or g + g P^T (add: BalanceBenchmark)")


@METHODS.register("mla", MLAParams)
class MLA(BalanceMethod):
    """Zhang et al. 2024: one modality at a time through a shared head, with head-gradient projection."""

    owns_update = True

    def __init__(self, params: MLAParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.P: Tensor | None = None  # (d, d), shared by the modalities
        self.calls = 0  # projections so far (the first one only starts the count)
        self.batch = 0  # the batch's index in the epoch

    @classmethod
    def check_config(cls, cfg: RunConfig, model_cls: type[FusionModel]) -> None:
        super().check_config(cfg, model_cls)
        if "classification" not in model_cls.tasks:
            raise ConfigError("model.name", f"balance.method \"mla\" needs one shared linear head over pooled "
                              f"features (model.name = \"sum\"), not {cfg.model.name!r}; no segmentation model has one")
        if not getattr(cfg.model.params, "shared_head", False):
            raise ConfigError("model.shared_head", "balance.method \"mla\" trains every modality through one shared "
                              "head: set model.name = \"sum\", shared_head = true (and fusion = \"entropy\" for its "
                              "test-time fusion)")

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.batch = 0

    @torch.no_grad()
    def project(self, weight_grad: Tensor, features: Tensor) -> None:
        """Update P with this modality's batch mean and project the head's weight gradient in place."""
        r = features.double().mean(0)
        if self.ctx.all_reduce is not None:
            r = self.ctx.all_reduce(r)
        if self.P is None:
            self.P = torch.eye(len(r), dtype=torch.float64, device=r.device)
        self.calls += 1
        if self.calls == 1:
            return
        alpha = 0.1 ** (self.batch / max(self.ctx.steps_per_epoch, 1) + 1)
        k = self.P @ r
        denominator = alpha + (torch.outer(k, r) if self.params.projector == "reference" else r @ k)
        P = self.P - torch.outer(k, k) / denominator
        P = P / torch.linalg.matrix_norm(P)
        # the element-wise form divides by entries that can cross 0: keep the last P (on the device, no host read)
        self.P = torch.where(torch.isfinite(P).all(), P, self.P)
        projected = weight_grad.double() @ self.P.t()
        if self.params.apply == "add":  # BalanceBenchmark's GSPlugin: w.grad.add_(w.grad @ P^T)
            projected = projected + weight_grad.double()
        weight_grad.copy_(projected.to(weight_grad.dtype))

    def update(self, optimizer: torch.optim.Optimizer, x: dict[str, Tensor], y: Tensor,
               autocast: Any) -> tuple[ModelOutput, Tensor, Tensor]:
        model = self.ctx.model
        head = model.shared_head()
        assert head is not None
        with autocast:
            feats = model.encode(x)
        losses, logits = [], {}
        mods = self.ctx.modalities
        for i, m in enumerate(mods):
            with autocast:
                out_m = head(feats[m])
            loss_m = task_loss(full_precision(out_m), y)
            optimizer.zero_grad(set_to_none=True)
            loss_m.backward(retain_graph=i < len(mods) - 1)
            self.all_reduce_tensors([p.grad for p in model.parameters() if p.grad is not None])
            if self.params.project and head.weight.grad is not None:
                self.project(head.weight.grad, feats[m].detach())
            optimizer.step()
            losses.append(loss_m.detach())
            logits[m] = out_m.detach()
        self.batch += 1
        with torch.no_grad():  # the epoch's training metrics: the model's fusion of this batch's logits
            fused = model.fuse({m: f.detach() for m, f in feats.items()})
        loss = torch.stack(losses).mean()
        return ModelOutput(fused.logits, feats, logits), loss, loss

    def state_dict(self) -> dict[str, Any]:
        return {"P": None if self.P is None else self.P.cpu(), "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        P = state.get("P")
        self.P = None if P is None else P.to(self.device)
        self.calls = int(state.get("calls", 0))
