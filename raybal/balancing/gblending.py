"""``gblending``: Gradient-Blending (Wang, Tran, Feiszli, *What Makes Training Multi-modal Classification
Networks Hard?*, CVPR 2020), its online form (Algorithm 1).

Training minimises a weighted sum of the fused head's loss and each modality's own head's loss,

    L = w_fused CE(fused logits, y) + sum_m w_m CE(logits_m, y)

with weights from each head's *overfitting-to-generalisation ratio*, measured on the training data and
on V, a slice of the training split held out from training (``holdout``). For head k, between two
measurements N and N + n (one super-epoch, ``super_epoch`` epochs, apart):

    O_N   = L^V_N - L^T_N                      (overfitting: the held-out minus the training loss, Eq. 2)
    dG_k  = L^V_N - L^V_{N+n}                  (generalisation gained)
    dO_k  = O_{N+n} - O_N                      (overfitting gained)
    w_k   = (1 / Z) dG_k / dO_k^2              (Eq. 6-7: w_k* proportional to <grad L*, grad L_k> / sigma_k^2,
                                                estimated as dG / dO^2; Z makes them sum to 1)

so a head whose held-out loss improves without its train/held-out gap widening gets weight, one that only
overfits gets little. Until the second measurement (the first super-epoch) the weights are uniform.

Differences from the paper and from BalanceBenchmark (``balancemm/trainer/GBlending_trainer.py``) and why:

* online, as the paper's Algorithm 1: the weights come from the model being trained, measured at each
  super-epoch boundary; BalanceBenchmark trains a copy of the model per modality for a super-epoch
  (M + 1 extra trainings) and measures on its *validation* loader, not a held-out slice of training
  data, so its weights read the validation split;
* a head with dG_k <= 0 (no generalisation gained) gets weight 0, as Eq. 7's estimate is only meaningful
  for a positive gain (BalanceBenchmark takes |dG|, rewarding a head that got worse); dO_k^2 is floored
  at 1e-8, and if no head gained, the previous weights are kept;
* the unimodal logits are the model's (separate heads for ``sum`` / ``mmtm``; for ``late``, the fused
  head's per-modality slices W_m f_m + b / M, as BalanceBenchmark; for ``unet``, the decoder on modality
  m's skips with the others' zeroed); the paper has separate heads on each modality's features;
* L^T is measured, in evaluation mode and without augmentation (as L^V), on the first ``holdout``
  fraction of the epoch's training batches (about ``holdout`` (1 - ``holdout``) N samples), L^V on the
  whole of V (``holdout`` N samples).

The held-out slice is drawn once per run from ``train.seed`` (the loop keeps it out of training and
hands it to the method: ``holdout_fraction``). Under data-parallel training every rank evaluates the
whole of V and its shard of the training batches; the loss sums are averaged over ranks, so every rank
uses the same weights, as one worker would. Any M >= 2.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from raybal.balancing.base import METHODS, BalanceMethod, MethodContext, full_precision
from raybal.config import knob
from raybal.measure.metrics import summed_sample_loss
from raybal.models.base import FusionModel, ModelOutput

if TYPE_CHECKING:
    from raybal.config import RunConfig

FUSED = "fused"  # the fused head's key among the heads (a modality cannot be named so: refused at load)


@dataclass(frozen=True)
class GBlendParams:
    holdout: float = knob(0.1, gt=0.0, lt=0.5, doc="share of the training split held out as V (not trained on)")
    super_epoch: int = knob(1, ge=1, doc="epochs between two measurements of the heads' losses (n)")


@METHODS.register("gblending", GBlendParams)
class GBlending(BalanceMethod):
    """Wang et al. 2020: weigh the fused and unimodal heads' losses by their generalisation / overfitting."""

    needs_modality_logits = True
    training_pass = True
    training_pass_augmented = False  # L^T is compared with L^V, measured on un-augmented held-out data

    def __init__(self, params: GBlendParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.heads = (FUSED, *ctx.modalities)
        self.weights = torch.full((len(self.heads),), 1.0 / len(self.heads), dtype=torch.float64)
        self.previous: Tensor | None = None  # (2, K): L^T and L^V of each head at the last measurement
        self._weights_dev: Tensor | None = None

    @classmethod
    def check_config(cls, cfg: RunConfig, model_cls: type[FusionModel]) -> None:
        super().check_config(cfg, model_cls)
        from raybal.config import ConfigError

        if FUSED in cfg.modalities:
            raise ConfigError("data", f"gblending names its fused head {FUSED!r}: a modality may not be so named")

    @classmethod
    def holdout_fraction(cls, params: GBlendParams) -> float:
        return params.holdout

    @classmethod
    def acting_epoch(cls, cfg: RunConfig) -> int:
        """The first epoch trained with measured weights: after one super-epoch."""
        return min(1 + cfg.balance.params.super_epoch, cfg.train.epochs)

    def _due(self, epoch: int) -> bool:
        return (epoch - 1) % self.params.super_epoch == 0

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._weights_dev = None

    @torch.no_grad()
    def head_losses(self, model: FusionModel, batches: Any) -> tuple[Tensor, Tensor]:
        """(summed per-sample loss of each head, the sample count) over ``batches`` (float64, device)."""
        sums: Tensor | None = None
        count = 0
        for xb, yb in batches:
            out = model(xb)
            assert out.modality_logits is not None
            logits = [out.logits, *(out.modality_logits[m] for m in self.ctx.modalities)]
            s = torch.stack([summed_sample_loss(full_precision(lg).double(), yb) for lg in logits])
            sums = s if sums is None else sums + s
            count += len(yb)
        if sums is None:
            sums = torch.zeros(len(self.heads), dtype=torch.float64, device=self.device)
        return sums, torch.tensor(float(count), dtype=torch.float64, device=sums.device)

    def on_training_data(self, model: FusionModel, batches: Any) -> None:
        if not self._due(self.epoch):
            return
        holdout = self.ctx.holdout
        assert holdout is not None, "gblending runs with a held-out slice (the loop makes it: holdout_fraction)"
        n_train = max(1, math.ceil(self.params.holdout * self.ctx.steps_per_epoch))
        t_sum, t_n = self.head_losses(model, itertools.islice(batches, n_train))
        dev = self.device
        v_sum, v_n = self.head_losses(model, ((
            {m: t.to(dev) for m, t in xb.items()}, yb.to(dev)) for xb, yb in holdout.batches(256)))
        # this rank's training shard, the whole of V: sums and counts averaged over ranks (the ratio is global)
        flat = torch.cat([t_sum, t_n[None], v_sum, v_n[None]])
        if self.ctx.all_reduce is not None and self.ctx.world_size > 1:
            flat = self.ctx.all_reduce(flat)
        k = len(self.heads)
        now = torch.stack([flat[:k] / flat[k].clamp_min(1.0), flat[k + 1:2 * k + 1] / flat[2 * k + 1].clamp_min(1.0)])
        now = now.cpu()  # once per super-epoch
        if self.previous is not None:
            self.weights = self.blend(self.previous, now, self.weights)
        self.previous = now

    @staticmethod
    def blend(before: Tensor, now: Tensor, current: Tensor) -> Tensor:
        """Eq. 7 from two measurements (rows: L^T, L^V; one column per head): w ~ dG / dO^2, summing to 1;
        ``current`` when no head gained on the held-out slice."""
        gain = before[1] - now[1]
        over = (now[1] - now[0]) - (before[1] - before[0])
        w = gain.clamp_min(0.0) / over.pow(2).clamp_min(1e-8)
        return w / w.sum() if float(w.sum()) > 0 else current

    def task_loss(self, out: ModelOutput, y: Tensor) -> Tensor:
        """Eq. 1's blended loss: the heads' cross-entropies weighted by the current w."""
        assert out.modality_logits is not None
        from raybal.measure.metrics import task_loss

        if self._weights_dev is None:
            self._weights_dev = self.weights.to(out.logits.device)
        w = self._weights_dev
        losses = [task_loss(full_precision(out.logits), y),
                  *(task_loss(full_precision(out.modality_logits[m]), y) for m in self.ctx.modalities)]
        return sum(w[i].to(lg.dtype) * lg for i, lg in enumerate(losses))  # type: ignore[return-value]

    def epoch_log(self) -> dict[str, float]:
        return {f"gblend_weight.{h}": float(v) for h, v in zip(self.heads, self.weights.tolist())}

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.clone(), "previous": None if self.previous is None else self.previous.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.weights = state["weights"].to(torch.float64)
            self.previous = state["previous"]
