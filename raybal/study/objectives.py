"""Study objectives, constraints and the ``[study]`` settings (DESIGN.md §4).

An objective names a ``trials.parquet`` column measured on *validation* data (test numbers
are reported, never optimised); a constraint is ``<column> <op> <number>`` and is applied by
``raybal best`` and the study summary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from raybal.balancing import METHODS
from raybal.balancing.base import BASELINE
from raybal.config import ConfigError, FrozenMap, knob
from raybal.config.constraint import Constraint
from raybal.config.tasks import metric_name

if TYPE_CHECKING:
    from raybal.config import RunConfig

# Objectives every run offers, whatever its method: (pattern over {metric}, default mode or None).
_TASK_OBJECTIVES = (
    (r"^final\.val_({metric}|loss)$", None),
    (r"^robust\.val_mean_{metric}$", "max"),
    (r"^robust\.val_(mra|rel_robustness)$", "max"),  # raybal.results.robust_summary
    (r"^robust\.val_{metric}\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+\.[0-9.]+$", "max"),
)


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: Literal["max", "min"]


def objective_help(metric: str, methods: Iterable[str]) -> str:
    offered = [k for m in methods for k in METHODS.get(m).obj.objectives]
    return ", ".join([f"final.val_{metric}", "final.val_loss", f"robust.val_mean_{metric}", "robust.val_mra",
                      "robust.val_rel_robustness", f"robust.val_{metric}.<modality>.<corruption>.<level>",
                      *dict.fromkeys(offered)])


_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


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
    sampler: Literal["tpe", "gp", "random", "qmc", "nsga2"] = knob(
        "tpe", doc="Optuna's sampler, seeded: tpe (default), gp (Gaussian process: strong at small budgets), random, "
        "qmc (a scrambled Sobol sequence), nsga2 (multi-objective); tpe, gp and nsga2 see the constraints")
    startup_trials: int = knob(0, ge=0, doc="random trials before TPE / GP model the results (0 = num_samples // 3, "
                               "2..10)")
    constraints: tuple[str, ...] = ()
    cpus_per_trial: int = knob(1, ge=1, doc="CPU threads per one-worker trial")
    trial_retries: int = knob(1, ge=0, doc="restarts of a trial whose process died or raised (from its last epoch)")
    per_method: bool = knob(False, doc="num_samples configurations for each method of the balance.method choice "
                            "(every method gets the same budget: a fair comparison)")
    repeats: int = knob(1, ge=1, doc="seeds per configuration (train.seed, +1, ...); Optuna sees their mean")
    baseline: str = knob(BASELINE, doc="the balancing method every answer is compared with, run with the base "
                         "file's data, model and training settings and the same seeds; \"none\" for no baseline")
    mlflow: str = knob("", doc="log every run to this MLflow tracking URI (the [mlflow] extra), e.g. "
                       "sqlite:///mlflow.db; empty = off")
    storage: str = knob("sqlite", doc="Optuna's storage: sqlite (optuna.db in the results directory), memory, "
                        "or an RDB URL such as postgresql://host/db for a cluster")

    def validate(self, prefix: str) -> None:
        # The name becomes a folder (results/<name>) and Optuna's study name: a plain name, never a path.
        if not _NAME.fullmatch(self.name):
            raise ConfigError(f"{prefix}.name", f"{self.name!r}: use letters, digits, '_', '-' and '.' (1-64, "
                                                "not starting with '.')")
        if self.objective and self.objectives:
            raise ConfigError(f"{prefix}.objectives", "give either objective (+ mode) or objectives, not both")
        for i, c in enumerate(self.constraints):
            Constraint.parse(c, f"{prefix}.constraints[{i}]")
        if self.baseline != "none" and self.baseline not in METHODS:
            raise ConfigError(f"{prefix}.baseline", f"unknown balancing method {self.baseline!r} "
                              f"(known: {', '.join(METHODS.names())}, or \"none\")")
        for metric, mode in self.objectives.items():
            if mode not in ("max", "min"):
                raise ConfigError(f"{prefix}.objectives.{metric}", f"mode must be 'max' or 'min', got {mode!r}")
        if self.sampler == "nsga2" and len(self.objectives) < 2:
            raise ConfigError(f"{prefix}.sampler", "\"nsga2\" is a multi-objective sampler; this study has one "
                              "objective (use \"tpe\" or \"gp\", or give objectives = {...})")


def resolve_objectives(s: StudySettings, base: RunConfig, methods: Iterable[str] = ()) -> tuple[Objective, ...]:
    """The study's objectives with their modes; validation metrics only.

    ``methods`` are the balancing methods the study's trials may use (the base file's and any
    the search chooses among); a method's own objectives (:attr:`BalanceMethod.objectives`) are
    allowed when every one of them offers it.
    """
    metric = metric_name(base.data.params.task)
    methods = tuple(dict.fromkeys([base.balance.method, *methods]))
    pairs = list(s.objectives.items()) if s.objectives else [(s.objective or f"final.val_{metric}", s.mode)]
    out = []
    for name, mode in pairs:
        key = "study.objectives" if s.objectives else "study.objective"
        if ".test" in name or "test_" in name:
            raise ConfigError(key, f"{name!r} is a test metric: test numbers are reported, never optimised "
                              f"(use the val one, e.g. {name.replace('test', 'val')})")
        default = next((d for pat, d in _TASK_OBJECTIVES if re.match(pat.format(metric=metric), name)), "none")
        if default == "none":
            offering = [m for m in METHODS.names() if name in METHODS.get(m).obj.objectives]
            lacking = [m for m in methods if m not in offering]
            if not offering:
                raise ConfigError(key, f"unknown objective {name!r} (known: {objective_help(metric, methods)})")
            if lacking:
                raise ConfigError(key, f"{name!r} is offered by balance.method {' / '.join(map(repr, offering))}, "
                                  f"not by {lacking[0]!r}")
            default = METHODS.get(offering[0]).obj.objectives[name]
        if name.startswith("robust.") and not base.robustness.enabled:
            raise ConfigError(key, f"{name!r} needs a [robustness] section with splits including \"val\"")
        if name.startswith("robust.") and "val" not in base.robustness.splits:
            raise ConfigError("robustness.splits", f"objective {name!r} needs \"val\" in robustness.splits")
        mode = mode or default or ("min" if name.endswith("loss") else "max")
        out.append(Objective(name, mode))
    return tuple(out)
