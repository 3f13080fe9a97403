"""Does utilization predict the objective on this data? (``raybal best``, ``raybal report``, notebook 02)

A study that searches a target utilization rests on one premise: the share of reliance a network
puts on a modality moves the objective (robust accuracy, say). Its runs answer whether it does
here, one point per run (every configuration and seed, the baseline's included):

* the **slope** of the objective on the achieved MU share of the targeted modality, by ordinary
  least squares over runs, with its 95 % t interval (``n - 2`` degrees of freedom); reported per
  0.1 of share, the step a user moves a target by;
* **utilization's share** of the objective's variance: the R² of that line;
* the **configuration's and the seed's shares**: a sequential (type-I) decomposition of the
  objective's sum of squares over runs, the configuration entered first, then the training seed
  (``train.seed``: replicate k of every configuration shares it, DESIGN.md §4). With every
  configuration run on the same seeds the two are orthogonal and the order does not matter;
  the remainder is their interaction (a seed that favours one configuration) and noise.

The slope's interval treats runs as independent; replicate k of every configuration shares a seed, so
with a large seed share it is narrower than it should be: read it beside the shares. With one run per
configuration (``study.repeats = 1``) the configuration would explain everything by construction, so
the shares are NaN and not reported.

A configuration share far above the seed's, and a slope whose interval excludes 0, say the target
matters; a seed share that dwarfs the configuration's says a run's outcome is decided by its
initialisation and data order, whatever the target (then more seeds, not a finer search, are what
the study needs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from raybal.analysis.intervals import is_bounded, t_quantile
from raybal.analysis.runs import runs, trial_labels
from raybal.results.schema import target_columns

MIN_RUNS = 4  # a slope and its interval need n - 2 >= 2 degrees of freedom
STEP = 0.1  # the slope is reported per this much of MU share


@dataclass(frozen=True)
class UtilizationEffect:
    """What the runs of one study say about utilization and the objective (module docstring)."""

    metric: str
    modality: str
    n_runs: int
    n_configs: int
    n_seeds: int
    slope: float  # objective per STEP of the modality's achieved MU share
    slope_low: float
    slope_high: float
    r2_utilization: float  # share of the objective's variance the fitted line explains
    share_config: float  # type-I sum-of-squares shares, configuration first
    share_seed: float
    share_rest: float
    share_range: tuple[float, float]  # the achieved MU shares' min and max over runs

    @property
    def predicts(self) -> bool:
        """True when the slope's 95 % interval excludes 0."""
        return self.slope_low > 0 or self.slope_high < 0

    def sentence(self) -> str:
        points = is_bounded(self.metric)
        scale, unit = (100.0, " points") if points else (1.0, "")

        def f(v: float) -> str:
            return "n/a" if math.isnan(v) else f"{v * scale:+.2f}"

        def pct(v: float) -> str:
            return f"{v * 100:.0f} %"

        lo, hi = self.share_range
        verdict = ("it predicts the objective (the slope's 95 % interval excludes 0)" if self.predicts else
                   "no evidence that it predicts the objective (the slope's 95 % interval includes 0)")
        seed = ("" if self.n_seeds < 2 or math.isnan(self.share_config) else
                f"; the configuration explains {pct(self.share_config)}, the seed {pct(self.share_seed)}")
        return (f"utilization explains {pct(self.r2_utilization)} of {self.metric} over {self.n_runs} runs "
                f"({self.modality} share {lo:.2f}-{hi:.2f}): slope {f(self.slope)}{unit} per +{STEP:g} of "
                f"{self.modality} share (95 % CI [{f(self.slope_low)}, {f(self.slope_high)}]){seed}; {verdict}")

    def to_json(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        return {"metric": self.metric, "modality": self.modality, "n_runs": self.n_runs,
                "n_configs": self.n_configs, "n_seeds": self.n_seeds, "slope_per": STEP,
                "slope": num(self.slope), "slope_low": num(self.slope_low), "slope_high": num(self.slope_high),
                "r2_utilization": num(self.r2_utilization), "share_config": num(self.share_config),
                "share_seed": num(self.share_seed), "share_rest": num(self.share_rest),
                "share_range": [float(v) for v in self.share_range], "predicts": self.predicts,
                "sentence": self.sentence()}


def targeted_modality(trials: pd.DataFrame, meta: dict[str, Any] | None = None) -> str | None:
    """The modality whose target the study searches (the first searched target column), else None."""
    searched = (meta or {}).get("searched") or []
    for m, col in target_columns(trials.columns).items():
        if col in searched and f"final.mu.{m}" in trials.columns:
            return m
    return None


def effect_runs(trials: pd.DataFrame, metric: str, modality: str) -> pd.DataFrame:
    """One row per finished run with a finite objective and share: ``config_id``, ``seed``, ``share``,
    ``value`` (and ``label``, the method with its target)."""
    mu = f"final.mu.{modality}"
    if trials.empty or metric not in trials or mu not in trials:
        return pd.DataFrame(columns=["trial_id", "config_id", "seed", "share", "value", "label"])
    r = runs(trials)
    r = r.assign(share=pd.to_numeric(r[mu], errors="coerce"), value=pd.to_numeric(r[metric], errors="coerce"))
    r = r[(r["status"] == "ok") & np.isfinite(r["share"]) & np.isfinite(r["value"])]
    labels = trial_labels(trials)
    return pd.DataFrame({"trial_id": r["trial_id"].astype(str), "config_id": r["config_id"].astype(str),
                         "seed": r["_seed"].astype(int), "share": r["share"].astype(float),
                         "value": r["value"].astype(float),
                         "label": r["trial_id"].map(labels).astype(str)}).reset_index(drop=True)


def _ss_explained(y: np.ndarray, *groups: np.ndarray) -> float:
    """Sum of squares explained by an additive model of one-hot factors (least squares)."""
    cols = [np.ones(len(y))]
    for g in groups:
        levels = np.unique(g)
        cols += [(g == v).astype(float) for v in levels[1:]]
    x = np.column_stack(cols)
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    fitted = x @ beta
    return float(((fitted - y.mean()) ** 2).sum())


def variance_shares(values: np.ndarray, configs: np.ndarray, seeds: np.ndarray) -> tuple[float, float, float]:
    """(configuration, seed, rest): the type-I shares of ``values``' sum of squares, the configuration
    entered first (module docstring); NaNs when ``values`` do not vary."""
    y = np.asarray(values, dtype=float)
    total = float(((y - y.mean()) ** 2).sum())
    if total <= 1e-18:
        return math.nan, math.nan, math.nan
    config = min(1.0, _ss_explained(y, configs) / total)
    seed = max(0.0, min(1.0, _ss_explained(y, configs, seeds) / total) - config)
    return config, seed, max(0.0, 1.0 - config - seed)


def utilization_effect(trials: pd.DataFrame, metric: str, modality: str) -> UtilizationEffect | None:
    """The slope, its interval and the variance shares over the runs (module docstring); None with fewer
    than :data:`MIN_RUNS` runs or when the achieved share or the objective does not vary."""
    r = effect_runs(trials, metric, modality)
    n = len(r)
    if n < MIN_RUNS:
        return None
    x, y = r["share"].to_numpy(), r["value"].to_numpy()
    sxx, syy = float(((x - x.mean()) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    if sxx <= 1e-12 or syy <= 1e-18:
        return None
    b = float(((x - x.mean()) * (y - y.mean())).sum()) / sxx
    resid = y - (y.mean() + b * (x - x.mean()))
    se = math.sqrt(float((resid ** 2).sum()) / (n - 2) / sxx)
    half = t_quantile(0.975, n - 2) * se
    share_config, share_seed, share_rest = variance_shares(y, r["config_id"].to_numpy(), r["seed"].to_numpy())
    if r.groupby("config_id").size().max() < 2:  # one run per configuration: it "explains" everything
        share_config = share_seed = share_rest = math.nan
    return UtilizationEffect(
        metric=metric, modality=modality, n_runs=n, n_configs=int(r["config_id"].nunique()),
        n_seeds=int(r["seed"].nunique()), slope=b * STEP, slope_low=(b - half) * STEP,
        slope_high=(b + half) * STEP, r2_utilization=b * b * sxx / syy, share_config=share_config,
        share_seed=share_seed, share_rest=share_rest,
        share_range=(float(x.min()), float(x.max())))
