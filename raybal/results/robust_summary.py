"""Robustness summary metrics: what reviewers of multimodal robustness work report, from the sweep's rows.

For one run, split, corrupted modality and corruption, with clean metric A_0 (the run's
``final.<split>_<metric>``) and the metric A_l at each level l of the sweep (levels sorted; the clean
point (0, A_0) is put first when the sweep has no level 0):

* **RA** and **mRA** (relative accuracy; Robo3D / MultiCorrupt): RA_l = A_l / A_0, mRA the mean over
  the sweep's corrupted levels (a level 0 in the sweep is the clean point, left out);
* **relative robustness** (MultiBench, Liang et al. 2021): the area under the metric-vs-level curve,
  levels scaled to [0, 1] by the largest, trapezoids, divided by A_0: 1 when nothing is lost;
* **CE** (corruption error; ImageNet-C, Hendrycks & Dietterich 2019): sum_l (1 - A_l) / sum_l
  (1 - B_l) over the corrupted levels, B the study's baseline run with the same seed (the mean of the
  baseline's runs when none has it); < 1 is more robust than the baseline;
* **effective robustness** (Taori et al. 2020, as MultiBench uses it): the metric under corruption
  beyond what the baseline's curve predicts at this run's clean metric, A_0 (mRA - mRA_baseline):
  > 0 is robustness the clean metric does not explain.

Per run and split, one more row with ``modality = corruption = "all"``: the means over the run's
curves (mCE is the mean CE). ``robust.<split>_mra`` and ``robust.<split>_rel_robustness`` (the all-row's
values) are trial columns too, so a study can optimise them; CE and effective robustness need the
baseline, so they live in ``robustness_summary.parquet``, which ``raybal best`` reads as
``robust.<split>_mce`` and ``robust.<split>_effective_robustness`` (:func:`trial_columns`).

Each statistic has a 95 % bootstrap interval over the split's samples, ``<stat>_lo`` / ``<stat>_hi``
(:mod:`raybal.measure.bootstrap`): the statistic computed on each of the sweep's B resamples (every level's
metric and the clean metric on the same resample; the baseline's on that same resample for CE and
effective robustness), and the 2.5th / 97.5th percentiles of the B values. The all-row's resample b is
the mean over the curves on resample b. NaN where the sweep drew no resamples (``robustness.bootstrap =
0``) or the baseline's resamples differ (another split size or ``robustness.seed``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from raybal.measure.bootstrap import interval

ALL = "all"
STATS = ("clean", "mra", "rel_robustness", "ce", "effective_robustness")
COLUMNS = ["trial_id", "split", "modality", "corruption", "levels", *STATS,
           *(f"{k}_{end}" for k in STATS for end in ("lo", "hi"))]


def curve_metrics(levels: Sequence[float], values: Any, clean: Any) -> dict[str, Any]:
    """mRA and relative robustness of one metric-vs-level curve (module docstring). ``values`` may hold one
    column per bootstrap resample, (levels, B), with ``clean`` (B,): the metrics are then (B,) arrays."""
    lv = np.asarray(levels, dtype=float)
    order = np.argsort(lv, kind="stable")
    lv, v = lv[order], np.asarray(values, dtype=float)[order]
    c = np.asarray(clean, dtype=float)
    scalar = v.ndim == 1
    if not len(lv):
        return {"mra": math.nan, "rel_robustness": math.nan}
    hit = lv > 0 if (lv > 0).any() else np.ones(len(lv), dtype=bool)  # a level 0 in the sweep is the clean point
    bad = (c == 0) | np.isnan(c)
    safe = np.where(bad, 1.0, c)
    mra = v[hit].mean(axis=0) / safe
    if lv[0] > 0:
        lv, v = np.r_[0.0, lv], np.concatenate([np.broadcast_to(c, v.shape[1:])[None], v])
    top = lv[-1]
    if top <= 0:  # a single level 0: the clean point itself
        rel = v[-1] / safe
    else:
        widths = (np.diff(lv) / top).reshape(-1, *([1] * (v.ndim - 1)))
        rel = (widths * (v[1:] + v[:-1]) / 2).sum(axis=0) / safe
    mra, rel = np.where(bad, math.nan, mra), np.where(bad, math.nan, rel)
    if scalar:
        return {"mra": float(mra), "rel_robustness": float(rel)}
    return {"mra": mra, "rel_robustness": rel}


def corruption_error(levels: Sequence[float], values: Any, baseline: Any) -> Any:
    """ImageNet-C's CE: the summed errors (1 - metric) over the corrupted levels (> 0), relative to the
    baseline's (``values`` and ``baseline`` may be (levels, B), one column per resample)."""
    lv = np.asarray(levels, dtype=float)
    keep = lv > 0 if (lv > 0).any() else np.ones(len(lv), dtype=bool)
    v, b = np.asarray(values, dtype=float)[keep], np.asarray(baseline, dtype=float)[keep]
    base = (1.0 - b).sum(axis=0)
    ce = np.where(base > 0, (1.0 - v).sum(axis=0) / np.where(base > 0, base, 1.0), math.nan)
    return float(ce) if ce.ndim == 0 else ce


