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
baseline, so they live in ``robustness_summary.parquet`` only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

ALL = "all"
COLUMNS = ["trial_id", "split", "modality", "corruption", "levels", "clean", "mra", "rel_robustness", "ce",
           "effective_robustness"]


def curve_metrics(levels: Sequence[float], values: Sequence[float], clean: float) -> dict[str, float]:
    """mRA and relative robustness of one metric-vs-level curve (module docstring)."""
    pts = sorted(zip(map(float, levels), map(float, values)))
    if not pts or not clean or clean != clean:
        return {"mra": math.nan, "rel_robustness": math.nan}
    hit = [v for x, v in pts if x > 0] or [v for _, v in pts]  # a level 0 in the sweep is the clean point
    mra = sum(hit) / len(hit) / clean
    if pts[0][0] > 0:
        pts = [(0.0, clean), *pts]
    top = pts[-1][0]
    if top <= 0:  # a single level 0: the clean point itself
        return {"mra": mra, "rel_robustness": pts[-1][1] / clean}
    auc = sum((x1 - x0) / top * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts, pts[1:]))
    return {"mra": mra, "rel_robustness": auc / clean}


def corruption_error(levels: Sequence[float], values: Sequence[float], baseline: Sequence[float]) -> float:
    """ImageNet-C's CE: the summed errors (1 - metric) over the corrupted levels (> 0), relative to the
    baseline's."""
    keep = [i for i, x in enumerate(levels) if x > 0] or list(range(len(levels)))
    base = sum(1.0 - baseline[i] for i in keep)
    return sum(1.0 - values[i] for i in keep) / base if base > 0 else math.nan


def run_columns(rows: Sequence[Mapping[str, Any]], metric: str, clean: Mapping[str, float]) -> dict[str, float]:
    """``robust.<split>_mra`` and ``robust.<split>_rel_robustness`` of one run's sweep rows."""
    out: dict[str, float] = {}
    for split in sorted({r["split"] for r in rows}):
        curves = _curves([r for r in rows if r["split"] == split], metric)
        ms = [curve_metrics(lv, vs, clean.get(split, math.nan)) for lv, vs in curves.values()]
        for k in ("mra", "rel_robustness"):
            vals = [m[k] for m in ms if m[k] == m[k]]
            out[f"robust.{split}_{k}"] = sum(vals) / len(vals) if vals else math.nan
    return out


def _curves(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    curves: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for r in sorted(rows, key=lambda r: float(r["level"])):
        lv, vs = curves.setdefault((r["modality"], r["corruption"]), ([], []))
        lv.append(float(r["level"]))
        vs.append(float(r[metric]))
    return curves


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

    def curves_of(tid: str, split: str) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
        return _curves([r for r in rows_by.get(tid, []) if r["split"] == split], metric)

    out: list[dict[str, Any]] = []
    for tid in ok.index:
        if tid not in rows_by:
            continue
        paired = baselines(tid)
        for split in sorted({r["split"] for r in rows_by[tid]}):
            clean = float(t.at[tid, f"final.{split}_{metric}"]) if f"final.{split}_{metric}" in t else math.nan
            per: list[dict[str, Any]] = []
            for (mod, cor), (lv, vs) in curves_of(tid, split).items():
                cm = curve_metrics(lv, vs, clean)
                ce = er = math.nan
                base = [curves_of(b, split).get((mod, cor)) for b in paired]
                base = [c for c in base if c is not None and c[0] == lv]
                if base and not is_base[tid]:
                    bvals = [sum(c[1][i] for c in base) / len(base) for i in range(len(lv))]
                    bclean = [float(t.at[b, f"final.{split}_{metric}"]) for b in paired]
                    bm = curve_metrics(lv, bvals, sum(bclean) / len(bclean))
                    ce = corruption_error(lv, vs, bvals)
                    er = clean * (cm["mra"] - bm["mra"])
                per.append({"trial_id": tid, "split": split, "modality": mod, "corruption": cor, "levels": len(lv),
                            "clean": clean, **cm, "ce": ce, "effective_robustness": er})
            if per:
                out += per
                mean = {k: _nanmean([p[k] for p in per]) for k in ("mra", "rel_robustness", "ce",
                                                                    "effective_robustness")}
                out.append({"trial_id": tid, "split": split, "modality": ALL, "corruption": ALL,
                            "levels": sum(p["levels"] for p in per), "clean": clean, **mean})
    return pd.DataFrame(out, columns=COLUMNS)


def _nanmean(vals: Sequence[float]) -> float:
    keep = [v for v in vals if v == v]
    return sum(keep) / len(keep) if keep else math.nan
