"""Which searched knob drove the objective? Hyperparameter importance over a study's configurations.

The configurations' means (over their seeds, the baseline left out) become the trials of an in-memory
Optuna study, one distribution per searched column (numbers: their observed range, on a log scale
when positive and spanning 20x or more; integers: an integer range; anything else: categories), and
an Optuna importance evaluator scores each knob:

* ``ped_anova`` (default): PED-ANOVA (Watanabe, Bansal & Hutter, *PED-ANOVA: Efficiently Quantifying
  Hyperparameter Importance in Arbitrary Subspaces*, IJCAI 2023): how differently a knob is
  distributed among the best 10 % of configurations than among all; fast, robust with few trials;
* ``fanova``: functional ANOVA on a random forest (Hutter, Hoos & Leyton-Brown, ICML 2014): the
  share of the objective's variance each knob explains alone.

Importances are normalised to sum to 1. Their stability is checked by re-computing them on random
80 % subsamples of the configurations (drawn without replacement: a bootstrap's duplicated points
make every knob look concentrated among PED-ANOVA's best few): each knob's 2.5-97.5 % range over the
resamples and the share of resamples in which it ranks first. Below ``MIN_CONFIGS`` configurations (or
2 per knob) the answer is "not enough configurations", never a ranking of noise.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

EVALUATORS = ("ped_anova", "fanova")
MIN_CONFIGS = 8
SUBSAMPLE = 0.8  # the share of configurations in each stability resample
BOOTSTRAPS = {"ped_anova": 50, "fanova": 20}


@dataclass
class Importance:
    """The searched knobs' importance for one objective, with its stability over resamples."""

    metric: str
    evaluator: str
    n_configs: int
    values: dict[str, float] = field(default_factory=dict)  # knob -> importance (sums to 1), best first
    low: dict[str, float] = field(default_factory=dict)  # 2.5 % percentile over the resamples
    high: dict[str, float] = field(default_factory=dict)  # 97.5 % percentile over the resamples
    first: dict[str, float] = field(default_factory=dict)  # share of resamples ranking the knob first
    needed: int = MIN_CONFIGS
    left_out: list[str] = field(default_factory=list)  # conditional knobs, unset on some configurations

    @property
    def enough(self) -> bool:
        return bool(self.values)

    def sentence(self) -> str:
        if not self.enough:
            return (f"which knob matters for {self.metric}: not enough configurations to say ({self.n_configs}; "
                    f"{self.evaluator} needs {self.needed})")
        parts = [f"{k} {v:.2f} [{self.low[k]:.2f}, {self.high[k]:.2f}]" for k, v in self.values.items()]
        top = next(iter(self.values))
        steady = self.first[top]
        verdict = (f"{top} matters most (first in {steady:.0%} of resamples)" if steady >= 0.6 else
                   f"no knob stands out (the first, {top}, leads in only {steady:.0%} of resamples)")
        cond = f"; left out (set on some configurations only): {', '.join(self.left_out)}" if self.left_out else ""
        return f"which knob matters for {self.metric} ({self.evaluator}, {self.n_configs} configurations): " \
               f"{verdict}; importance [95 % range over 80 % resamples]: " + ", ".join(parts) + cond

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "evaluator": self.evaluator, "n_configs": self.n_configs,
                "enough": self.enough, "needed": self.needed, "importance": self.values, "low": self.low,
                "high": self.high, "first": self.first, "left_out": self.left_out, "sentence": self.sentence()}


def _distributions(df: pd.DataFrame, params: list[str]) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for p in params:
        col = df[p]
        if col.astype(str).nunique() < 2:
            continue  # a knob that never varied explains nothing
        num = pd.to_numeric(col, errors="coerce")
        if num.notna().all() and col.map(lambda v: not isinstance(v, bool)).all():
            lo, hi = float(num.min()), float(num.max())
            if (num == num.round()).all() and all(isinstance(v, (int, np.integer)) for v in col):
                out[p] = IntDistribution(int(lo), int(hi))
            else:
                out[p] = FloatDistribution(lo, hi, log=lo > 0 and hi / lo >= 20)
        else:
            out[p] = CategoricalDistribution(sorted(col.astype(str).unique()))
    return out


def _evaluate(df: pd.DataFrame, metric: str, mode: str, dists: dict[str, Any], evaluator: str, seed: int
              ) -> dict[str, float]:
    import optuna
    from optuna.distributions import CategoricalDistribution, IntDistribution
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator, get_param_importances

    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for _, row in df.iterrows():
        params = {p: (str(row[p]) if isinstance(d, CategoricalDistribution) else
                      int(row[p]) if isinstance(d, IntDistribution) else float(row[p]))
                  for p, d in dists.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(row[metric])))
    ev = PedAnovaImportanceEvaluator() if evaluator == "ped_anova" else FanovaImportanceEvaluator(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's "experimental" notices
        raw = get_param_importances(study, evaluator=ev)
    total = sum(raw.values())
    return {p: float(raw.get(p, 0.0)) / total if total > 0 else 1.0 / len(dists) for p in dists}


def importance(configs: pd.DataFrame, metric: str, mode: str, params: list[str], evaluator: str = "ped_anova",
               seed: int = 0, boots: int | None = None) -> Importance:
    """``params``' importance for ``metric`` over ``configs`` (one row per configuration, the metric its
    mean over seeds), with ranges over 80 % resamples; "not enough configurations" below the minimum."""
    import optuna

    if evaluator not in EVALUATORS:
        raise ValueError(f"unknown importance evaluator {evaluator!r} (known: {', '.join(EVALUATORS)})")
    df = configs[pd.to_numeric(configs[metric], errors="coerce").notna()]
    # a conditional knob (set for some methods only) has no value on the others' rows: left out, and said
    present = [p for p in params if p in df.columns and df[p].notna().all()]
    df = df[present + [metric]]
    dists = _distributions(df, present)
    needed = max(MIN_CONFIGS, 2 * len(dists))
    out = Importance(metric=metric, evaluator=evaluator, n_configs=len(df), needed=needed,
                     left_out=[p for p in params if p in configs.columns and p not in present])
    if len(df) < needed or not dists:
        return out
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    point = _evaluate(df, metric, mode, dists, evaluator, seed)
    rng = np.random.default_rng(seed)
    samples = []
    for b in range(boots if boots is not None else BOOTSTRAPS[evaluator]):
        # 80 % of the configurations without replacement (a bootstrap's duplicates make PED-ANOVA's top
        # quantile a few repeated points, in which every knob looks concentrated); the ranges searched
        re = df.iloc[np.sort(rng.choice(len(df), max(round(SUBSAMPLE * len(df)), 2), replace=False))]
        samples.append(_evaluate(re, metric, mode, dists, evaluator, seed + b + 1))
    boot = pd.DataFrame(samples)
    order = sorted(point, key=lambda p: -point[p])
    firsts = boot.idxmax(axis=1).value_counts(normalize=True)
    out.values = {p: point[p] for p in order}
    out.low = {p: float(np.percentile(boot[p], 2.5)) for p in order}
    out.high = {p: float(np.percentile(boot[p], 97.5)) for p in order}
    out.first = {p: float(firsts.get(p, 0.0)) for p in order}
    return out


def study_importance(configs: pd.DataFrame, metric: str, mode: str, searched: list[str],
                     evaluator: str = "ped_anova") -> Importance:
    """The importance of a study's searched knobs (the seed and the method's baseline left out)."""
    search = configs[configs["role"] != "baseline"] if "role" in configs else configs
    return importance(search, metric, mode, [c for c in searched if c != metric], evaluator)
