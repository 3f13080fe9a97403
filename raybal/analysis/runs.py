"""The runs of a results table: one row per (configuration, seed), and a short label per trial.

Every reader of a study's trials (``raybal best``, the figures, the utilization effect) starts
here: a study may hold a configuration's seed twice (a row that reused another's result beside the
one that trained it) and marks the baseline's configuration by its role.
"""

from __future__ import annotations

import pandas as pd

from raybal.results.schema import target_columns


def runs(t: pd.DataFrame) -> pd.DataFrame:
    """The search's trials with the replicate bookkeeping every reader needs, one row per (configuration,
    seed): a row that reused another's result (``final.reused_from``) gives way to a trained one. A
    confirmation's runs (``role = "confirm"``, ``raybal confirm``) are left out: what was selected, and
    the figures of the search, stand on the search's seeds (:mod:`raybal.analysis.confirmed` reads them)."""
    t = t[t["role"] != "confirm"].copy() if "role" in t else t.copy()
    t["config_id"] = t["config_id"].astype(str)
    t["_seed"] = pd.to_numeric(t["train.seed"], errors="coerce").fillna(0).astype(int) if "train.seed" in t else 0
    reused = t["final.reused_from"].notna() if "final.reused_from" in t else False
    t["_rank"] = (t["status"] != "ok").astype(int) * 2 + pd.Series(reused, index=t.index).astype(int)
    t = t.sort_values(["config_id", "_seed", "_rank"], kind="stable")
    baseline_ids = set(t.loc[t["role"] == "baseline", "config_id"])
    t = t.drop_duplicates(["config_id", "_seed"])
    t.loc[t["config_id"].isin(baseline_ids), "role"] = "baseline"
    return t.sort_values(["config_id", "replicate"], kind="stable").drop(columns="_rank")


GEOMETRIC = ("data.augment.flip", "data.augment.rot90", "data.augment.crop", "data.augment.jitter")


def trial_labels(trials: pd.DataFrame) -> pd.Series:
    """A short label per trial: the method, with its target when it has one (e.g. "<method> eo=0.75"), and
    its training augmentation when it has one (corruptions and noise always, e.g. "vanilla +noise eo 0.1";
    flips, rotations, crops and jitter where the trials differ in them): runs that differ only in how they
    were trained are not one curve."""
    tcols = sorted(target_columns(trials.columns).items())
    aug = [c for c in trials.columns if c.startswith(("data.augment.noise.", "data.augment.corruptions."))]
    varied = [c for c in trials.columns if c in GEOMETRIC and trials[c].nunique(dropna=False) > 1]

    def augmentation(r: pd.Series) -> str:
        parts = []
        for c in aug:
            v = r[c]
            if pd.notna(v) and v:
                rest = c.split(".")[3:]  # noise.<modality> -> [modality]; corruptions.<modality>.<name> -> [m, name]
                parts.append(f"noise {rest[0]} {float(v):g}" if c.startswith("data.augment.noise.")
                             else f"{rest[1]} {rest[0]} p={float(v):g}")
        parts += [f"{c.rsplit('.', 1)[1]}={r[c]}" for c in varied if pd.notna(r[c])]
        return "".join(f" +{p}" for p in parts)

    def one(r: pd.Series) -> str:
        method = str(r.get("balance.method", "run"))
        given = [(m, c) for m, c in tcols if pd.notna(r[c])]
        if given:
            m, c = given[0]
            method = f"{method} {m}={float(r[c]):.2f}"
        return method + augmentation(r)
    return trials.set_index("trial_id").apply(one, axis=1) if not trials.empty else pd.Series(dtype=str)
