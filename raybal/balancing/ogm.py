"""``ogm_ge``: on-the-fly gradient modulation with generalization enhancement
(Peng, Wei, Deng, Wang, Hu, *Balanced Multimodal Learning via On-the-fly Gradient
Modulation*, CVPR 2022).

Per batch, from each modality's own logit share (the model's ``modality_logits``):

    s_k     = sum_i softmax(out_k(x_i))[y_i]                         (Eq. 8)
    rho_k   = s_k / s_other   (for M > 2: s_k / the weakest other)     (Eq. 9)
    k_k     = 1 - tanh(alpha * rho_k)  if rho_k > 1, else 1            (Eq. 10)

Each modality's encoder weight gradients are multiplied by k_k (1 for the weaker modality);
with GE, Gaussian noise whose standard deviation is that of the *unscaled* gradient is added
(g <- k g + N(0, std(g)^2), §3.3), between ``start_epoch`` and ``end_epoch`` (inclusive).

Differences from the reference code (GeWu-Lab/OGM-GE_CVPR2022 ``main.py``), and why:

* the reference writes the coefficient as 1 - tanh(alpha * relu(rho)), equal to Eq. 10 for rho > 1;
* the reference modulates only the encoders' conv kernels (4-d gradients): here every weight
  tensor of a modality's *encoder* (conv kernels, and linear weights for vector encoders, which
  the reference has none of) — not BatchNorm, biases or per-branch heads (``params = "weights"``);
  ``params = "all"`` modulates every encoder parameter;
* for M > 2 each modality is compared with the weakest other (BalanceBenchmark's choice), so
  only modalities ahead of the weakest are slowed; for M = 2 this is the paper's rule;
* the reference stops modulating at epoch 50 of 100 (``modulation_ends``) and its README recommends
  alpha per data set (0.1 or 0.8); here modulation runs to the end unless ``end_epoch`` is set (half of
  ``train.epochs`` gives the reference's schedule), with alpha 0.5 between the two.

Dense outputs (segmentation): s_k sums softmax(out_k)[y] over every labelled *pixel* of the batch
(Eq. 8 with pixels as the samples; ``true_class_score``), and out_k is the U-Net's decoder run on
modality k's skip features with the others' zeroed (``UNetFusion.alone_logits``), the generalisation
of the linear head's share W_k phi_k + b / M: for a linear head the two are equal up to the bias share.
The ratio rho_k is unchanged in scale (both sums count the same pixels).

Under data-parallel training s_k is summed across ranks, so every rank applies the same
coefficient, and the GE noise comes from identically seeded generators.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from raybal.balancing.base import (
    METHODS,
    MethodContext,
    ModalityMeans,
    WindowedMethod,
    true_class_score,
)
from raybal.config import knob
from raybal.models.base import ModelOutput


@dataclass(frozen=True)
class OGMParams:
    alpha: float = knob(0.5, ge=0.0, doc="modulation strength")
    start_epoch: int = knob(1, ge=1)
    end_epoch: int = knob(0, ge=0, doc="last modulated epoch (0 = until the end)")
    ge: bool = True
    params: Literal["weights", "all"] = "weights"

    def validate(self, prefix: str) -> None:
        WindowedMethod.check_window(self, prefix)


@METHODS.register("ogm_ge", OGMParams)
class OGMGE(WindowedMethod):
    """Peng et al. 2022: slow the dominant modality's encoder, add gradient noise."""

    needs_modality_logits = True

    def __init__(self, params: OGMParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.gen = torch.Generator().manual_seed(ctx.seed + 13)
        self.dev_gen: torch.Generator | None = None
        self._dev_state: Tensor | None = None  # a checkpointed device-generator state, until the generator exists
        self.coefs = ModalityMeans("ogm_coef", 1.0)  # the epoch's mean k per modality

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.coefs.reset()

    @staticmethod
    def coefficient(alpha: float | Tensor, rho: Tensor) -> Tensor:
        """Eq. 10: 1 - tanh(alpha * rho) for the leading modality (rho > 1), else 1 (elementwise)."""
        rho = torch.as_tensor(rho, dtype=torch.float64)
        return torch.where(rho > 1.0, 1.0 - torch.tanh(alpha * rho), torch.ones_like(rho))

    def coefficients(self, out: ModelOutput, y: Tensor) -> dict[str, Tensor]:
        """k_k of Eq. 10 for this batch: modality -> a 0-d tensor on the device."""
        return dict(zip(self.ctx.modalities, self.coefficient_vector(out, y)))

    @torch.no_grad()
    def coefficient_vector(self, out: ModelOutput, y: Tensor) -> Tensor:
        """k_k of Eq. 10 for this batch, one per modality (in ``ctx.modalities`` order), on the device:
        rho_k = s_k / min_{j != k} s_j with s_k = sum_i softmax(W_k phi_k)_{i, y_i}."""
        assert out.modality_logits is not None
        mods = self.ctx.modalities
        scores = torch.stack([true_class_score(out.modality_logits[m], y) for m in mods])
        if self.ctx.all_reduce is not None:
            scores = self.ctx.all_reduce(scores)
        scores = scores.double()
        others = scores[None, :].expand(len(mods), -1).clone()
        others.fill_diagonal_(math.inf)
        return self.coefficient(self.params.alpha, scores / others.min(1).values.clamp_min(1e-12))

    def _modulated(self, modality: str) -> list[torch.nn.Parameter]:
        ps = self.ctx.model.encoder_parameters(modality)
        return ps if self.params.params == "all" else [p for p in ps if p.dim() >= 2]

    def after_backward(self, out: ModelOutput, y: Tensor) -> None:
        if not self.active():
            return
        coef = self.coefficient_vector(out, y)  # no host read: the scaling is applied on the device
        self.coefs.add(coef)
        for m, k in zip(self.ctx.modalities, coef):
            for p in self._modulated(m):
                if p.grad is None:
                    continue
                kk = k.to(p.grad.dtype)
                if self.params.ge:
                    # GE: noise with the std of the gradient *before* scaling (reference main.py).
                    std = p.grad.std() + 1e-8
                    noise = torch.randn(p.grad.shape, generator=self._generator(p.grad.device), device=p.grad.device)
                    p.grad.mul_(kk).add_(noise.to(p.grad.dtype) * std)
                else:
                    p.grad.mul_(kk)

    def _generator(self, device: torch.device) -> torch.Generator:
        """The GE noise generator on the gradients' device: the seeded CPU stream on CPU; on a GPU, a
        device generator seeded from it, whose state the checkpoint keeps (a resumed run draws the same)."""
        if device.type == "cpu":
            return self.gen
        if self.dev_gen is None or self.dev_gen.device != device:
            self.dev_gen = torch.Generator(device=device)
            if self._dev_state is not None:  # resumed: continue the checkpointed device stream
                self.dev_gen.set_state(self._dev_state)
                self._dev_state = None
            else:
                self.dev_gen.manual_seed(int(torch.randint(2**62, (1,), generator=self.gen)))
        return self.dev_gen

    def epoch_log(self) -> dict[str, float]:
        return self.coefs.log(self.ctx.modalities)

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "dev_gen": None if self.dev_gen is None else self.dev_gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "gen" in state:
            self.gen.set_state(state["gen"])
        self._dev_state = state.get("dev_gen")
