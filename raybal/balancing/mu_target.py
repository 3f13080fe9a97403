"""``mu_target``: utilization-targeted training (Singh, Saber, Markopoulos, Heard,
*Regulating Modality Utilization within Multimodal Fusion Networks*, Sensors 24(18):6054, 2024).

Per training batch, a differentiable estimate of each modality's utilization (the batch
version of permutation MU, Singh et al. 2023 Eq. 1):

    L_i = CE(F(x with modality i shuffled within the batch), y)
    d_i = relu(L_i - L)            (or a sharp softplus)
    u_i = d_i / sum_j d_j

and the penalty L_MU = sum_i (u_i - t_i)^2 (or |u_i - t_i|) toward the user's target t
(Sensors 2024, Eq. 3-4). Total loss = L + lambda(e) L_MU with the clipped exponential warm-up
lambda(e) = min(lambda_max, lambda_0 exp(k (e - e_0))), e_0 the first penalised epoch: a full
penalty from the first step drives the net into poor minima.

Cost: branches are per-modality, so shuffling modality i's *inputs* across the batch equals
shuffling its *features* (the model's ``encode`` output). The penalty reruns only ``fuse``:
M fusion + head passes, not M full forward passes (``shuffle = "inputs"`` re-encodes, for
comparison). Data-parallel (``train.workers`` > 1): the shuffle is one permutation of the global
batch, so a rank's sample is paired with a partner from any rank (features all-gathered with
autograd), and the loss gaps are averaged over ranks: the estimate is the one-worker estimate.

Pitfalls handled (DESIGN.md §2): with relu, a batch where every d_i = 0 has no defined u and
a zero gradient; it is skipped and counted (``mu_skipped``). softplus floors every d_i and
pulls u toward 1/M, so relu is the default. ``freeze_encoders`` gives the paper's two-phase
recipe (``pretrain_epochs`` of vanilla training, then only fusion + head under the penalty).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from raybal.balancing.base import METHODS, BalanceMethod, MethodContext, full_precision
from raybal.config import ConfigError, FrozenMap, knob
from raybal.models.base import FusionModel, ModelOutput, index_features

if TYPE_CHECKING:
    from raybal.config import RunConfig
    from raybal.utilization import MUResult


def _gathered(feat: Any, world: int) -> Any:
    """A modality's features (tensor or tuple) of the whole global batch, rank order, differentiable:
    the backward pass returns each rank the gradient for its own samples."""
    if world == 1:
        return feat
    if isinstance(feat, tuple):
        return tuple(_gathered(f, world) for f in feat)
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(feat.contiguous()), dim=0)


@dataclass(frozen=True)
class MuTargetParams:
    target: FrozenMap = knob({}, ge=0.0, le=1.0, fractions=True,
                             doc="modality -> target utilization fraction (sums to 1)")
    lambda_max: float = knob(10.0, ge=0.0)
    lambda_0: float = knob(0.1, ge=0.0)
    growth: float = knob(1.0, ge=0.0, doc="k in lambda(e) = min(lambda_max, lambda_0 exp(k (e - e_0)))")
    penalty: Literal["l2", "l1"] = "l2"
    d_fn: Literal["relu", "softplus"] = "relu"
    softplus_beta: float = knob(20.0, gt=0.0, doc="sharpness when d_fn = softplus")
    shuffle: Literal["features", "inputs"] = "features"
    freeze_encoders: bool = False
    pretrain_epochs: int = knob(0, ge=0, doc="vanilla epochs before the penalty (and freezing) starts")

    def validate(self, prefix: str) -> None:
        if not self.target:
            raise ConfigError(f"{prefix}.target", "required: a table modality -> fraction, e.g. {eo = 0.75, sar = 0.25}")
        for m, v in self.target.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{prefix}.target.{m}", f"expected a fraction (a number), got {v!r}")
        total = sum(self.target.values())
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(f"{prefix}.target", f"fractions must sum to 1 (within 1e-6), got {total:.6g}")


@METHODS.register("mu_target", MuTargetParams)
class MuTarget(BalanceMethod):
    """Utilization-targeted training toward a target MU vector (Singh et al. 2024)."""

    objectives = {"final.val_mu_target_error": "min"}

    def __init__(self, params: MuTargetParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.target = torch.tensor([params.target[m] for m in ctx.modalities])
        self.gen = torch.Generator().manual_seed(ctx.seed + 7)
        self.lam = 0.0
        self._reset_log()

    @classmethod
    def check_config(cls, cfg: RunConfig, model_cls: type[FusionModel]) -> None:
        super().check_config(cfg, model_cls)
        target = cfg.balance.params.target
        mods = cfg.modalities
        for m in target:
            if m not in mods:
                raise ConfigError(f"balance.target.{m}", f"unknown modality {m!r} (data set has: {', '.join(mods)})")
        missing = [m for m in mods if m not in target]
        if missing:
            raise ConfigError("balance.target", f"missing modality {missing[0]!r} (give a fraction for each of: "
                              f"{', '.join(mods)})")
        p = cfg.balance.params
        if p.freeze_encoders and p.pretrain_epochs >= cfg.train.epochs:
            raise ConfigError("balance.pretrain_epochs", f"must be < train.epochs = {cfg.train.epochs} "
                              "(the frozen phase needs epochs)")

    def _reset_log(self) -> None:
        self.pen_sum = 0.0
        self.steps = 0
        self.skipped = 0

    def lambda_at(self, epoch: int) -> float:
        """lambda(e) = min(lambda_max, lambda_0 exp(k (e - e_0))) from e_0 = pretrain_epochs + 1, else 0."""
        p = self.params
        first = p.pretrain_epochs + 1
        if epoch < first:
            return 0.0
        return min(p.lambda_max, p.lambda_0 * math.exp(p.growth * (epoch - first)))

    def selectable(self, epoch: int) -> bool:
        """Only epochs trained with the penalty weight it keeps to the end (lambda(e) = lambda(E))."""
        return self.lambda_at(epoch) >= self.lambda_at(self.ctx.epochs)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.lam = self.lambda_at(epoch)
        self._reset_log()
        if self.params.freeze_encoders and epoch > self.params.pretrain_epochs:
            self.ctx.model.freeze_branches()

    def on_train_mode(self, model: Any) -> None:
        if self.params.freeze_encoders and self.epoch > self.params.pretrain_epochs:
            model.freeze_branches()

    def batch_utilization(self, out: ModelOutput, y: Tensor, loss: Tensor, x: dict[str, Tensor] | None = None
                          ) -> tuple[Tensor, Tensor]:
        """(d, u): the differentiable batch-permutation MU estimate (Sensors 2024, Eq. 3)."""
        model = self.ctx.model
        world, rank = self.ctx.world_size, self.ctx.rank
        n = len(y)
        # One permutation of the *global* batch (the same on every rank, for any number of ranks);
        # this rank's samples get the shuffled modality of global positions perm[rank*n:(rank+1)*n].
        perm = torch.randperm(n * world, generator=self.gen)[rank * n:(rank + 1) * n].to(y.device)
        losses = []
        # The shuffled passes must not move running statistics (BatchNorm, MMTM gates): they see
        # altered data, and the model's state belongs to the intact one.
        with model.frozen_running_stats():
            for m in self.ctx.modalities:
                if self.params.shuffle == "features" or x is None:
                    feats = dict(out.features)
                    feats[m] = index_features(_gathered(out.features[m], world), perm)
                    logits = model.fuse(feats).logits
                else:
                    xs = dict(x)
                    xs[m] = _gathered(x[m].detach(), world)[perm]
                    logits = model(xs).logits
                losses.append(F.cross_entropy(full_precision(logits), y))
        gap = torch.stack(losses) - loss
        if self.ctx.world_size > 1:
            # Data-parallel: average the gaps over ranks (equal shards, so this is the global batch's
            # estimate) with an autograd-aware all-reduce: every rank sees the same u and penalty.
            from torch.distributed.nn.functional import all_reduce

            gap = all_reduce(gap) / self.ctx.world_size
        if self.params.d_fn == "relu":
            d = torch.relu(gap)
        else:
            d = F.softplus(gap, beta=self.params.softplus_beta)
        total = d.sum()
        u = d / total.clamp_min(1e-12)
        return d, u

    def extra_loss(self, x: dict[str, Tensor], out: ModelOutput, y: Tensor, loss: Tensor) -> Tensor | None:
        self.steps += 1
        if self.lam <= 0.0:
            return None
        d, u = self.batch_utilization(out, y, loss, x)
        if float(d.detach().sum()) <= 0.0:
            self.skipped += 1  # u undefined and the gradient zero: skip (DESIGN.md §2 pitfall)
            return None
        t = self.target.to(u.device)
        pen = (u - t).pow(2).sum() if self.params.penalty == "l2" else (u - t).abs().sum()
        self.pen_sum += float(pen.detach())
        return self.lam * pen

    def split_metrics(self, mu: MUResult) -> dict[str, Any]:
        """``mu_target_error``: max_i |MU share_i - t_i| on the split. A degenerate MU (the model ignores
        every input; shares reported as 1/M) does not meet any target: its error is 1, the worst."""
        if mu.degenerate:
            return {"mu_target_error": 1.0}
        return {"mu_target_error": max(abs(mu.shares[m] - self.params.target[m]) for m in self.params.target)}

    def epoch_log(self) -> dict[str, float]:
        used = max(self.steps - self.skipped, 1)
        return {"lambda_mu": self.lam, "mu_penalty": self.pen_sum / used,
                "mu_skipped": self.skipped / max(self.steps, 1)}

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "gen" in state:
            self.gen.set_state(state["gen"])
