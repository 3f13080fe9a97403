"""``ogm_ge``: on-the-fly gradient modulation with generalization enhancement
(Peng, Wei, Deng, Wang, Hu, *Balanced Multimodal Learning via On-the-fly Gradient
Modulation*, CVPR 2022).

Per batch, from each modality's own logit share (the model's ``modality_logits``):

    s_k     = sum_i softmax(out_k(x_i))[y_i]                       (Eq. 5)
    rho_k   = s_k / s_other   (for M > 2: s_k / mean of the others)  (Eq. 6)
    k_k     = 1 - tanh(alpha * relu(rho_k - 1))                      (Eq. 7)

Each modality's encoder gradients are multiplied by k_k (1 for the weaker modality), and
Gaussian noise with the gradient's own standard deviation is added (GE, Eq. 9-10), between
``start_epoch`` and ``end_epoch``. Under data-parallel training s_k is summed across ranks, so
every rank applies the same coefficient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from raybal.balancing.base import METHODS, BalanceMethod, MethodContext
from raybal.config import ConfigError, knob
from raybal.models.base import ModelOutput


@dataclass(frozen=True)
class OGMParams:
    alpha: float = knob(0.5, ge=0.0, doc="modulation strength")
    start_epoch: int = knob(1, ge=1)
    end_epoch: int = knob(0, ge=0, doc="last modulated epoch (0 = until the end)")
    ge: bool = True

    def validate(self, prefix: str) -> None:
        if self.end_epoch and self.end_epoch < self.start_epoch:
            raise ConfigError(f"{prefix}.end_epoch", f"must be >= start_epoch = {self.start_epoch} (or 0)")


@METHODS.register("ogm_ge", OGMParams)
class OGMGE(BalanceMethod):
    """Peng et al. 2022: slow the dominant modality's encoder, add gradient noise."""

    needs_modality_logits = True

    def __init__(self, params: OGMParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.gen = torch.Generator().manual_seed(ctx.seed + 13)
        self.coef_sum = {m: 0.0 for m in ctx.modalities}
        self.n = 0

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.coef_sum = {m: 0.0 for m in self.ctx.modalities}
        self.n = 0

    def active(self) -> bool:
        p = self.params
        return self.epoch >= p.start_epoch and (p.end_epoch == 0 or self.epoch <= p.end_epoch)

    def selectable(self, epoch: int) -> bool:
        return epoch >= min(self.params.start_epoch, self.ctx.epochs)

    @torch.no_grad()
    def coefficients(self, out: ModelOutput, y: Tensor) -> dict[str, float]:
        """k_k of Eq. 7 for this batch."""
        assert out.modality_logits is not None
        mods = self.ctx.modalities
        scores = torch.stack([out.modality_logits[m].float().softmax(1).gather(1, y[:, None]).sum() for m in mods])
        if self.ctx.all_reduce is not None:
            scores = self.ctx.all_reduce(scores)
        coef = {}
        for i, m in enumerate(mods):
            others = torch.cat([scores[:i], scores[i + 1:]]).mean()
            ratio = float(scores[i] / others.clamp_min(1e-12))
            coef[m] = 1.0 - float(torch.tanh(torch.tensor(self.params.alpha * max(ratio - 1.0, 0.0))))
        return coef

    def after_backward(self, out: ModelOutput, y: Tensor) -> None:
        if not self.active():
            return
        coef = self.coefficients(out, y)
        model = self.ctx.model
        for m, k in coef.items():
            self.coef_sum[m] += k
            for p in model.branch_parameters(m):
                if p.grad is None:
                    continue
                if k != 1.0:
                    p.grad.mul_(k)
                if self.params.ge and p.grad.dim() >= 2:
                    std = float(p.grad.std()) + 1e-8
                    p.grad.add_(torch.randn(p.grad.shape, generator=self.gen).to(p.grad) * std)
        self.n += 1

    def epoch_log(self) -> dict[str, float]:
        return {f"ogm_coef.{m}": (v / self.n if self.n else 1.0) for m, v in self.coef_sum.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "gen" in state:
            self.gen.set_state(state["gen"])
