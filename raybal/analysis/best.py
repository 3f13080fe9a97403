"""Selecting the best trial from a results directory (``raybal best``, ``raybal.best_target``).

Reads only ``trials.parquet`` and ``study.json`` / ``run.json`` (DESIGN.md §4). Only trials
with ``status = ok`` and a finite metric that meet every constraint are candidates; the
default metric, mode and constraints are the study's own (``study.json["best"]``). For a
multi-objective study the Pareto set over its objectives is reported too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from raybal.analysis.confirmed import Confirmed, confirmed
from raybal.analysis.effect import UtilizationEffect, targeted_modality, utilization_effect
from raybal.analysis.importance import Importance, study_importance
from raybal.analysis.intervals import Comparison, Interval, metric_interval, paired_difference
from raybal.analysis.runs import runs
from raybal.config.constraint import Constraint
from raybal.config.tasks import METRICS, metric_of_columns
from raybal.results.schema import target_columns
from raybal.results.tables import ResultsError, load_results

CONFIG_PREFIXES = ("data.", "model.", "balance.", "train.")


def infer_mode(metric: str) -> str:
    return "min" if any(w in metric for w in ("loss", "error")) or metric.endswith("_mce") else "max"


def with_summary_columns(trials: pd.DataFrame, results_dir: Path) -> pd.DataFrame:
    """``trials`` with each run's mCE and effective robustness against the baseline
    (``robust.<split>_mce``, ``robust.<split>_effective_robustness``) from ``robustness_summary.parquet``."""
    from raybal.results.robust_summary import trial_columns
    from raybal.results.tables import SUMMARY, read_table

    path = Path(results_dir) / f"{SUMMARY}.parquet"
    if trials.empty or not path.is_file():
        return trials
    cols = trial_columns(read_table(path))
    out = trials.copy()
    key = out["trial_id"].astype(str)
    for c in cols.columns:
        if c not in out.columns:
            out[c] = key.map(cols[c]).astype(float)
    return out


@dataclass
class Best:
    trial_id: str  # the configuration's first replicate
    metric: str
    mode: str
    value: float  # the mean over the configuration's seeds
    target: dict[str, float] | None
    mu: dict[str, float]
    params: dict[str, Any]
    row: dict[str, Any]  # the first replicate's row, numeric finals replaced by their means over seeds
    runners_up: pd.DataFrame
    pareto: pd.DataFrame | None = None
    constraints: list[str] = field(default_factory=list)
    candidates: int = 0  # candidate configurations
    config_id: str = ""
    interval: Interval | None = None
    trial_ids: list[str] = field(default_factory=list)
    vs_runner_up: Comparison | None = None
    vs_baseline: Comparison | None = None
    baseline: str | None = None  # the baseline method, when the study ran one
    is_baseline: bool = False
    study: bool = True  # False: a single run's results (nothing to compare)
    failed: pd.DataFrame | None = None  # configurations with a failed seed: reported, never averaged
    utilization: UtilizationEffect | None = None  # a study searching a target: does utilization predict it?
    steered: bool = False  # some run of the best configuration read validation while training
    importance: Importance | None = None  # which searched knob drove the metric (a study's configurations)
    other_importance: list[Importance] = field(default_factory=list)  # the study's other objectives'
    confirmed: Confirmed | None = None  # raybal confirm: the top configurations on fresh seeds

    def sentences(self) -> list[str]:
        out = []
        if self.is_baseline:
            out.append(f"the best configuration is the baseline ({self.baseline}) itself")
        elif self.vs_baseline is not None:
            out.append(self.vs_baseline.sentence(self.metric))
        elif self.baseline is None and self.study:
            out.append("no baseline in this study (study.baseline = \"none\"): nothing to compare the best with")
        if self.vs_runner_up is not None:
            out.append(self.vs_runner_up.sentence(self.metric))
        if self.utilization is not None:
            out.append(self.utilization.sentence())
        if self.importance is not None:
            out.append(self.importance.sentence())
        out += [imp.sentence() for imp in self.other_importance]
        if self.confirmed is not None:
            out += self.confirmed.sentences()
        if self.steered:
            out.append("training was steered by the validation split (final.steered_by_val: the outer loop of "
                       "balance.feedback = \"validation\"), so the val_* numbers are not held out: compare on "
                       "final.test_*")
        return out

    def to_json(self) -> dict[str, Any]:
        out = {"trial_id": self.trial_id, "config_id": self.config_id, "trial_ids": self.trial_ids,
               "metric": self.metric, "mode": self.mode, "value": self.value,
               "interval": self.interval.to_json() if self.interval else None,
               "target": self.target, "mu": self.mu, "params": self.params, "constraints": self.constraints,
               "candidates": self.candidates, "baseline": self.baseline, "is_baseline": self.is_baseline,
               "vs_baseline": self.vs_baseline.to_json(self.metric) if self.vs_baseline else None,
               "vs_runner_up": self.vs_runner_up.to_json(self.metric) if self.vs_runner_up else None,
               "sentences": self.sentences(), "steered_by_val": self.steered,
               "importance": self.importance.to_json() if self.importance else None,
               "other_importance": [imp.to_json() for imp in self.other_importance],
               "utilization_effect": self.utilization.to_json() if self.utilization else None,
               "confirmed": self.confirmed.to_json() if self.confirmed else None,
               "test": {k: _plain(v) for k, v in self.row.items() if k.startswith("final.test_")},
               "checkpoint": _plain(self.row.get("checkpoint")),
               "runners_up": json.loads(self.runners_up.to_json(orient="records"))}
        if self.pareto is not None:
            out["pareto"] = json.loads(self.pareto.to_json(orient="records"))
        if self.failed is not None and not self.failed.empty:
            out["failed_configs"] = json.loads(self.failed.to_json(orient="records"))
        return out


def _plain(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def searched_columns(trials: pd.DataFrame, meta: dict[str, Any] | None = None) -> list[str]:
    """What the search set: the study's own list, else the config columns that differ between trials."""
    if meta and meta.get("searched"):
        return [c for c in meta["searched"] if c in trials.columns]
    cols = [c for c in trials.columns if c.startswith(CONFIG_PREFIXES) and c not in ("train.seed",)]
    return [c for c in cols if trials[c].astype(str).nunique(dropna=False) > 1]


