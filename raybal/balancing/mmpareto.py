"""``mmpareto``: Pareto integration of the multimodal and the unimodal gradients (Wei & Hu,
*MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance*, ICML 2024).

Training adds each modality's unimodal loss (cross-entropy of its own logits, the model's
``modality_logits``) to the multimodal one. For modality m's encoder, with g_mm its gradient of
the multimodal loss and g_u that of its own unimodal loss (whole-encoder vectors):

* no conflict (cos(g_mm, g_u) > 0): the weights are (1/2, 1/2);
* conflict: the minimum-norm point of the two on the simplex (MGDA, §3.2),
  c = (|g_u|^2 - <g_mm, g_u>) / |g_mm - g_u|^2 (0.999 / 0.001 at the ends, as the reference), weights (c, 1 - c);

then per parameter tensor p of the encoder, g_new = 2 (c_mm g_mm,p + c_u g_u,p) is given at least
the norm of the plain sum g_mm,p + g_u,p and multiplied by ``gamma`` (§3.3, the magnitude step:
``gamma * max(1, |g_sum,p| / |g_new,p|) * g_new,p``). Without conflict that is ``gamma`` times the
plain sum. Heads and fusion layers get the plain sum of both losses' gradients.

The reference code (GeWu-Lab/MMPareto_ICML2024, ``code/MMPareto.py``) makes four backward passes;
two suffice where encoder m reaches only its own unimodal loss (``late``, ``sum``, ``unet``): the
multimodal loss, then the sum of the unimodal ones. With cross-modal gates (``mmtm``) every branch
head sees every encoder, so the sum's gradient on encoder m would carry the other branches' losses:
there each unimodal loss gets its own backward pass (M + 1 in all) and encoder m takes only its own
loss's gradient, as the reference's separate passes give it.

Differences: the unimodal logits are the model's (separate heads for ``sum`` / ``mmtm``, the linear
head's per-modality slices W_m f_m + b/M for ``late``, as BalanceBenchmark does; for ``unet`` the
decoder on modality m's skips with the others' zeroed, per pixel; the reference has separate heads),
and a zero g_new keeps a zero gradient (the reference divides by zero).
The method works per modality, so any M >= 2.

Under data-parallel training the step's gradients are made without DDP's averaging and averaged
over ranks here (both losses' gradients, before the cosine): every rank decides on the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from raybal.balancing.base import METHODS, BalanceMethod, MethodContext, ModalityMeans, full_precision
from raybal.config import knob
from raybal.measure.metrics import task_loss
from raybal.models.base import ModelOutput


@dataclass(frozen=True)
class MMParetoParams:
    gamma: float = knob(1.5, gt=0.0, doc="magnitude boost of the encoders' integrated gradients (the reference: 1.5)")


@METHODS.register("mmpareto", MMParetoParams)
class MMPareto(BalanceMethod):
    """Wei & Hu 2024: per encoder, MGDA weights of the multimodal and unimodal gradients on conflict."""

    needs_modality_logits = True
    owns_gradients = True

    def __init__(self, params: MMParetoParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.conflicts = ModalityMeans("pareto_conflict", 0.0)  # share of steps with cos <= 0, per modality
        self.unimodal: list[Tensor] = []  # the step's unimodal losses (extra_loss), for the gated backward

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.conflicts.reset()

    def extra_loss(self, x: dict[str, Tensor], out: ModelOutput, y: Tensor, loss: Tensor) -> Tensor | None:
        assert out.modality_logits is not None
        self.unimodal = [task_loss(full_precision(out.modality_logits[m]), y) for m in self.ctx.modalities]
        return sum(self.unimodal)

    def _unimodal_backward(self, extra: Tensor, enc: dict[str, list[torch.nn.Parameter]]) -> None:
        """Encoder m's gradient of its own unimodal loss only, the other parameters' gradient of their sum
        (added to the multimodal gradient already there)."""
        model, losses = self.ctx.model, self.unimodal
        self.unimodal = []  # the step's graph is not kept past it
        if not model.has_gates:  # encoder m reaches only its own loss: one pass of the sum
            extra.backward()
            return
        enc_ids = {id(p) for ps in enc.values() for p in ps}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in enc_ids]
        for i, (m, lm) in enumerate(zip(self.ctx.modalities, losses)):
            grads = torch.autograd.grad(lm, enc[m] + rest, retain_graph=i < len(losses) - 1, allow_unused=True)
            for p, g in zip(enc[m] + rest, grads):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g

    @staticmethod
    def min_norm_weight(g_mm: Tensor, g_u: Tensor) -> Tensor:
        """MGDA's two-vector minimum-norm weight on g_mm (that on g_u is 1 - it), 0-d, on the device."""
        v11, v12, v22 = g_mm @ g_mm, g_mm @ g_u, g_u @ g_u
        c = (v22 - v12) / (v11 + v22 - 2 * v12).clamp_min(1e-30)
        c = torch.where(v12 >= v22, torch.full_like(c, 0.001), c)
        return torch.where(v12 >= v11, torch.full_like(c, 0.999), c)

    def backward(self, loss: Tensor, extra: Tensor | None) -> None:
        assert extra is not None
        model, mods = self.ctx.model, self.ctx.modalities
        enc = {m: [p for p in model.encoder_parameters(m) if p.requires_grad] for m in mods}
        enc_ids = {id(p) for ps in enc.values() for p in ps}
        loss.backward(retain_graph=True)
        g_mm = {}
        for ps in enc.values():
            for p in ps:
                g_mm[id(p)] = p.grad if p.grad is not None else torch.zeros_like(p)
                p.grad = None
        self._unimodal_backward(extra, enc)  # encoders: their own unimodal gradient; heads / fusion: the sum
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if id(p) in enc_ids and p.grad is None:
                p.grad = torch.zeros_like(p)
        # the gradients and the stashed multimodal ones, averaged over ranks before any decision
        self.all_reduce_tensors([p.grad for p in params if p.grad is not None]
                                + [g_mm[id(p)] for ps in enc.values() for p in ps])
        conflicts = []
        for m in mods:
            if not enc[m]:
                continue
            gm = torch.cat([g_mm[id(p)].reshape(-1) for p in enc[m]]).double()
            gu = torch.cat([p.grad.reshape(-1) for p in enc[m]]).double()
            conflict = (gm @ gu) <= 0  # cos <= 0 (no host read: the weights follow by torch.where)
            c = torch.where(conflict, self.min_norm_weight(gm, gu), torch.full_like(gm[0], 0.5))
            conflicts.append(conflict.double())
            for p in enc[m]:
                a, b = g_mm[id(p)], p.grad
                g_sum = a + b
                g_new = 2 * (c.to(a.dtype) * a + (1 - c).to(a.dtype) * b)
                norm_new = g_new.norm()
                boost = torch.where(norm_new > 0, (g_sum.norm() / norm_new.clamp_min(1e-30)).clamp_min(1.0),
                                    torch.ones_like(norm_new))
                p.grad = self.params.gamma * boost * g_new
        if conflicts:
            self.conflicts.add(torch.stack(conflicts))

    def epoch_log(self) -> dict[str, float]:
        return self.conflicts.log([m for m in self.ctx.modalities if self.ctx.model.encoder_parameters(m)])

    def state_dict(self) -> dict[str, Any]:
        return {}
