"""``mu_target``: utilization-targeted training (Singh, Saber, Markopoulos, Heard, *Regulating Modality
Utilization within Multimodal Fusion Networks*, Sensors 24(18):6054, 2024).

Per training batch, a differentiable estimate of each modality's utilization (the batch version of permutation
MU, Singh et al. 2023 Eq. 1):

    L_i = CE(F(x with modality i shuffled within the batch), y)
    d_i = relu(L_i - L)            (or a sharp softplus)
    u_i = d_i / sum_j d_j

and the penalty L_MU = sum_i (u_i - t_i)^2 (or |u_i - t_i|) toward the user's target t (Sensors 2024, Eq.
3-4). Total loss = L + lambda s L_MU, where s (``penalty_scale``) is:

* ``gaps`` (default): the batch's total gap sum_j d_j, held constant. The shares are scale-free, so d u_i / d
  d_j ~ 1 / sum_j d_j: while every gap is ~0 (early training) Eq. 4's gradient is huge and noisy and swamps
  the task's own gradient, so the task stalls (docs/methods.md, "Utilization targeting on any data set"). Scaled, it
  is in loss units whatever the gaps' size: lambda rescaled per step, the penalty still Eq. 4's.
* ``none``: s = 1, Eq. 4 as written.

The weight lambda (``weight``):

* ``adaptive`` (default): a Lagrange multiplier for the constraint max_i |u_i - t_i| <= tolerance, updated
  every step by dual ascent (the basic differential multiplier method, Platt & Barr, *Constrained Differential
  Optimization*, NeurIPS 1988; as a controller on the constraint error, Stooke, Achiam & Abbeel, *Responsive
  Safety in RL by PID Lagrangian Methods*, ICML 2020), in log space so it crosses orders of magnitude at one
  speed:

      e     <- 0.9 e + 0.1 (u - t)                   (the batch error, smoothed over ~10 steps)
      log lambda += r * clip((max_i |e_i| - tol/2) / (tol/2), -1, 1),   lambda in [lambda_0, lambda_max]

  It starts at lambda_0, rises while the error is above half the tolerance and falls back when the target is
  met, so the task loss keeps every bit of weight the target does not need. r = ln(lambda_max / lambda_0) /
  (warmup * S): at full speed the weight crosses its range in the warm-up fraction of the S penalised steps,
  whatever the data set's size. The batch estimate is measured on training data, and a net's utilization of
  held-out data can differ from it; so an outer loop (a cascade: an integral controller on the *validation*
  MU, measured by the loop each epoch) moves the set point the batches are steered to, t' = t - 0.5
  sum_epochs (MU_val - t), clipped to +-0.2 and projected back on the simplex. It integrates only epochs that
  end with the batches within tolerance of t' (conditional integration, the anti-windup of a cascade's outer
  loop: Astrom & Hagglund, *Advanced PID Control*, ISA 2006): before that, the validation error is the inner
  loop's own lag, not the bias, and integrating it overshoots: the set point swings far off the target, and
  the net steered to it leans past the target the other way, at a cost in accuracy (docs/methods.md, "Utilization
  targeting on any data set").
* ``warmup``: the paper's fixed warm-up, lambda = lambda_0 (lambda_max / lambda_0)^min(1, s / (warmup S)) at
  penalised step s (geometric, i.e. exponential in s, as the paper's exp(k e)), in steps so it behaves alike on
  1,000 or 1,000,000 samples; ``schedule = "epochs"`` is the per-epoch form lambda(e) = min(lambda_max,
  lambda_0 exp(growth (e - e_0))), e_0 the first penalised epoch.

``feedback = "none"`` turns the outer loop off alone (it runs only with the adaptive weight). With it on (the
default), training is steered by the validation MU, so ``final.val_*`` is not held out: a published
comparison reads ``final.test_*`` (``final.steered_by_val`` marks such runs; ``raybal best`` says so).
``recipe = "paper"`` is Singh et al. 2024 as published: ``weight = "warmup"``, ``penalty_scale = "none"``,
``feedback = "none"`` (each still settable).

A full penalty from the first step drives the net into poor minima: both forms start small. ``tolerance`` is
what counts as meeting the target (model selection, ``final.target_met``, the outer loop's integration).

Cost: branches are per-modality, so shuffling modality i's *inputs* equals shuffling its *features* (``encode``'s
output): the penalty reruns only ``fuse``, M fusion + head passes, not M full forward passes (``shuffle =
"inputs"`` re-encodes, for comparison). Data-parallel (``train.workers`` > 1): the shuffle is one permutation of
the global batch, so a rank's sample is paired with a partner from any rank (features all-gathered with
autograd), and the loss gaps are averaged over ranks: the estimate is the one-worker estimate.

Pitfalls handled (DESIGN.md §2): with relu, a batch with fewer than two positive d_i (every d_i = 0: u undefined;
one alone: u one-hot) has a zero penalty gradient; it is skipped, counted (``mu_skipped``) and does not move
lambda. softplus floors every d_i and pulls u toward 1/M, so relu is the
default. ``freeze_encoders`` gives the paper's two-phase recipe (``pretrain_epochs`` of vanilla training, then
only fusion + head under the penalty).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from raybal.balancing.base import METHODS, BalanceMethod, MethodContext, full_precision
from raybal.config import ConfigError, FrozenMap, knob
from raybal.measure.metrics import task_loss
from raybal.models.base import FusionModel, ModelOutput, index_features

if TYPE_CHECKING:
    from raybal.config import RunConfig
    from raybal.measure.utilization import MUResult


def gathered(feat: Any, world: int) -> Any:
    """A modality's features (tensor or tuple) of the whole global batch, rank order, differentiable:
    the backward pass returns each rank the gradient for its own samples."""
    if world == 1:
        return feat
    if isinstance(feat, tuple):
        return tuple(gathered(f, world) for f in feat)
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(feat.contiguous()), dim=0)


RECIPES: dict[str, dict[str, object]] = {
    "raybal": {},
    # Singh et al. 2024 as published: the fixed warm-up, Eq. 4 unscaled, no validation feedback.
    "paper": {"weight": "warmup", "penalty_scale": "none", "feedback": "none"},
}


@dataclass(frozen=True)
class MuTargetParams:
    PROFILES: ClassVar[dict[str, dict[str, object]]] = RECIPES
    PROFILE_KNOB: ClassVar[str] = "recipe"

    recipe: Literal["raybal", "paper"] = knob("raybal", doc="a named set of the knobs below (a knob set in the "
                                              "file wins): paper = weight \"warmup\", penalty_scale \"none\", "
                                              "feedback \"none\" (Singh et al. 2024 as published)")
    target: FrozenMap = knob({}, ge=0.0, le=1.0, fractions=True,
                             doc="modality -> target utilization fraction (sums to 1)")
    tolerance: float = knob(0.05, gt=0.0, le=0.5, doc="max |MU share - target| that counts as meeting the target")
    weight: Literal["adaptive", "warmup"] = "adaptive"
    lambda_max: float = knob(10.0, gt=0.0, doc="the largest penalty weight")
    lambda_0: float = knob(0.1, ge=0.0, doc="the weight when the penalty starts")
    warmup: float = knob(0.5, gt=0.0, le=1.0, doc="fraction of the penalised steps in which lambda may cross "
                         "[lambda_0, lambda_max] (adaptive: its fastest speed; warmup: the ramp)")
    schedule: Literal["steps", "epochs"] = "steps"
    growth: float | None = knob(None, ge=0.0, doc="schedule = 'epochs' only: k in lambda(e) = min(lambda_max, "
                                "lambda_0 exp(k (e - e_0))) (default 1)")
    penalty: Literal["l2", "l1"] = "l2"
    penalty_scale: Literal["gaps", "none"] = "gaps"
    d_fn: Literal["relu", "softplus"] = "relu"
    softplus_beta: float = knob(20.0, gt=0.0, doc="sharpness when d_fn = softplus")
    shuffle: Literal["features", "inputs"] = "features"
    feedback: Literal["validation", "none"] | None = knob(None, doc="the outer loop moving the set point by the "
                                                          "validation MU each epoch (weight = \"adaptive\" only; "
                                                          "default: \"validation\" when adaptive, else \"none\")")
    freeze_encoders: bool = False
    pretrain_epochs: int = knob(0, ge=0, doc="vanilla epochs before the penalty (and freezing) starts")

    def validate(self, prefix: str) -> None:
        if not self.target:
            raise ConfigError(f"{prefix}.target",
                              "required: a table modality -> fraction, e.g. {eo = 0.75, sar = 0.25}")
        for m, v in self.target.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{prefix}.target.{m}", f"expected a fraction (a number), got {v!r}")
        total = sum(self.target.values())
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(f"{prefix}.target", f"fractions must sum to 1 (within 1e-6), got {total:.6g}")
        if self.schedule == "epochs" and self.lambda_0 <= 0.0:
            raise ConfigError(f"{prefix}.lambda_0",
                              "must be > 0 with schedule = \"epochs\" (lambda_0 exp(k e) stays 0)")
        if self.lambda_0 > self.lambda_max:
            raise ConfigError(f"{prefix}.lambda_0",
                              f"must be <= lambda_max = {self.lambda_max:g}, got {self.lambda_0:g}")
        if self.weight == "adaptive" and self.lambda_0 <= 0.0:
            raise ConfigError(f"{prefix}.lambda_0",
                              "must be > 0 with weight = \"adaptive\" (the multiplier moves in log space)")
        if self.feedback == "validation" and self.weight != "adaptive":
            raise ConfigError(f"{prefix}.feedback", "\"validation\" moves the set point the adaptive weight steers "
                              "to; set balance.weight = \"adaptive\" or feedback = \"none\"")
        if self.schedule == "epochs" and self.weight != "warmup":
            raise ConfigError(f"{prefix}.schedule", "\"epochs\" is the per-epoch warm-up of weight = \"warmup\"; "
                              "set balance.weight = \"warmup\" too (the adaptive weight is updated every step)")
        if self.growth is not None and self.schedule != "epochs":
            raise ConfigError(f"{prefix}.growth", "only with balance.schedule = \"epochs\" (the old per-epoch warm-up; "
                              "also set balance.weight = \"warmup\"); the step schedule's ramp is balance.warmup, a "
                              "fraction of the penalised steps")


@METHODS.register("mu_target", MuTargetParams)
class MuTarget(BalanceMethod):
    """Utilization-targeted training toward a target MU vector (Singh et al. 2024)."""

    objectives = {"final.val_mu_target_error": "min"}
    has_target = True

    def __init__(self, params: MuTargetParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.target = torch.tensor([params.target[m] for m in ctx.modalities], dtype=torch.float64)
        self.gen = torch.Generator().manual_seed(ctx.seed + 7)
        # Adaptive state lives on the model's device (the dual step reads nothing on the host, training/steps.py).
        self.log_lam = torch.tensor(math.log(params.lambda_0) if params.lambda_0 > 0 else -math.inf,
                                    dtype=torch.float64)
        self.err_ema: Tensor | None = None  # adaptive: the smoothed batch error u - t'
        self.ema_started = torch.tensor(False)  # adaptive: err_ema holds a defined step's error
        self._setpoint_dev: Tensor | None = None  # this epoch's set point on the device (offset moves per epoch)
        self.offset = torch.zeros_like(self.target)  # adaptive: t' - t, from the validation feedback
        self.val_error: Tensor | None = None  # the last validation MU - t (main rank), until shared
        self.step_in_epoch = 0
        penalised = max(ctx.epochs - params.pretrain_epochs, 1) * max(ctx.steps_per_epoch, 1)
        self.ramp_steps = max(params.warmup * penalised, 1.0)
        span = math.log(params.lambda_max / params.lambda_0) if params.lambda_0 > 0 else 0.0
        self.rate = span / self.ramp_steps  # adaptive: the largest change of log lambda per step
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
        if p.pretrain_epochs >= cfg.train.epochs:
            raise ConfigError("balance.pretrain_epochs", f"must be < train.epochs = {cfg.train.epochs} "
                              "(the penalty needs epochs after the vanilla ones)")

    @classmethod
    def acting_epoch(cls, cfg: RunConfig) -> int:
        """The epoch in which the weight can first be at lambda_max: the end of the warm-up ramp
        (``warmup`` of the penalised epochs; the adaptive weight's full-speed crossing takes as long),
        or, with ``schedule = "epochs"``, the epoch the per-epoch growth reaches lambda_max."""
        p, epochs = cfg.balance.params, cfg.train.epochs
        first = p.pretrain_epochs + 1
        if p.schedule == "epochs" and p.lambda_0 > 0:
            growth = 1.0 if p.growth is None else p.growth
            k = math.ceil(math.log(p.lambda_max / p.lambda_0) / growth) if p.lambda_max > p.lambda_0 else 0
            return min(first + k, epochs)
        return min(max(p.pretrain_epochs + math.ceil(p.warmup * (epochs - p.pretrain_epochs)), first), epochs)

    def _reset_log(self) -> None:  # epoch_log's sums: device tensors after a step, read at the epoch's end
        self.pen_sum: Tensor | float = 0.0
        self.lam_sum: Tensor | float = 0.0
        self.steps = 0
        self.skipped: Tensor | int = 0

    @property
    def steers_by_validation(self) -> bool:
        """The outer loop runs (``feedback``; by default with the adaptive weight): the set point moves by
        the validation MU, so ``final.val_*`` is not a held-out number."""
        feedback = self.params.feedback or ("validation" if self.params.weight == "adaptive" else "none")
        return feedback == "validation"

    @property
    def tolerance(self) -> float:
        return self.params.tolerance

    def penalised_step(self, epoch: int, step_in_epoch: int) -> int:
        """0-based index of a step among the penalised ones (negative before the penalty starts)."""
        return (epoch - self.params.pretrain_epochs - 1) * self.ctx.steps_per_epoch + step_in_epoch

    def lambda_at(self, epoch: int, step_in_epoch: int = 0) -> float:
        """The warm-up weight (``weight = "warmup"``) at a step; 0 before the penalty starts."""
        p = self.params
        s = self.penalised_step(epoch, step_in_epoch)
        if s < 0:
            return 0.0
        if p.schedule == "epochs":
            first = p.pretrain_epochs + 1
            growth = 1.0 if p.growth is None else p.growth
            return min(p.lambda_max, p.lambda_0 * math.exp(growth * (epoch - first)))
        frac = min(1.0, s / max(self.ramp_steps - 1.0, 1.0))  # lambda_max at the ramp's last step
        if p.lambda_0 <= 0.0:
            return p.lambda_max * frac
        return p.lambda_0 * (p.lambda_max / p.lambda_0) ** frac

    def selectable(self, epoch: int) -> bool:
        """Penalised epochs; with the warm-up weight only those ending at the final weight (no unbalanced model)."""
        if epoch <= self.params.pretrain_epochs:
            return False
        if self.params.weight == "adaptive":
            return True
        last = self.ctx.steps_per_epoch - 1
        return self.lambda_at(epoch, last) >= self.lambda_at(self.ctx.epochs, last)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._share_validation_feedback()
        self._setpoint_dev = None
        self.step_in_epoch = 0
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
                    feats[m] = index_features(gathered(out.features[m], world), perm)
                    logits = model.fuse(feats).logits
                else:
                    xs = dict(x)
                    xs[m] = gathered(x[m].detach(), world)[perm]
                    logits = model(xs).logits
                losses.append(task_loss(full_precision(logits), y))
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

    def _weight(self) -> float | Tensor:
        """The penalty weight for the current step (a device tensor when adaptive)."""
        if self.penalised_step(self.epoch, self.step_in_epoch) < 0:
            return 0.0
        if self.params.weight == "warmup":
            return self.lambda_at(self.epoch, self.step_in_epoch)
        return self.log_lam.exp()

    def on_validation(self, mu: MUResult) -> None:
        """Keep the epoch's validation error for the set point; not during vanilla pretraining (its
        error says nothing about the penalty) and not from a degenerate or non-finite MU."""
        if not self.steers_by_validation or mu.degenerate or self.epoch <= self.params.pretrain_epochs:
            return
        shares = torch.tensor([mu.shares[m] for m in self.ctx.modalities], dtype=torch.float64)
        if torch.isfinite(shares).all():
            self.val_error = shares - self.target

    def _share_validation_feedback(self) -> None:
        """Fold the last validation error into the set point, the same on every rank: only the main
        rank measured it, so the others contribute zeros to a sum over ranks."""
        if not self.steers_by_validation:
            return
        e = self.val_error if self.val_error is not None else torch.zeros_like(self.target)
        self.val_error = None
        if not self.inner_settled():  # conditional integration (module docstring)
            e = torch.zeros_like(e)
        if self.ctx.world_size > 1:
            if self.ctx.all_reduce is None:
                raise RuntimeError("mu_target: data-parallel run without an all-reduce; ranks would steer apart")
            device = next(self.ctx.model.parameters()).device  # NCCL reduces device tensors only
            e = (self.ctx.all_reduce(e.to(device)) * self.ctx.world_size).double().cpu()
        self.offset = (self.offset - 0.5 * e).clamp(-0.2, 0.2)

    def inner_settled(self) -> bool:
        """The batches are within tolerance of their set point (the smoothed error at the epoch's end);
        the same on every rank, as ``err_ema`` is (all-reduced gaps)."""
        return self.err_ema is not None and bool(self.ema_started) and \
            float(self.err_ema.abs().max()) <= self.params.tolerance

    def setpoint(self) -> Tensor:
        """t' = t + offset, projected on the simplex (non-negative, summing to 1)."""
        t = (self.target + self.offset).clamp_min(0.0)
        return t / t.sum()

    def _setpoint_on(self, device: torch.device) -> Tensor:
        """This epoch's set point (float64) on ``device``, moved there once per epoch."""
        if self._setpoint_dev is None:
            self._setpoint_dev = self.setpoint().to(device)
        return self._setpoint_dev

    def _dual_step(self, u: Tensor, ok: Tensor) -> None:
        """Dual ascent on max_i |u_i - t_i| <= tolerance (module docstring), on the device; a step whose
        estimate is undefined (``ok`` false) leaves the state alone. ``u`` is the same on every rank (the
        gaps are all-reduced), so is lambda."""
        err = u.detach().double() - self._setpoint_on(u.device)
        # The average starts at the first defined step (an undefined first step must not seed it).
        prev = torch.zeros_like(err) if self.err_ema is None else self.err_ema.to(err)
        started = self.ema_started.to(err.device)
        ema = torch.where(started, 0.9 * prev + 0.1 * err, err)
        self.err_ema = torch.where(ok, ema, prev)
        self.ema_started = started | ok
        half = self.params.tolerance / 2
        drive = ((self.err_ema.abs().max() - half) / half).clamp(-1.0, 1.0)
        lo, hi = math.log(self.params.lambda_0), math.log(self.params.lambda_max)
        log_lam = self.log_lam.to(err.device)
        self.log_lam = torch.where(ok, (log_lam + self.rate * drive).clamp(lo, hi), log_lam)

    def extra_loss(self, x: dict[str, Tensor], out: ModelOutput, y: Tensor, loss: Tensor) -> Tensor | None:
        self.steps += 1
        lam = self._weight()
        self.step_in_epoch += 1
        self.lam_sum = self.lam_sum + (lam.detach() if isinstance(lam, Tensor) else lam)
        if not isinstance(lam, Tensor) and lam <= 0.0:
            return None
        d, u = self.batch_utilization(out, y, loss, x)
        # Fewer than two positive gaps (with relu: sum d = 0, or one d_i > 0 alone, which makes u one-hot
        # and d u / d d zero): the penalty has no gradient, so the step adds none, is counted as skipped
        # (DESIGN.md §2 pitfall) and leaves lambda alone; decided on the device, no host read. A NaN sum
        # is not skipped: it reaches the loss, and the run stops on the non-finite loss.
        dd = d.detach()
        ok = ~(((dd > 0).sum() < 2) & torch.isfinite(dd.sum()))
        self.skipped = self.skipped + (~ok).long()
        if self.params.weight == "adaptive":
            t = self._setpoint_on(u.device).to(u.dtype)
        else:
            t = self.target.to(device=u.device, dtype=u.dtype)
        pen, term = (torch.where(ok, v, torch.zeros_like(v)) for v in self.penalty(d, u, t))
        self.pen_sum = self.pen_sum + pen.detach()  # logged as Eq. 4's L_MU, unscaled
        if self.params.weight == "adaptive":
            self._dual_step(u, ok)
        return (lam.to(term) if isinstance(lam, Tensor) else lam) * term  # lambda in the loss's dtype / device

    def penalty(self, d: Tensor, u: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(Eq. 4's L_MU of the shares u toward t, the term lambda multiplies): with ``penalty_scale =
        "gaps"`` times the gaps' total sum d, held constant (module docstring: loss units, not 1 / sum d)."""
        pen = (u - t).pow(2).sum() if self.params.penalty == "l2" else (u - t).abs().sum()
        return pen, pen * d.detach().sum() if self.params.penalty_scale == "gaps" else pen

    def target_error(self, mu: MUResult) -> float:
        """max_i |MU share_i - t_i| on a split. A degenerate MU (the model ignores every input; shares
        reported as 1/M) does not meet any target: its error is 1, the worst."""
        if mu.degenerate:
            return 1.0
        errors = [abs(mu.shares[m] - self.params.target[m]) for m in self.params.target]
        return math.nan if any(e != e for e in errors) else max(errors)

    def split_metrics(self, mu: MUResult) -> dict[str, Any]:
        """``mu_target_error`` (:meth:`target_error`) of a measured split."""
        return {"mu_target_error": self.target_error(mu)}

    def epoch_log(self) -> dict[str, float]:
        skipped = int(self.skipped)  # the epoch's reads of the device, once it is over
        used = max(self.steps - skipped, 1)
        return {"lambda_mu": float(self.lam_sum) / max(self.steps, 1), "mu_penalty": float(self.pen_sum) / used,
                "mu_skipped": skipped / max(self.steps, 1)}

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "log_lam": self.log_lam.cpu(),
                "err_ema": None if self.err_ema is None else self.err_ema.cpu(),
                "ema_started": self.ema_started.cpu(), "offset": self.offset, "val_error": self.val_error}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.log_lam = state["log_lam"].to(torch.float64)
        self.err_ema = state["err_ema"]
        self.ema_started = state["ema_started"]
        self.offset = state["offset"]
        # every rank resumes from the main rank's state; only the main rank holds the unshared feedback
        self.val_error = state["val_error"] if self.ctx.rank == 0 else None