def pareto_front(df: pd.DataFrame, objectives: list[tuple[str, str]]) -> pd.DataFrame:
    """Rows not dominated on the objectives (mode 'max' or 'min' each); rows missing one are left out."""
    df = df[df[[m for m, _ in objectives]].apply(pd.to_numeric, errors="coerce").notna().all(axis=1)]
    vals = df[[m for m, _ in objectives]].to_numpy(dtype=float).copy()
    for j, (_, mode) in enumerate(objectives):
        if mode == "min":
            vals[:, j] = -vals[:, j]
    keep = []
    for i in range(len(vals)):
        dominated = any((vals[k] >= vals[i]).all() and (vals[k] > vals[i]).any() for k in range(len(vals)) if k != i)
        keep.append(not dominated)
    return df[keep]


def config_table(t: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per configuration: its first replicate's columns, numeric ``final.*`` / ``robust.*``
    columns as the mean over its ``ok`` seeds, and ``n_ok`` / ``n_failed`` / ``n_stopped``,
    ``<metric>.low`` / ``.high`` (the 95 % interval of the metric, NaN under two seeds; on the logit scale
    for a [0, 1] metric: :func:`raybal.analysis.intervals.metric_interval`)."""
    out = []
    for cid, g in runs(t).groupby("config_id", sort=False):
        ok = g[(g["status"] == "ok") & pd.to_numeric(g[metric], errors="coerce").notna()] if metric in g else g[:0]
        row = (ok if not ok.empty else g).iloc[0].to_dict()
        for c in g.columns:
            if c.startswith(("final.", "robust.")) and not ok.empty:
                vals = pd.to_numeric(ok[c], errors="coerce")  # text (reused_from) -> NaN; bools -> a fraction
                if vals.notna().any():
                    row[c] = float(vals.astype(float).mean())
        iv = metric_interval(pd.to_numeric(ok[metric], errors="coerce").tolist(), metric) if not ok.empty else None
        if iv is not None:
            row[metric] = iv.mean  # whatever the column (final.*, robust.*, wall_s, ...): ranked by the mean
        row.update({"config_id": cid, "n_ok": len(ok), "n_failed": int((g["status"] == "failed").sum()),
                    "n_stopped": int((g["status"] == "stopped").sum()), "trial_ids": list(g["trial_id"].astype(str)),
                    f"{metric}.low": iv.low if iv else math.nan, f"{metric}.high": iv.high if iv else math.nan,
                    "_values": dict(zip(ok["_seed"], pd.to_numeric(ok[metric], errors="coerce"), strict=True))})
        out.append(row)
    return pd.DataFrame(out)


def _compare(best: dict[str, Any], other: dict[str, Any], what: str, mode: str) -> Comparison:
    diff = paired_difference(best["_values"], other["_values"])
    return Comparison(what, str(other["config_id"]), diff, diff.verdict(mode))


def best_trial(results_dir: str | Path, metric: str | None = None, mode: str | None = None,
               constraints: list[str] | None = None, top: int = 5, method: str | None = None,
               importance: str | None = "ped_anova") -> Best:
    """The best configuration under ``metric`` (default: the study's objective) and the constraints:
    the highest (lowest) mean over its seeds among configurations whose every seed finished ``ok``;
    constraints hold on the means. Compared with the runner-up and the study's baseline, paired by seed.
    ``importance`` (``"ped_anova"``, ``"fanova"`` or None): which searched knob drove the metric, over
    the complete configurations (:mod:`raybal.analysis.importance`)."""
    res = load_results(results_dir)
    t = with_summary_columns(res.trials, res.path)
    if t.empty:
        raise ResultsError(f"{res.path}: no trials recorded yet")
    spec = res.meta.get("best", {})
    metric = metric or spec.get("metric") or f"final.val_{metric_of_columns(t.columns)}"
    mode = mode or (spec.get("mode") if metric == spec.get("metric") else None) or infer_mode(metric)
    if mode not in ("max", "min"):
        raise ResultsError(f"--mode must be max or min, got {mode!r}")
    if metric not in t.columns:
        known = sorted(c for c in t.columns if c.startswith(("final.", "robust.")))
        raise ResultsError(f"metric {metric!r} is not a column of trials.parquet (have: {', '.join(known[:12])}...)")
    texts = list(spec.get("constraints", [])) + list(constraints or [])
    cons = [Constraint.parse(c, "--constraint") for c in texts]
    for c in cons:
        if c.metric not in t.columns:
            raise ResultsError(f"constraint {c}: {c.metric!r} is not a column of trials.parquet")
    configs = config_table(t, metric)  # the search's runs only (analysis.runs leaves a confirmation's out)
    every_config = configs
    expected = int(res.meta.get("repeats") or 1)  # seeds every configuration should have (study.repeats)
    if method is not None:  # the best of one method (the baseline stays the reference)
        configs = configs[(configs["balance.method"] == method) | (configs["role"] == "baseline")]
    complete = configs[(configs["n_ok"] >= expected) & (configs["n_failed"] == 0) & (configs["n_stopped"] == 0)]
    ok = complete[complete["balance.method"] == method] if method is not None else complete
    for c in cons:
        ok = ok[ok[c.metric].map(c.holds)]
    if ok.empty:
        raise ResultsError(f"no configuration whose every seed finished ok meets "
                           f"{', '.join(map(str, cons)) or 'the selection'} ({len(t)} trials recorded)")
    ranked = ok.sort_values(metric, ascending=mode == "min", kind="stable")
    row = ranked.iloc[0].to_dict()
    mods = [c.split(".", 2)[2] for c in t.columns if c.startswith("final.mu.")]
    tcols = target_columns(t.columns)
    target = {m: float(row[tcols[m]]) for m in mods if m in tcols and pd.notna(row[tcols[m]])} or None
    searched = searched_columns(t, res.meta)
    show = ["config_id", "n_ok", metric, f"{metric}.low", f"{metric}.high"] + [c for c in searched if c != metric]
    show += [f"final.mu.{m}" for m in mods] + [f"final.test_{m}" for m in METRICS.values()
                                               if f"final.test_{m}" in t.columns]
    base_method = res.meta.get("baseline") if res.meta.get("kind") == "study" else None
    base = configs[(configs["role"] == "baseline") & (configs["n_ok"] > 0)]
    vs_base = vs_next = None
    is_base = bool(row["role"] == "baseline")
    if not base.empty and not is_base:
        vs_base = _compare(row, base.iloc[0].to_dict(), f"the baseline ({base_method})", mode)
    if len(ranked) > 1:
        vs_next = _compare(row, ranked.iloc[1].to_dict(), "the runner-up", mode)
    pareto = None
    objectives = res.meta.get("objectives", [])
    if len(objectives) > 1:
        objs = [(o["metric"], o["mode"]) for o in objectives if o["metric"] in ok.columns]
        cols = list(dict.fromkeys(["config_id", "trial_id", "n_ok"] + [m for m, _ in objs] + searched))
        pareto = pareto_front(ok, objs)[cols].reset_index(drop=True)
    # reported, never ranked: a failed seed, or fewer ok seeds than study.repeats (an interrupted study)
    is_study = res.meta.get("kind") == "study"
    knobs = study_importance(complete, metric, mode, searched, importance) if is_study and importance else None
    others = [study_importance(complete, o["metric"], o["mode"], searched, importance)
              for o in res.meta.get("objectives", []) if knobs is not None and o["metric"] != metric
              and o["metric"] in complete.columns]  # a multi-objective study: each objective's own answer
    modality = targeted_modality(t, res.meta) if is_study else None
    effect = utilization_effect(t, metric, modality) if modality else None
    failed = configs.loc[(configs["n_failed"] > 0) | ((configs["n_ok"] > 0) & (configs["n_ok"] < expected)
                                                      & (configs["n_stopped"] == 0)),
                         ["config_id", "n_ok", "n_failed", "n_stopped", *searched]]
    confirmation = (confirmed(res.path, t, every_config, str(row["config_id"]), metric, mode)
                    if is_study and method is None else None)
    return Best(trial_id=str(row["trial_id"]), metric=metric, mode=mode, value=float(row[metric]), target=target,
                mu={m: float(row[f"final.mu.{m}"]) for m in mods if pd.notna(row.get(f"final.mu.{m}"))},
                params={c: _plain(row[c]) for c in searched}, row={k: v for k, v in row.items() if k != "_values"},
                runners_up=ranked[list(dict.fromkeys(c for c in show if c in ranked))].iloc[1:top + 1]
                .reset_index(drop=True), pareto=pareto, constraints=[str(c) for c in cons], candidates=len(ok),
                config_id=str(row["config_id"]), interval=metric_interval(list(row["_values"].values()), metric),
                trial_ids=list(row["trial_ids"]), vs_runner_up=vs_next, vs_baseline=vs_base,
                baseline=base_method, is_baseline=is_base, study=res.meta.get("kind") == "study",
                failed=failed.reset_index(drop=True), utilization=effect,
                steered=_steered(t, list(row["trial_ids"])), importance=knobs, other_importance=others,
                confirmed=confirmation)


def _steered(t: pd.DataFrame, trial_ids: list[str]) -> bool:
    """Did any of these runs read validation while training (``final.steered_by_val``)?"""
    if "final.steered_by_val" not in t.columns:
        return False
    runs = t.loc[t["trial_id"].astype(str).isin([str(i) for i in trial_ids]), "final.steered_by_val"]
    return any(bool(v) for v in runs if v is not None and v == v)  # null: a run recorded before the column


def best_per_method(results_dir: str | Path, metric: str | None = None, mode: str | None = None,
                    constraints: list[str] | None = None) -> pd.DataFrame:
    """One row per balancing method of the results: its best configuration's mean and 95 % interval,
    the paired difference to the baseline, the test metric and MU (means over seeds); a method with no
    candidate configuration says why. (A ``study.per_method`` study gives each the same budget.)"""
    t = load_results(results_dir).trials
    if t.empty:
        raise ResultsError(f"{results_dir}: no trials recorded yet")
    rows, every = [], runs(t)
    for m in dict.fromkeys(t["balance.method"].dropna().astype(str)):
        try:
            b = best_trial(results_dir, metric, mode, constraints, method=m, importance=None)
        except ResultsError as exc:
            rows.append({"method": m, "note": str(exc)})
            continue
        iv, diff = b.interval, b.vs_baseline.diff if b.vs_baseline else None
        test = next((k for k in b.row if k.startswith("final.test_") and k[11:] in METRICS.values()), None)
        rows.append({"method": m, "configs": int(every.loc[every["balance.method"] == m, "config_id"].nunique()),
                     "config_id": b.config_id, "n": iv.n, "metric": b.metric, "mean": b.value, "low": iv.low,
                     "high": iv.high, "vs_baseline": diff.mean if diff else (0.0 if b.is_baseline else math.nan),
                     "vs_baseline.low": diff.low if diff else math.nan,
                     "vs_baseline.high": diff.high if diff else math.nan,
                     "verdict": b.vs_baseline.verdict if b.vs_baseline else ("baseline" if b.is_baseline else ""),
                     **({test: b.row[test]} if test else {}), **{f"mu.{k}": v for k, v in b.mu.items()}})
    return pd.DataFrame(rows)


class BestTarget(dict):
    """The best configuration's target (modality -> fraction, a plain dict to read) that also carries
    its uncertainty: ``interval`` (the metric's mean and 95 % interval over seeds), ``vs_baseline`` /
    ``vs_runner_up`` (paired differences), ``utilization_effect`` (does utilization predict the metric
    on these runs: :class:`raybal.analysis.effect.UtilizationEffect`), ``sentences`` and the whole
    :class:`Best` as ``best``."""

    def __init__(self, best: Best) -> None:
        super().__init__(best.target or {})
        self.best = best
        self.interval, self.vs_baseline, self.vs_runner_up = best.interval, best.vs_baseline, best.vs_runner_up
        self.utilization_effect = best.utilization
        self.sentences = best.sentences()


def best_target(results_dir: str | Path, metric: str | None = None, **kw: Any) -> BestTarget | None:
    """The best configuration's target utilization (modality -> fraction, with its uncertainty attached:
    :class:`BestTarget`), or None when it had none (e.g. the vanilla baseline won)."""
    b = best_trial(results_dir, metric, **kw)
    return BestTarget(b) if b.target else None


def format_best(b: Best) -> str:
    n = b.interval.n if b.interval else 1
    value = b.interval.format() if b.interval and n > 1 else f"{b.value:.4f}"
    lines = [f"best configuration {b.config_id} (first run {b.trial_id}): {b.metric} = {value} ({b.mode}; "
             f"{b.candidates} candidate configurations" + (f", constraints: {'; '.join(b.constraints)}"
                                                           if b.constraints else "") + ")"]
    lines += [f"  {s}" for s in b.sentences()]
    if b.target:
        lines.append("target utilization: " + "  ".join(f"{m} {v:.3f}" for m, v in b.target.items()))
    if b.mu:
        lines.append("achieved test MU:   " + "  ".join(f"{m} {v:.3f}" for m, v in b.mu.items())
                     + (f"  (mean of {n} seeds)" if n > 1 else ""))
    met, err, tol = b.row.get("final.target_met"), b.row.get("final.target_error"), b.row.get("balance.tolerance")
    if isinstance(err, (int, float)) and err == err and met is not None and met == met:
        within = f" (tolerance {tol:g})" if isinstance(tol, (int, float)) and tol == tol else ""
        if n > 1:
            lines.append(f"target met on test: {float(met):.0%} of seeds, mean error {err:.3f}{within}")
        else:
            lines.append(f"target met on test: {'yes' if met else 'NO'}, error {err:.3f}{within}")
    for k, v in b.params.items():
        if v is not None and v == v:  # a knob the configuration does not have (the baseline's target) is not shown
            lines.append(f"  {k} = {v}")
    # the test metric and the methods' own test metrics; per-modality measures stay in the tables
    tests = {k: v for k, v in b.row.items() if k.startswith("final.test_") and k != "final.test_loss"
             and "." not in k[len("final."):] and isinstance(v, (int, float)) and v == v}
    if tests:
        lines.append("reported (not optimised): " + "  ".join(f"{k} {v:.4f}" for k, v in tests.items()))
    fmt = {"float_format": lambda v: f"{v:.4f}", "index": False}
    if not b.runners_up.empty:
        lines += ["", "runners-up (means over seeds; .low/.high: 95 % interval):", b.runners_up.to_string(**fmt)]
    if b.confirmed is not None and not b.confirmed.table.empty:
        lines += ["", "confirmed on fresh seeds (raybal confirm; search: the selection's seeds; gap = search - "
                  "confirmed):", b.confirmed.table.to_string(**fmt)]
    if b.pareto is not None:
        lines += ["", "Pareto set:", b.pareto.to_string(**fmt)]
    if b.failed is not None and not b.failed.empty:
        lines += ["", "configurations with a failed or missing seed (not ranked):", b.failed.to_string(**fmt)]
    return "\n".join(lines)
