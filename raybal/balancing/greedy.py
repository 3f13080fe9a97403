"""``greedy_guided`` / ``greedy_random``: re-balancing driven by conditional learning speed
(Wu, Jastrzebski, Cho, Geras, *Characterizing and overcoming the greedy nature of learning in
multi-modal deep neural networks*, ICML 2022; reference code nyukat/greedy_multimodal_learning).

After each backward pass of a normal step, for modality k (Eq. 4-5):

    mu_g    = sum ||grad||^2 / sum ||w||^2                       per parameter group g
    S_bypass,k += mu(gate_k + shared fusion)   S_main,k += mu(branch_k)
    s_k     = log10(S_bypass,k / S_main,k)     d = s_0 - s_1

From epoch ``start_epoch`` on, whenever |d| > ``alpha`` at a normal step, the next ``window``
(Q) steps re-balance modality k = 0 if d > 0 else 1: its cross-modal gate is replaced by its
running average (no sample-specific information flows into its branch), so the branch must
learn on its own (Algorithm 1). d is not recomputed inside the window. ``greedy_random`` is
the paper's control: each step is uniformly one of normal / re-balance m_0 / re-balance m_1.
For M > 2 modalities the modality with the largest s_k is re-balanced when max s - min s > alpha
(identical to the rule above for M = 2).

The gates are the model's (``mmtm``): by default Joze et al.'s 2 sigmoid with an EMA (momentum 0.1)
as the running average; Wu et al.'s reference gates by sigmoid and keeps the mean of every training
batch's gate since the start (``model.gate = "sigmoid"``, ``model.running = "mean"``).

The training loss is the sum of the branches' own cross-entropy losses (reference
``training/loop.py``: a sum of CE over the per-branch logits); the fused prediction, used for every
metric, is the mean of the branch logits. The gates' running averages are registered buffers
of the model, updated only in training (the reference code keeps plain attributes that also
move in evaluation); a gate override acts only in training mode, so evaluation, checkpoints,
MU and robustness always see the normal model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from raybal.balancing.base import METHODS, BalanceMethod, MethodContext, full_precision
from raybal.config import RunConfig, knob
from raybal.measure.metrics import task_loss
from raybal.measure.utilization import LearningSpeedTracker, learning_speed
from raybal.models.base import ModelOutput


@dataclass(frozen=True)
class GreedyParams:
    alpha: float = knob(0.01, ge=0.0, doc="imbalance threshold on |d|")
    window: int = knob(5, ge=1, doc="Q: re-balancing steps per trigger")
    start_epoch: int = knob(2, ge=1, doc="first epoch in which re-balancing may happen")


@METHODS.register("greedy_guided", GreedyParams)
class GreedyGuided(BalanceMethod):
    """Wu et al. 2022 guided re-balancing on conditional learning speed."""

    needs_gates = True

    def __init__(self, params: GreedyParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.tracker = LearningSpeedTracker(ctx.modalities)
        self.override: str | None = None
        self.steps_left = 0
        self.rng = random.Random(ctx.seed + 11)
        self._reset_log()

    def _reset_log(self) -> None:
        self.n_steps = 0
        self.n_rebalance = 0

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._reset_log()

    def active(self) -> bool:
        return self.epoch >= self.params.start_epoch

    @classmethod
    def acting_epoch(cls, cfg: RunConfig) -> int:
        return min(cfg.balance.params.start_epoch, cfg.train.epochs)

    def selectable(self, epoch: int) -> bool:
        return epoch >= min(self.params.start_epoch, self.ctx.epochs)

    def choose(self) -> str | None:
        """The modality to re-balance next (None = normal training)."""
        # The step's one host read (Wu et al. decide per step; raybal.training.steps): M speeds at once.
        s = dict(zip(self.ctx.modalities, self.tracker.speed_vector().tolist()))
        if any(v != v for v in s.values()):  # NaN before the first update
            return None
        hi = max(s, key=s.get)  # type: ignore[arg-type]
        lo = min(s, key=s.get)  # type: ignore[arg-type]
        return hi if s[hi] - s[lo] > self.params.alpha else None

    def task_loss(self, out: ModelOutput, y: Tensor) -> Tensor:
        """Wu et al.'s loss: the sum of each branch head's own cross-entropy."""
        assert out.modality_logits is not None
        return sum(task_loss(full_precision(lg), y) for lg in out.modality_logits.values())  # type: ignore[return-value]

    def before_step(self) -> None:
        self.override = self.override if self.steps_left > 0 else None
        self.ctx.model.set_gate_override(self.override)

    def after_backward(self, out: ModelOutput, y: Tensor) -> None:
        if self.override is not None:
            return  # d is not recomputed inside a re-balancing window
        model = self.ctx.model
        shared = model.shared_fusion_parameters()
        bypass = {m: learning_speed(model.gate_parameters(m) + shared) for m in self.ctx.modalities}
        main = {m: learning_speed(model.branch_parameters(m)) for m in self.ctx.modalities}
        self.tracker.update(bypass, main)

    def after_step(self) -> None:
        self.n_steps += 1
        if self.override is not None:
            self.n_rebalance += 1
            self.steps_left -= 1
        elif self.active():
            target = self.choose()
            if target is not None:
                self.override, self.steps_left = target, self.params.window
        if self.steps_left <= 0:
            self.override = None
            self.ctx.model.set_gate_override(None)

    def epoch_log(self) -> dict[str, float]:
        s = self.tracker.speeds()
        mods = self.ctx.modalities
        return {"rebalance_fraction": self.n_rebalance / max(self.n_steps, 1),
                "speed_imbalance": s[mods[0]] - s[mods[1]]}

    def modality_log(self) -> dict[str, dict[str, float]]:
        return {m: {"learning_speed": v} for m, v in self.tracker.speeds().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict(), "override": self.override, "steps_left": self.steps_left,
                "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.tracker.load_state_dict(state["tracker"])
        self.override, self.steps_left = state["override"], state["steps_left"]
        self.rng.setstate(state["rng"])


@METHODS.register("greedy_random", GreedyParams)
class GreedyRandom(GreedyGuided):
    """Wu et al. 2022's control: each step uniformly normal or re-balancing one modality."""

    def before_step(self) -> None:
        choices: list[str | None] = [None, *self.ctx.modalities]
        self.override = self.rng.choice(choices) if self.active() else None
        self.steps_left = 1 if self.override is not None else 0
        self.ctx.model.set_gate_override(self.override)
