"""``dgl``: disentangled gradient learning (Wei, Luo, Luo, *Boosting Multimodal Learning via Disentangled
Gradient Learning*, ICCV 2025).

The paper's diagnosis: fusing modalities shrinks the gradient the multimodal loss sends back to each
encoder, so even the dominant modality learns less inside the fused model than alone. DGL decouples the
two optimisations (§3, the DGL framework): the multimodal loss's gradient is cut off from the encoders
and replaced there by the unimodal losses', and the unimodal losses' gradient is kept out of the fusion
module and the heads:

    encoder of modality m:        g = alpha * grad_theta_m  sum_k CE(logits_k, y)   (= alpha * grad CE(logits_m, y))
    everything else (heads, fusion layers, MMTM units):
                                  g = grad CE(fused logits, y)

then one optimizer step on the whole model, with the gradient's global norm clipped at ``clip_norm``.
Nothing is scheduled and no statistic is kept: the rule is the same at every step.

The reference code (shicaiwei123/ICCV2025-GDL at 2c601d8, ``main_dgl.py`` and ``models/fusion_modules.py``
``ConcatFusion_DGL``) makes the split inside its model: the fused head reads *detached* features, the
unimodal logits are the same head on one modality with the others zeroed; it backpropagates
alpha (CE_a + CE_v), sets the fusion module's gradients to None, backpropagates the fused CE and clips
at norm 40 before an SGD step. Here the split is made by restricting each backward pass to its parameters
(``Tensor.backward(inputs=...)``), so any fusion model of the package serves, unchanged at evaluation.

Differences from the reference and why:

* the unimodal logits are the model's (separate heads for ``sum`` / ``mmtm``; for ``late`` the linear head's
  per-modality slices W_m f_m + b / M, where the reference's zeroed input keeps the whole bias b; for
  ``unet`` the decoder on modality m's skips with the others' zeroed, per pixel);
* with ``mmtm`` the branch heads see every encoder through the gates, so each unimodal loss gets its own
  backward pass restricted to its encoder (encoder m takes only CE(logits_m)'s gradient); the reference
  has no gated model;
* any M >= 2 (the reference: 2) and every task (CE, binary CE for multi-hot labels, per pixel).

Under data-parallel training both passes run without DDP's averaging; the gradients are averaged over
ranks here, before the clip, so every rank steps as one worker on the global batch would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from raybal.balancing.base import METHODS, BalanceMethod, MethodContext, ModalityMeans, full_precision
from raybal.config import knob
from raybal.measure.metrics import task_loss
from raybal.models.base import ModelOutput


@dataclass(frozen=True)
class DGLParams:
    alpha: float = knob(4.0, gt=0.0, doc="weight of the unimodal losses, the encoders' only loss (the reference's "
                        "default 4; its scripts use 2-5)")
    clip_norm: float = knob(40.0, ge=0.0, doc="clip the step's global gradient norm at this value, after the "
                            "averaging over ranks (the reference: 40; 0 = no clip)")


@METHODS.register("dgl", DGLParams)
class DGL(BalanceMethod):
    """Wei et al. 2025: encoders learn from their unimodal losses only, the fusion and heads from the fused loss."""

    needs_modality_logits = True
    owns_gradients = True

    def __init__(self, params: DGLParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.unimodal = ModalityMeans("dgl_unimodal_loss", float("nan"))
        self._losses: Tensor | None = None

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.unimodal.reset()

    def extra_loss(self, x: dict[str, Tensor], out: ModelOutput, y: Tensor, loss: Tensor) -> Tensor:
        assert out.modality_logits is not None
        u = torch.stack([task_loss(full_precision(out.modality_logits[m]), y) for m in self.ctx.modalities])
        self._losses = u
        return self.params.alpha * u.sum()

    def backward(self, loss: Tensor, extra: Tensor | None) -> None:
        assert extra is not None and self._losses is not None
        model, mods = self.ctx.model, self.ctx.modalities
        enc = {m: [p for p in model.encoder_parameters(m) if p.requires_grad] for m in mods}
        enc_ids = {id(p) for ps in enc.values() for p in ps}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in enc_ids]
        if rest:  # the fused loss reaches the heads and fusion layers only (the reference's detached features)
            loss.backward(inputs=rest, retain_graph=bool(enc_ids))
        if enc_ids:
            if model.has_gates:  # gated branches: encoder m's gradient from its own unimodal loss alone
                todo = [m for m in mods if enc[m]]
                for i, m in enumerate(todo):
                    (self.params.alpha * self._losses[mods.index(m)]).backward(
                        inputs=enc[m], retain_graph=i < len(todo) - 1)
            else:  # encoder m reaches only its own unimodal logits: one pass of the sum
                extra.backward(inputs=[p for ps in enc.values() for p in ps])
        logged = self._losses.detach().clone()
        self._losses = None
        params = [p for p in model.parameters() if p.requires_grad]
        self.all_reduce_tensors([p.grad for p in params if p.grad is not None] + [logged])
        self.unimodal.add(logged)  # the global batch's unimodal losses (averaged with the gradients)
        if self.params.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], self.params.clip_norm)

    def epoch_log(self) -> dict[str, float]:
        return self.unimodal.log(self.ctx.modalities)
