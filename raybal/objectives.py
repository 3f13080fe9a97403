"""Study objectives, constraints and the ``[study]`` settings (DESIGN.md §4).

An objective names a ``trials.parquet`` column measured on *validation* data (test numbers
are reported, never optimised); a constraint is ``<column> <op> <number>`` and is applied by
``raybal best`` and the study summary.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from raybal.config import ConfigError, FrozenMap, knob

if TYPE_CHECKING:
    from raybal.config import RunConfig

_OBJECTIVE_PATTERNS = (
    (re.compile(r"^final\.val_(accuracy|miou|loss)$"), None),
    (re.compile(r"^final\.val_mu_target_error$"), "min"),
    (re.compile(r"^robust\.val_mean_(accuracy|miou)$"), "max"),
    (re.compile(r"^robust\.val_(accuracy|miou)\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+\.[0-9.]+$"), "max"),
)
OBJECTIVE_HELP = ("final.val_accuracy (final.val_miou), final.val_loss, robust.val_mean_accuracy, "
                  "robust.val_accuracy.<modality>.<corruption>.<level>, final.val_mu_target_error")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_.@:-]+)\s*(>=|<=|==|>|<)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: Literal["max", "min"]


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str, key: str = "constraint") -> Constraint:
        m = _CONSTRAINT.match(text)
        if not m:
            raise ConfigError(key, f"cannot parse {text!r}; write e.g. \"final.val_accuracy >= 0.9\"")
        return cls(m.group(1), m.group(2), float(m.group(3)))

    def holds(self, value: Any) -> bool:
        try:
            v = float(value)
        except (TypeError, ValueError):
            return False
        return not math.isnan(v) and _OPS[self.op](v, self.value)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


@dataclass(frozen=True)
class StudySettings:
    name: str = "study"
    objective: str | None = None
    mode: Literal["max", "min"] | None = None
    objectives: FrozenMap = knob({}, doc="metric -> 'max' | 'min' for a multi-objective study")
    num_samples: int = knob(8, ge=1)
    max_concurrent: int = knob(0, ge=0, doc="0 = as many trials as the CPUs (GPUs) allow")
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = knob(1, ge=1, doc="ASHA: epochs every trial runs before it can be stopped")
    reduction_factor: int = knob(2, ge=2, doc="ASHA: keep 1/reduction_factor of trials per rung")
    seed: int = knob(0, ge=0, doc="seeds the Optuna sampler")
    startup_trials: int = knob(0, ge=0, doc="random trials before TPE models the results (0 = num_samples // 3, 2..10)")
    constraints: tuple[str, ...] = ()
    cpus_per_trial: int = knob(1, ge=1, doc="CPU threads per one-worker trial")
    trial_retries: int = knob(1, ge=0, doc="restarts of a trial whose process died or raised (from its last epoch)")

    def validate(self, prefix: str) -> None:
        if self.objective and self.objectives:
            raise ConfigError(f"{prefix}.objectives", "give either objective (+ mode) or objectives, not both")
        for i, c in enumerate(self.constraints):
            Constraint.parse(c, f"{prefix}.constraints[{i}]")
        for metric, mode in self.objectives.items():
            if mode not in ("max", "min"):
                raise ConfigError(f"{prefix}.objectives.{metric}", f"mode must be 'max' or 'min', got {mode!r}")


def resolve_objectives(s: StudySettings, base: RunConfig) -> tuple[Objective, ...]:
    """The study's objectives with their modes; validation metrics only."""
    metric = "accuracy" if base.data.params.task == "classification" else "miou"
    pairs = list(s.objectives.items()) if s.objectives else [(s.objective or f"final.val_{metric}", s.mode)]
    out = []
    for name, mode in pairs:
        key = "study.objectives" if s.objectives else "study.objective"
        if ".test" in name or "test_" in name:
            raise ConfigError(key, f"{name!r} is a test metric: test numbers are reported, never optimised "
                              f"(use the val one, e.g. {name.replace('test', 'val')})")
        match = next((default for pat, default in _OBJECTIVE_PATTERNS if pat.match(name)), "none")
        if match == "none":
            raise ConfigError(key, f"unknown objective {name!r} (known: {OBJECTIVE_HELP})")
        if name.startswith("robust.") and not base.robustness.enabled:
            raise ConfigError(key, f"{name!r} needs a [robustness] section with splits including \"val\"")
        if name.startswith("robust.") and "val" not in base.robustness.splits:
            raise ConfigError("robustness.splits", f"objective {name!r} needs \"val\" in robustness.splits")
        if name == "final.val_mu_target_error" and base.balance.method != "mu_target":
            raise ConfigError(key, "final.val_mu_target_error needs balance.method = \"mu_target\"")
        mode = mode or match or ("min" if name.endswith("loss") else "max")
        out.append(Objective(name, mode))
    return tuple(out)
