"""``inforeg``: adaptive unimodal regulation inside the prime learning window (Huang, Wei, Yang, Hu,
*Adaptive Unimodal Regulation for Balanced Multimodal Information Acquisition*, CVPR 2025).

Training adds each modality's unimodal cross-entropy (its own logits) to the multimodal one. The
amount of information an encoder is acquiring is read from the trace of its (empirical) Fisher
information, tr_m(e) = sum over its weight tensors of mean(sum over the epoch's steps of grad^2).
Modality m's *prime learning window* is open while that trace still grows fast:

    k_m(e) = (MA_w(e-1) - MA_w(e-2)) / MA_w(e-1)   (relative growth of its w-epoch moving average; 1 at first)
    open   = k_m > threshold

Per batch, with s_m = sum_i softmax(logits_m)_{i, y_i} (the batch's summed true-class probability
of modality m's own head), the leading modality (the highest s), if its window is open, is slowed by
a proximal pull toward its weights at the start of the epoch:

    beta  = beta_0,lead exp(tanh(s_lead - s_next))     (s_next: the best other modality)
    g_p  += beta (theta_p - theta_p^{epoch start})     for every parameter p of the leading encoder

(the gradient of beta/2 |theta - theta_0|^2), so the information-sufficient modality does not crowd
out the others while they can still learn; once its information growth slows, training is joint.
beta_0 is per modality, as the reference: ``beta`` (0.95) for the data set's first modality (the
reference's audio, the modality that leads on its data) and ``beta_others`` (0.1) for every other
(the reference's visual). The window opens at ``threshold`` = 0.05, the reference's.

Differences from the reference code (GeWu-Lab/InfoReg_CVPR2025, ``main.py`` at 939b2ed) and why:

* the reference hard-codes two modalities and reads one window, from the audio trace, for both;
  here every modality has its own trace and window (the paper's prime learning window is each
  modality's), and the leading one by score is regulated, for any M;
* the unimodal logits are the model's: for ``late``, the linear head's per-modality slices
  W_m f_m + b / M, as the reference computes them from its fused head; separate heads for ``sum`` /
  ``mmtm``; for ``unet``, the decoder with the other modalities' skips zeroed, and the scores sum
  over labelled pixels;
* the score is a batch *sum*, as the reference (so tanh saturates and beta is ~beta_0 e while active);
  the Fisher sums square the gradient after the proximal term is added, as the reference does.

Under data-parallel training the scores are summed over ranks (the global batch's sum), and the
Fisher sums use the averaged gradients, so every rank makes the same decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from raybal.balancing.base import METHODS, BalanceMethod, MethodContext, ModalityMeans, full_precision, true_class_score
from raybal.config import knob
from raybal.measure.metrics import task_loss
from raybal.models.base import ModelOutput


@dataclass(frozen=True)
class InfoRegParams:
    beta: float = knob(0.95, ge=0.0, doc="beta_0 of the data set's first modality (beta = beta_0 exp(tanh(s_lead - "
                       "s_next)) while it leads; the reference's audio)")
    beta_others: float = knob(0.1, ge=0.0, doc="beta_0 of every other modality (the reference's visual)")
    threshold: float = knob(0.05, ge=0.0, doc="the window is open while the Fisher trace's relative growth "
                            "exceeds this")
    window: int = knob(10, ge=1, doc="epochs in the Fisher trace's moving average")
    unimodal_weight: float = knob(1.0, ge=0.0, doc="weight of each modality's unimodal cross-entropy (1 in the "
                                  "reference)")


@METHODS.register("inforeg", InfoRegParams)
class InfoReg(BalanceMethod):
    """Huang et al. 2025: slow the leading modality by a proximal term while its information still grows."""

    needs_modality_logits = True

    def __init__(self, params: InfoRegParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        mods = ctx.modalities
        self.traces: dict[str, list[float]] = {m: [0.0] * params.window for m in mods}
        self.growth: dict[str, float] = {m: 1.0 for m in mods}
        self.open = torch.ones(len(mods), dtype=torch.bool)  # per modality: its learning window is open
        self.anchor: dict[str, list[Tensor]] = {}
        self.fisher: dict[str, list[Tensor]] = {}
        self.betas = ModalityMeans("inforeg_beta", 0.0)

    def _encoder(self, m: str) -> list[torch.nn.Parameter]:
        return [p for p in self.ctx.model.encoder_parameters(m) if p.requires_grad]

    @staticmethod
    def window_growth(trace: list[float], w: int) -> float:
        """k: the relative growth of the trace's w-epoch moving average (1 before any trace)."""
        now, before = sum(trace[-w:]) / w, sum(trace[-w - 1:-1]) / w
        return 1.0 if now == 0 else (now - before) / now

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        w = self.params.window
        self.growth = {m: self.window_growth(self.traces[m], w) for m in self.ctx.modalities}
        self.open = torch.tensor([self.growth[m] > self.params.threshold for m in self.ctx.modalities])
        self.anchor = {m: [p.detach().clone() for p in self._encoder(m)] for m in self.ctx.modalities}
        self.fisher = {m: [torch.zeros_like(p) for p in self._encoder(m) if p.dim() >= 2] for m in self.ctx.modalities}
        self.betas.reset()

    def extra_loss(self, x: dict[str, Tensor], out: ModelOutput, y: Tensor, loss: Tensor) -> Tensor | None:
        assert out.modality_logits is not None
        w = self.params.unimodal_weight
        return w * sum(task_loss(full_precision(out.modality_logits[m]), y) for m in self.ctx.modalities)

    @torch.no_grad()
    def coefficients(self, scores: Tensor) -> Tensor:
        """beta per modality: its own beta_0 times exp(tanh(s_lead - s_next)) for the leading one if its
        window is open, 0 for every other (device tensors, no host read)."""
        others = scores[None, :].expand(len(scores), -1).clone()
        others.fill_diagonal_(-torch.inf)
        lead = scores >= scores.max()
        lead &= torch.cumsum(lead.long(), 0) == 1  # one leader on a tie: the first
        beta0 = torch.full_like(scores, self.params.beta_others)
        beta0[0] = self.params.beta
        beta = beta0 * torch.exp(torch.tanh(scores - others.max(1).values))
        if self.open.device != scores.device:  # once per epoch (on_epoch_start makes it on the CPU)
            self.open = self.open.to(scores.device)
        return torch.where(lead & self.open, beta, torch.zeros_like(beta))

    @torch.no_grad()
    def after_backward(self, out: ModelOutput, y: Tensor) -> None:
        assert out.modality_logits is not None
        mods = self.ctx.modalities
        scores = torch.stack([true_class_score(out.modality_logits[m], y) for m in mods]).double()
        if self.ctx.all_reduce is not None:  # the global batch's sum
            scores = self.ctx.all_reduce(scores) * self.ctx.world_size
        beta = self.coefficients(scores).float()
        self.betas.add(beta)
        for i, m in enumerate(mods):
            params = self._encoder(m)
            for p, a in zip(params, self.anchor[m]):
                if p.grad is not None:
                    p.grad.add_(beta[i] * (p.detach() - a))
            for f, p in zip(self.fisher[m], [p for p in params if p.dim() >= 2]):
                if p.grad is not None:
                    f.add_(p.grad * p.grad)

    def on_epoch_end(self, epoch: int) -> None:
        for m in self.ctx.modalities:  # read once per epoch
            self.traces[m].append(float(sum(f.mean() for f in self.fisher[m])) if self.fisher[m] else 0.0)

    def epoch_log(self) -> dict[str, float]:
        out = self.betas.log(self.ctx.modalities)
        out.update({f"inforeg_trace.{m}": self.traces[m][-1] for m in self.ctx.modalities})
        out.update({f"inforeg_growth.{m}": self.growth[m] for m in self.ctx.modalities})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"traces": {m: list(v) for m, v in self.traces.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "traces" in state:
            self.traces = {m: list(v) for m, v in state["traces"].items()}
