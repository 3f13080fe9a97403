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

from raybal.constraint import Constraint
from raybal.records import target_columns
from raybal.results import ResultsError, load_results
from raybal.tasks import metric_of_columns

CONFIG_PREFIXES = ("data.", "model.", "balance.", "train.")


def infer_mode(metric: str) -> str:
    return "min" if any(w in metric for w in ("loss", "error")) else "max"


@dataclass
class Best:
    trial_id: str
    metric: str
    mode: str
    value: float
    target: dict[str, float] | None
    mu: dict[str, float]
    params: dict[str, Any]
    row: dict[str, Any]
    runners_up: pd.DataFrame
    pareto: pd.DataFrame | None = None
    constraints: list[str] = field(default_factory=list)
    candidates: int = 0

    def to_json(self) -> dict[str, Any]:
        out = {"trial_id": self.trial_id, "metric": self.metric, "mode": self.mode, "value": self.value,
               "target": self.target, "mu": self.mu, "params": self.params, "constraints": self.constraints,
               "candidates": self.candidates,
               "test": {k: _plain(v) for k, v in self.row.items() if k.startswith("final.test_")},
               "checkpoint": _plain(self.row.get("checkpoint")),
               "runners_up": json.loads(self.runners_up.to_json(orient="records"))}
        if self.pareto is not None:
            out["pareto"] = json.loads(self.pareto.to_json(orient="records"))
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
    """Rows not dominated on the objectives (mode 'max' or 'min' each)."""
    vals = df[[m for m, _ in objectives]].to_numpy(dtype=float).copy()
    for j, (_, mode) in enumerate(objectives):
        if mode == "min":
            vals[:, j] = -vals[:, j]
    keep = []
    for i in range(len(vals)):
        dominated = any((vals[k] >= vals[i]).all() and (vals[k] > vals[i]).any() for k in range(len(vals)) if k != i)
        keep.append(not dominated)
    return df[keep]


def best_trial(results_dir: str | Path, metric: str | None = None, mode: str | None = None,
               constraints: list[str] | None = None, top: int = 5) -> Best:
    """The best ``ok`` trial under ``metric`` (default: the study's objective) and the constraints."""
    res = load_results(results_dir)
    t = res.trials
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
    ok = t[(t["status"] == "ok") & pd.to_numeric(t[metric], errors="coerce").notna()]
    for c in cons:
        ok = ok[ok[c.metric].map(c.holds)]
    if ok.empty:
        raise ResultsError(f"no trial with status ok meets {', '.join(map(str, cons)) or 'the selection'} "
                           f"({len(t)} trials recorded)")
    ranked = ok.sort_values(metric, ascending=mode == "min", kind="stable")
    row = ranked.iloc[0].to_dict()
    mods = [c.split(".", 2)[2] for c in t.columns if c.startswith("final.mu.")]
    tcols = target_columns(t.columns)
    target = {m: float(row[tcols[m]]) for m in mods if m in tcols and pd.notna(row[tcols[m]])} or None
    searched = searched_columns(t, res.meta)
    show = ["trial_id", metric] + [c for c in searched if c != metric] + [f"final.mu.{m}" for m in mods]
    show += [c for c in ("final.test_accuracy", "final.test_miou") if c in t.columns]
    pareto = None
    objectives = res.meta.get("objectives", [])
    if len(objectives) > 1:
        objs = [(o["metric"], o["mode"]) for o in objectives if o["metric"] in ok.columns]
        cols = list(dict.fromkeys(["trial_id"] + [m for m, _ in objs] + searched))
        pareto = pareto_front(ok, objs)[cols].reset_index(drop=True)
    return Best(trial_id=str(row["trial_id"]), metric=metric, mode=mode, value=float(row[metric]), target=target,
                mu={m: float(row[f"final.mu.{m}"]) for m in mods if pd.notna(row.get(f"final.mu.{m}"))},
                params={c: _plain(row[c]) for c in searched}, row=row,
                runners_up=ranked[list(dict.fromkeys(show))].iloc[1:top + 1].reset_index(drop=True), pareto=pareto,
                constraints=[str(c) for c in cons], candidates=len(ok))


def best_target(results_dir: str | Path, metric: str | None = None, **kw: Any) -> dict[str, float] | None:
    """The best trial's target utilization (modality -> fraction), or None when it had none."""
    return best_trial(results_dir, metric, **kw).target


def format_best(b: Best) -> str:
    lines = [f"best trial {b.trial_id}: {b.metric} = {b.value:.4f} ({b.mode}; {b.candidates} candidate trials"
             + (f", constraints: {'; '.join(b.constraints)}" if b.constraints else "") + ")"]
    if b.target:
        lines.append("target utilization: " + "  ".join(f"{m} {v:.3f}" for m, v in b.target.items()))
    if b.mu:
        lines.append("achieved test MU:   " + "  ".join(f"{m} {v:.3f}" for m, v in b.mu.items()))
    met, err, tol = b.row.get("final.target_met"), b.row.get("final.target_error"), b.row.get("balance.tolerance")
    if isinstance(err, (int, float)) and err == err and met is not None and met == met:
        within = f" (tolerance {tol:g})" if isinstance(tol, (int, float)) and tol == tol else ""
        lines.append(f"target met on test: {'yes' if met else 'NO'}, error {err:.3f}{within}")
    for k, v in b.params.items():
        lines.append(f"  {k} = {v}")
    # the test metric and the methods' own test metrics; per-modality measures stay in the tables
    tests = {k: v for k, v in b.row.items() if k.startswith("final.test_") and k != "final.test_loss"
             and "." not in k[len("final."):] and isinstance(v, (int, float)) and v == v}
    if tests:
        lines.append("reported (not optimised): " + "  ".join(f"{k} {v:.4f}" for k, v in tests.items()))
    if not b.runners_up.empty:
        lines += ["", "runners-up:", b.runners_up.to_string(index=False, float_format=lambda v: f"{v:.4f}")]
    if b.pareto is not None:
        lines += ["", "Pareto set:", b.pareto.to_string(index=False, float_format=lambda v: f"{v:.4f}")]
    return "\n".join(lines)
