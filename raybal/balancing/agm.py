"""``agm``: adaptive gradient modulation (Li, Li, Hu, Wang, Luo, Yang, *Boosting Multi-modal Model
Performance with Adaptive Gradient Modulation*, ICCV 2023).

Each modality's response is read from passes of the whole model with the other modalities' inputs
zeroed: with f(S) the fused logits when only the modalities in S are present (f(empty) = Z, all
inputs zeroed; f(all) = the training forward T), its Shapley value plus an equal share of Z,

    m_m = sum_{S subset of M \\ {m}} |S|! (M - |S| - 1)! / M! (f(S + {m}) - f(S)) + Z / M,

so sum_m m_m = T (for M = 2: m_a = (T - f(v) + f(a)) / 2, the reference's formula). Per batch:

    s_m     = CE(m_m, y)                                               (mono-modal score)
    r_m     = exp(M / (M - 1) (mean_k s_k - s_m))                      (current relative response)
    rbar_m  = the same on the running (cumulative) means of s before this step
    kappa_m = exp(alpha min(rbar_m - r_m, clip))                      (the modulation coefficient)

and the training loss is CE(sum_m m_m, y) with the gradient reaching each m_m multiplied by
kappa_m (the reference's backward hooks; here m_m's value is kept and its gradient scaled): a
modality learning faster than its own history (r_m > rbar_m) is slowed, one lagging is sped up.
After the backward pass, if any gradient of the classifier (the layers making logits from the fused
features, ``classifier_parameters``: the heads for ``mmtm``, not its fusion units) leaves [-grad_clip,
grad_clip] the whole gradient is clipped to norm grad_clip (the reference's rule on its classifier).

Differences from the reference code (lihong2303/AGM, ``run/CREMAD_main.py``, ``model/CREMAD_net.py``;
``URFunny_*`` for three modalities) and why:

* the Shapley decomposition is written for any M (the reference hard-codes M = 2 and 3; the general
  formula reproduces both); the cost is 2^M - 1 extra forward passes per step (3 for M = 2);
* the masked passes run in eval mode (running statistics), with autograd on, as the reference; the
  training pass T is the ordinary train-mode forward;
* the clipping test reads every fusion-layer and head gradient (the reference: its last linear layer);
* outside ``start_epoch .. end_epoch`` the loss is the plain one (equal in value and gradient, since
  sum_m m_m = T), while the scores and their running means keep being updated, as in the reference.
  BalanceBenchmark's re-implementation flips the sign of r (it speeds up the leading modality) and
  drops the empty coalition; this follows the authors' code.

Under data-parallel training the scores are averaged over ranks, so every rank applies the same kappa.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from raybal.balancing.base import METHODS, MethodContext, ModalityMeans, WindowedMethod, full_precision
from raybal.config import knob
from raybal.measure.metrics import task_loss
from raybal.models.base import ModelOutput


@dataclass(frozen=True)
class AGMParams:
    alpha: float = knob(1.0, ge=0.0, doc="modulation strength")
    clip: float = knob(10.0, gt=0.0, doc="upper bound of rbar - r in the exponent (the reference: 10 for two "
                       "modalities, 7 for three)")
    grad_clip: float = knob(1.0, ge=0.0, doc="clip the gradient to this norm when a fusion / head gradient leaves "
                            "[-grad_clip, grad_clip] (0 = never)")
    start_epoch: int = knob(1, ge=1)
    end_epoch: int = knob(0, ge=0, doc="last modulated epoch (0 = until the end)")

    def validate(self, prefix: str) -> None:
        WindowedMethod.check_window(self, prefix)


@METHODS.register("agm", AGMParams)
class AGM(WindowedMethod):
    """Li et al. 2023: scale each modality's Shapley response by its drift from its own history."""

    def __init__(self, params: AGMParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.running: Tensor | None = None  # cumulative mean of s per modality, over every step so far
        self.steps = 0
        self._x: dict[str, Tensor] | None = None
        self.coefs = ModalityMeans("agm_coef", 1.0)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.coefs.reset()

    def prepare_batch(self, x: dict[str, Tensor], y: Tensor) -> dict[str, Tensor]:
        self._x = x  # the masked passes of task_loss use the step's inputs
        return x

    def responses(self, x: dict[str, Tensor], full: Tensor) -> dict[str, Tensor]:
        """m_m for every modality (the Shapley value plus Z / M): masked passes in eval mode."""
        mods, model = self.ctx.modalities, self.ctx.model
        M = len(mods)
        was = model.training
        model.eval()
        try:
            f: dict[frozenset[str], Tensor] = {frozenset(mods): full}
            for k in range(M):
                for present in itertools.combinations(mods, k):
                    xs = {m: (x[m] if m in present else torch.zeros_like(x[m])) for m in mods}
                    f[frozenset(present)] = full_precision(model(xs).logits)
        finally:
            model.train(was)
        out = {}
        for m in mods:
            others = [o for o in mods if o != m]
            total = f[frozenset()] / M
            for k in range(M):
                w = math.factorial(k) * math.factorial(M - k - 1) / math.factorial(M)
                for s in itertools.combinations(others, k):
                    total = total + w * (f[frozenset(s) | {m}] - f[frozenset(s)])
            out[m] = total
        return out

    def coefficients(self, scores: Tensor) -> Tensor:
        """kappa_m from this step's scores s (per modality) and the running means before it; updates them."""
        M = len(scores)
        running = torch.zeros_like(scores) if self.running is None else self.running
        r = torch.exp(M / (M - 1) * (scores.mean() - scores))
        rbar = torch.exp(M / (M - 1) * (running.mean() - running))
        self.steps += 1
        self.running = running * ((self.steps - 1) / self.steps) + scores / self.steps
        kappa = torch.exp(self.params.alpha * (rbar - r).clamp(max=self.params.clip))
        return kappa if self.active() else torch.ones_like(kappa)

    def task_loss(self, out: ModelOutput, y: Tensor) -> Tensor:
        assert self._x is not None
        full = full_precision(out.logits)
        if not self.active():
            with torch.no_grad():  # the scores' running means keep moving; the loss is the plain one
                self._coefficients(self.responses(self._x, full.detach()), y)
            return task_loss(full, y)
        resp = self.responses(self._x, full)
        kappa = self._coefficients(resp, y)
        fused = sum(kappa[i] * r + (1 - kappa[i]) * r.detach() for i, r in enumerate(resp.values()))
        return task_loss(fused, y)

    def _coefficients(self, resp: dict[str, Tensor], y: Tensor) -> Tensor:
        with torch.no_grad():
            scores = torch.stack([task_loss(r.detach(), y) for r in resp.values()]).double()
            if self.ctx.all_reduce is not None:
                scores = self.ctx.all_reduce(scores)
            kappa = self.coefficients(scores).float()
        self.coefs.add(kappa)
        return kappa

    def after_backward(self, out: ModelOutput, y: Tensor) -> None:
        thr = self.params.grad_clip
        if not thr:
            return
        grads = [p.grad for p in self.ctx.model.parameters() if p.grad is not None]
        heads = [p.grad for p in self.ctx.model.classifier_parameters() if p.grad is not None]
        if not grads or not heads:
            return
        with torch.no_grad():  # no host read: the factor is 1 unless a head gradient left [-thr, thr]
            over = torch.stack([g.abs().max() for g in heads]).max() > thr
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
            factor = torch.where(over, (thr / (norm + 1e-6)).clamp(max=1.0), torch.ones_like(norm))
            torch._foreach_mul_(grads, factor)

    def epoch_log(self) -> dict[str, float]:
        return self.coefs.log(self.ctx.modalities)

    def state_dict(self) -> dict[str, Any]:
        return {"running": None if self.running is None else self.running.cpu(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        run = state.get("running")
        self.running = None if run is None else run.to(self.device)
        self.steps = int(state.get("steps", 0))