def run_columns(rows: Sequence[Mapping[str, Any]], metric: str, clean: Mapping[str, float]) -> dict[str, float]:
    """``robust.<split>_mra`` and ``robust.<split>_rel_robustness`` of one run's sweep rows."""
    out: dict[str, float] = {}
    for split in sorted({r["split"] for r in rows}):
        curves = _curves([r for r in rows if r["split"] == split], metric)
        ms = [curve_metrics(c.levels, c.values, clean.get(split, math.nan)) for c in curves.values()]
        for k in ("mra", "rel_robustness"):
            vals = [m[k] for m in ms if m[k] == m[k]]
            out[f"robust.{split}_{k}"] = sum(vals) / len(vals) if vals else math.nan
    return out


def _curves(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[tuple[str, str], Curve]:
    curves: dict[tuple[str, str], Curve] = {}
    for r in sorted(rows, key=lambda r: float(r["level"])):
        c = curves.setdefault((r["modality"], r["corruption"]), Curve([], [], [], None, r.get("resamples")))
        c.levels.append(float(r["level"]))
        c.values.append(float(r[metric]))
        c.boots.append(_boot(r.get("boot")))
        if c.clean_boot is None:
            c.clean_boot = _boot(r.get("clean_boot"))
    return curves


def _boot(v: Any) -> np.ndarray | None:
    """A row's bootstrap values as an array (None when the sweep drew none)."""
    if v is None or (isinstance(v, float) and v != v):
        return None
    a = np.asarray(v, dtype=float)
    return a if a.ndim == 1 and len(a) else None


@dataclass
class Curve:
    """One metric-vs-level curve of a run and split, with its bootstrap values when the sweep drew them."""

    levels: list[float]
    values: list[float]
    boots: list[np.ndarray | None]  # per level: the metric on each resample
    clean_boot: np.ndarray | None  # the clean metric on each resample
    resamples: str | None = None  # what the resamples were drawn from: curves pair only under the same

    def resampled(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(levels x B values, B clean values), or None without a complete set of equal-length resamples."""
        if self.clean_boot is None or any(b is None or len(b) != len(self.clean_boot) for b in self.boots):
            return None
        return np.stack(self.boots), self.clean_boot


def summary_table(trials: pd.DataFrame, robustness: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``robustness_summary.parquet``: one row per run x split x corrupted modality x corruption, and an
    ``all`` row per run and split, with the baseline paired by seed (``replicate``)."""
    if robustness.empty or trials.empty:
        return pd.DataFrame(columns=COLUMNS)
    t = trials.set_index(trials["trial_id"].astype(str))
    ok = t[t["status"] == "ok"] if "status" in t else t
    role = ok["role"] if "role" in ok else pd.Series("search", index=ok.index)
    cfg = ok["config_id"].astype(str) if "config_id" in ok else pd.Series("", index=ok.index)
    base_cfgs = set(cfg[role == "baseline"]) if "config_id" in ok else set()
    # the baseline's runs: its search seeds, and (raybal confirm) its confirmation's fresh seeds
    is_base = cfg.isin(base_cfgs) if base_cfgs else role == "baseline"
    confirm = role == "confirm"
    seed = ok["train.seed"] if "train.seed" in ok else (ok["replicate"] if "replicate" in ok
                                                        else pd.Series(0, index=ok.index))

    def baselines(tid: str) -> list[str]:
        """The baseline runs a run is compared with: of its own kind (search or confirmation), the one of
        its seed when there is one, else all of them."""
        group = [b for b in ok.index[is_base] if confirm[b] == confirm[tid]]
        return [b for b in group if seed.get(b) == seed.get(tid)] or group

    rows_by = {tid: g.to_dict("records") for tid, g in robustness.groupby(robustness["trial_id"].astype(str))}

    built: dict[tuple[str, str], dict[tuple[str, str], Curve]] = {}

    def curves_of(tid: str, split: str) -> dict[tuple[str, str], Curve]:
        """A run's curves on a split, built once (a baseline's are read for every curve of every run)."""
        if (tid, split) not in built:
            built[tid, split] = _curves([r for r in rows_by.get(tid, []) if r["split"] == split], metric)
        return built[tid, split]

    out: list[dict[str, Any]] = []
    for tid in ok.index:
        if tid not in rows_by:
            continue
        paired = baselines(tid)
        for split in sorted({r["split"] for r in rows_by[tid]}):
            clean = float(t.at[tid, f"final.{split}_{metric}"]) if f"final.{split}_{metric}" in t else math.nan
            per: list[dict[str, Any]] = []
            boots: list[dict[str, np.ndarray]] = []  # per curve: each statistic on each resample
            for (mod, cor), cv in curves_of(tid, split).items():
                lv, vs = cv.levels, cv.values
                cm = curve_metrics(lv, vs, clean)
                ce = er = math.nan
                rs = cv.resampled()
                boot: dict[str, np.ndarray] = {}
                if rs is not None:
                    bm = curve_metrics(lv, *rs)
                    boot = {"clean": rs[1], "mra": bm["mra"], "rel_robustness": bm["rel_robustness"]}
                base = [curves_of(b, split).get((mod, cor)) for b in paired]
                base = [c for c in base if c is not None and c.levels == lv]
                if base and not is_base[tid]:
                    bvals = np.mean([c.values for c in base], axis=0)
                    bclean = [float(t.at[b, f"final.{split}_{metric}"]) for b in paired]
                    bm = curve_metrics(lv, bvals, sum(bclean) / len(bclean))
                    ce = corruption_error(lv, vs, bvals)
                    er = clean * (cm["mra"] - bm["mra"])
                    brs = [c.resampled() for c in base]
                    if rs is not None and all(x is not None and c.resamples == cv.resamples
                                              for x, c in zip(brs, base)):
                        bv, bc = np.mean([x[0] for x in brs], axis=0), np.mean([x[1] for x in brs], axis=0)
                        boot["ce"] = corruption_error(lv, rs[0], bv)
                        boot["effective_robustness"] = rs[1] * (boot["mra"] - curve_metrics(lv, bv, bc)["mra"])
                point = {"clean": clean, **cm, "ce": ce, "effective_robustness": er}
                per.append({"trial_id": tid, "split": split, "modality": mod, "corruption": cor, "levels": len(lv),
                            **point, **_intervals(point, boot)})
                boots.append(boot)
            if per:
                out += per
                mean = {k: _nanmean([p[k] for p in per]) for k in STATS[1:]}
                point = {"clean": clean, **mean}
                # the all-row's resamples: the mean over the curves, resample by resample (when every curve
                # that has the statistic has its resamples)
                with warnings.catch_warnings():  # a resample where every curve's value is NaN stays NaN
                    warnings.simplefilter("ignore", RuntimeWarning)
                    boot = {k: np.nanmean([b[k] for b in boots if k in b], axis=0) for k in STATS
                            if any(k in b for b in boots) and all(k in b for b, p in zip(boots, per) if p[k] == p[k])}
                out.append({"trial_id": tid, "split": split, "modality": ALL, "corruption": ALL,
                            "levels": sum(p["levels"] for p in per), **point, **_intervals(point, boot)})
    return pd.DataFrame(out, columns=COLUMNS)


def _intervals(point: Mapping[str, float], boot: Mapping[str, np.ndarray]) -> dict[str, float]:
    """``<stat>_lo`` / ``<stat>_hi``: the 95 % bootstrap interval of each statistic with a point value."""
    out: dict[str, float] = {}
    for k in STATS:
        lo, hi = interval(boot[k]) if k in boot and point[k] == point[k] else (math.nan, math.nan)
        out[f"{k}_lo"], out[f"{k}_hi"] = lo, hi
    return out


def _nanmean(vals: Sequence[float]) -> float:
    keep = [v for v in vals if v == v]
    return sum(keep) / len(keep) if keep else math.nan


def trial_columns(summary: pd.DataFrame) -> pd.DataFrame:
    """Per run (``trial_id`` the index), its all-rows' CE and effective robustness as trial-style columns,
    ``robust.<split>_mce`` and ``robust.<split>_effective_robustness``: ``raybal best`` ranks and
    constrains on them. A study cannot optimise them: they need the baseline's run of the same seed,
    known only once the directory's tables are written."""
    rows = summary[summary["modality"] == ALL] if not summary.empty else summary
    if rows.empty:
        return pd.DataFrame(index=pd.Index([], name="trial_id"))
    wide = rows.assign(trial_id=rows["trial_id"].astype(str)).pivot(
        index="trial_id", columns="split", values=["ce", "effective_robustness"])
    wide.columns = [f"robust.{split}_{'mce' if stat == 'ce' else stat}" for stat, split in wide.columns]
    return wide
