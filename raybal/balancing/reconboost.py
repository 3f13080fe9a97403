"""``reconboost``: modality-alternating boosting (Hua, Xu, Bao, Wang, Lin, Ma, Huang, *ReconBoost: Boosting
Can Achieve Modality Reconcilement*, ICML 2024).

Training alternates between the modalities, as gradient boosting adds one learner at a time: in each
*stage* one modality's learner f_m (its encoder and the head) is trained to fix what the ensemble of the
other modalities still gets wrong, then a *global rectification* trains every learner jointly. The fused
prediction is the boosted ensemble F = b sum_k f_k (``boost_rate`` b).

Stage s trains modality m = s mod M (the data set's order), for ``stage_epochs`` epochs, on

    L_m = mean_i (w1 - w2 softmax(F_-m(x_i))_{y_i}) CE(f_m(x_i), y_i) / C,   F_-m = b sum_{k != m} f_k (no gradient)

(the reconcilement: a sample the other modalities already classify well weighs less, so f_m learns what
they miss; C classes). Only f_m's parameters step. Then ``rectify_epochs`` epochs of global rectification
train every parameter on CE(F(x), y). At test time the prediction is argmax F, the argmax of the plain
sum of the modalities' logits, which is the model's (``model.name = "sum"``) fused output.

The loss is the one both reference codes compute (the authors' huacong/ReconBoost at 441eb51, ``train.py``;
BalanceBenchmark, ``balancemm/trainer/ReconBoost_trainer.py``): ``-w1 mean_c(y * log softmax f_m) +
w2 mean_c(y * softmax F_-m * log softmax f_m)`` with one-hot y, which is the weighted cross-entropy above,
its 1 / C factor included.

Differences from the reference codes and why:

* both add ``alpha * MSE(softmax f_m, softmax f_prev)`` between two *detached* predictions (the
  consolidation with the previous stage's learner): it carries no gradient in either code, so it changes
  nothing in training and is left out;
* the schedule counts epochs, one learner per stage, as BalanceBenchmark (its epoch is one pass of each
  modality's stage and one rectification each: ``stage_epochs = rectify_epochs = 1`` here is the same
  order of updates); the authors run 4 + 4 epochs per stage (``stage_epochs = rectify_epochs = 4``) with a
  new SGD optimizer per phase, here the run's one optimizer (its state kept, as BalanceBenchmark);
* b is fixed (``boost_rate``, the authors' initial 1.0; BalanceBenchmark starts at 0.01); both codes also
  learn it in the rectification. It only scales the logits, so it never changes a prediction;
* the ensemble starts from the modalities' untrained learners, as BalanceBenchmark (the authors start
  from unimodal checkpoints or, without them, a constant);
* any M >= 2 (the authors' code: 2 and 3 modalities); the learners are the ``sum`` model's branches and
  heads, one head per modality or the reference's one shared head (``model.shared_head = true``).

A batch of a stage encodes every modality (the reference too: the others' BatchNorm statistics move) and
steps only the active learner: its gradients are averaged over ranks, the others have none. Every sample's
weight depends on that sample only, so the rank-averaged gradient is one worker's on the global batch.
Classification only (the loss is a softmax cross-entropy over classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from raybal.balancing.base import METHODS, BalanceMethod, full_precision
from raybal.config import ConfigError, knob
from raybal.models.base import FusionModel, ModelOutput

if TYPE_CHECKING:
    from raybal.config import RunConfig

RECTIFY = "rectify"


@dataclass(frozen=True)
class ReconBoostParams:
    stage_epochs: int = knob(1, ge=1, doc="epochs one modality's learner is boosted per stage (BalanceBenchmark 1, "
                             "the authors 4)")
    rectify_epochs: int = knob(1, ge=0, doc="epochs of global rectification after each stage, every learner on "
                               "the ensemble's loss (BalanceBenchmark 1, the authors 4; 0 = none)")
    learner_weight: float = knob(5.0, gt=0.0, doc="w1: the active learner's own cross-entropy weight (the "
                                 "references' weight1)")
    reconcile_weight: float = knob(1.0, ge=0.0, doc="w2: how much a sample the other modalities already "
                                   "classify is down-weighted (the references' weight2; must stay below w1)")
    boost_rate: float = knob(1.0, gt=0.0, doc="b: the ensemble's logits scale, F = b sum_k f_k (fixed; the "
                             "authors' initial value)")


@METHODS.register("reconboost", ReconBoostParams)
class ReconBoost(BalanceMethod):
    """Hua et al. 2024: boost one modality's learner at a time against the others' ensemble, then rectify."""

    owns_update = True
    needs_modality_logits = True
    tasks = ("classification",)

    @classmethod
    def check_config(cls, cfg: RunConfig, model_cls: type[FusionModel]) -> None:
        super().check_config(cfg, model_cls)
        p = cfg.balance.params
        if cfg.model.name != "sum":
            raise ConfigError("model.name", "balance.method \"reconboost\" boosts an ensemble of per-modality "
                              "learners whose prediction is the sum of their logits: set model.name = \"sum\" "
                              f"(got {cfg.model.name!r})")
        if cfg.model.params.fusion != "sum":
            raise ConfigError("model.fusion", "balance.method \"reconboost\" predicts with the sum of its learners' "
                              f"logits: set fusion = \"sum\" (got {cfg.model.params.fusion!r})")
        if p.reconcile_weight >= p.learner_weight:
            raise ConfigError("balance.reconcile_weight", f"must be below learner_weight = {p.learner_weight} "
                              f"(a sample's weight w1 - w2 p must stay positive), got {p.reconcile_weight}")

    @classmethod
    def acting_epoch(cls, cfg: RunConfig) -> int:
        """Every modality boosted once and rectified: one round of stages."""
        p = cfg.balance.params
        return min(len(cfg.modalities) * (p.stage_epochs + p.rectify_epochs), cfg.train.epochs)

    def phase(self, epoch: int) -> str:
        """The modality boosted in ``epoch`` (1-based), or ``"rectify"``."""
        p = self.params
        stage, j = divmod(epoch - 1, p.stage_epochs + p.rectify_epochs)
        return self.ctx.modalities[stage % len(self.ctx.modalities)] if j < p.stage_epochs else RECTIFY

    def selectable(self, epoch: int) -> bool:
        """The ensemble is judged in a rectification epoch (as the authors evaluate after one), at any epoch
        without rectifications, and at the last epoch."""
        return self.params.rectify_epochs == 0 or self.phase(epoch) == RECTIFY or epoch >= self.ctx.epochs

    def stage_loss(self, logits: dict[str, Tensor], m: str, y: Tensor) -> Tensor:
        """L_m: the active learner's cross-entropy, each sample weighted by w1 - w2 softmax(F_-m)_y, over C."""
        p = self.params
        f_m = full_precision(logits[m])
        with torch.no_grad():
            rest = sum(full_precision(logits[k]).detach() for k in self.ctx.modalities if k != m)
            known = (p.boost_rate * rest).softmax(1).gather(1, y.unsqueeze(1)).squeeze(1)
            weight = p.learner_weight - p.reconcile_weight * known
        return (weight * F.cross_entropy(f_m, y, reduction="none")).mean() / f_m.shape[1]

    def update(self, optimizer: torch.optim.Optimizer, x: dict[str, Tensor], y: Tensor,
               autocast: Any) -> tuple[ModelOutput, Tensor, Tensor]:
        model = self.ctx.model
        active = self.phase(self.epoch)
        with autocast:
            feats = model.encode(x)
            if active != RECTIFY:  # only the active learner carries a gradient
                feats = {m: f if m == active else f.detach() for m, f in feats.items()}
            out = model.fuse(feats)
        assert out.modality_logits is not None
        if active == RECTIFY:
            loss = F.cross_entropy(self.params.boost_rate * full_precision(out.logits), y)
        else:
            loss = self.stage_loss(out.modality_logits, active, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.all_reduce_tensors([p.grad for p in model.parameters() if p.grad is not None])
        optimizer.step()  # parameters without a gradient (the inactive learners) are left as they are
        logits = {m: v.detach() for m, v in out.modality_logits.items()}
        fused = out.logits.detach()
        with torch.no_grad():  # the task loss the epoch reports: the ensemble's, in either phase (comparable)
            task = F.cross_entropy(full_precision(fused), y)
        return ModelOutput(fused, feats, logits), task, loss.detach()

    def epoch_log(self) -> dict[str, float]:
        active = self.phase(self.epoch)
        return {f"reconboost_boosting.{m}": float(m == active) for m in self.ctx.modalities}
