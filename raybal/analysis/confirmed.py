"""What a confirmation says (``raybal confirm``, read by ``raybal best`` and the report).

A confirmation re-trains a study's top configurations and its baseline on fresh seeds
(:mod:`raybal.study.confirm`; rows with ``role = "confirm"``). Here, per confirmed configuration: its
search-time mean and interval (the seeds it was selected on), its confirmed mean and 95 % interval
(the fresh seeds), and the gap between them; for the search's pick, its paired difference to the
baseline on the fresh seeds (:func:`raybal.analysis.intervals.paired_difference`), and whether it is
still the best of the confirmed configurations. The gap of the pick is the winner's curse, measured:
a search-time mean selected as the best of many is biased toward the lucky side.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from raybal.analysis.intervals import Comparison, Interval, metric_interval, paired_difference

PLAN = "confirm.json"


@dataclass
class Confirmed:
    metric: str
    mode: str
    pick: str  # the search's best configuration
    seeds: list[int]  # the confirmation's seeds (planned)
    table: pd.DataFrame  # one row per confirmed configuration (see :func:`confirmed`)
    interval: Interval | None  # the pick's confirmed interval
    search_interval: Interval | None  # the pick's search-time interval
    vs_baseline: Comparison | None = None  # paired on the confirmation's seeds
    best_confirmed: str | None = None  # the confirmed configuration with the best confirmed mean

    @property
    def gap(self) -> float:
        """The pick's search-time mean minus its confirmed mean (the winner's curse: > 0 when maximising)."""
        if self.interval is None or self.search_interval is None:
            return math.nan
        return self.search_interval.mean - self.interval.mean

    def sentences(self) -> list[str]:
        out = []
        planned = len(self.seeds)
        if self.interval is None:
            if self.pick not in set(self.table["config_id"]):
                return [f"the best configuration under this selection ({self.pick}) is not one the recorded "
                        f"confirmation re-trains ({', '.join(self.table['config_id'])}); see its table below"]
            return [f"confirmation planned on {planned} fresh seeds; no confirmed run of the best configuration "
                    "has finished yet (run raybal confirm again to continue it)"]
        n = self.interval.n
        so_far = "" if n >= planned else f" ({n} of {planned} so far)"
        worse = "higher" if self.gap > 0 else "lower"
        out.append(f"confirmed on {n} fresh seeds{so_far}: {self.metric} = {self.interval.format()}; at search time "
                   f"{self.search_interval.format() if self.search_interval else 'n/a'}: the search-time mean was "
                   f"{abs(self.gap):.4f} {worse} (the winner's curse, measured)")
        if self.vs_baseline is not None:
            out.append("on the confirmation's seeds: " + self.vs_baseline.sentence(self.metric))
        k = int((self.table["role"] == "search").sum())
        if self.best_confirmed is not None and k > 1:
            row = self.table.set_index("config_id").loc[self.best_confirmed]
            same = self.best_confirmed == self.pick
            out.append(f"of the {k} confirmed configurations, {self.best_confirmed} (search rank {int(row['rank'])}) "
                       f"has the best confirmed mean ({row['confirmed']:.4f})"
                       + (": the search's pick holds" if same else ": not the search's pick"))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "seeds": self.seeds, "pick": self.pick,
                "gap": None if math.isnan(self.gap) else self.gap,
                "interval": self.interval.to_json() if self.interval else None,
                "search_interval": self.search_interval.to_json() if self.search_interval else None,
                "vs_baseline": self.vs_baseline.to_json(self.metric) if self.vs_baseline else None,
                "best_confirmed": self.best_confirmed, "sentences": self.sentences(),
                "table": json.loads(self.table.to_json(orient="records"))}  # NaN -> null


def _values(rows: pd.DataFrame, metric: str) -> dict[int, float]:
    ok = rows[(rows["status"] == "ok") & pd.to_numeric(rows[metric], errors="coerce").notna()]
    return {int(s): float(v) for s, v in zip(pd.to_numeric(ok["train.seed"]), pd.to_numeric(ok[metric]), strict=True)}


def confirmed(results_dir: str | Path, trials: pd.DataFrame, configs: pd.DataFrame, pick: str, metric: str,
              mode: str) -> Confirmed | None:
    """The confirmation of ``results_dir`` (None when it has none). ``trials``: every row of
    ``trials.parquet``; ``configs``: the search's configuration table (``raybal.analysis.best.config_table``)
    under ``metric``."""
    plan_path = Path(results_dir) / PLAN
    plan = json.loads(plan_path.read_text()) if plan_path.is_file() else None
    conf = trials[trials["role"] == "confirm"] if "role" in trials else trials[:0]
    if plan is None and conf.empty:
        return None
    if metric not in trials:
        return None
    planned = {c["config_id"]: c for c in (plan or {}).get("configs", [])}
    ids = list(dict.fromkeys([*planned, *conf["config_id"].astype(str)]))
    search = configs.set_index(configs["config_id"].astype(str))
    rows, values = [], {}
    for cid in ids:
        v = _values(conf[conf["config_id"].astype(str) == cid], metric)
        values[cid] = v
        iv = metric_interval(list(v.values()), metric) if v else None
        s = search.loc[cid] if cid in search.index else None
        role = planned.get(cid, {}).get("role") or ("baseline" if s is not None and s["role"] == "baseline"
                                                      else "search")
        rows.append({"config_id": cid, "role": role, "rank": planned.get(cid, {}).get("rank", 0),
                     "search": float(s[metric]) if s is not None else math.nan,
                     "search.low": float(s[f"{metric}.low"]) if s is not None else math.nan,
                     "search.high": float(s[f"{metric}.high"]) if s is not None else math.nan,
                     "n_search": int(s["n_ok"]) if s is not None else 0,
                     "confirmed": iv.mean if iv else math.nan, "confirmed.low": iv.low if iv else math.nan,
                     "confirmed.high": iv.high if iv else math.nan, "n_confirmed": len(v)})
    table = pd.DataFrame(rows)
    table["gap"] = table["search"] - table["confirmed"]
    pv = values.get(pick, {})
    interval = metric_interval(list(pv.values()), metric) if pv else None
    s = search.loc[pick] if pick in search.index else None
    search_iv = metric_interval(list(s["_values"].values()), metric) if s is not None else None
    vs_base = None
    base = table[table["role"] == "baseline"]
    if pv and not base.empty and values.get(base["config_id"].iloc[0]) and base["config_id"].iloc[0] != pick:
        bid = str(base["config_id"].iloc[0])
        diff = paired_difference(pv, values[bid])
        base_method = trials.loc[trials["config_id"].astype(str) == bid, "balance.method"].iloc[0]
        vs_base = Comparison(f"the baseline ({base_method})", bid, diff, diff.verdict(mode))
    done = table[(table["role"] == "search") & table["confirmed"].notna()]
    best_confirmed = None
    if not done.empty:
        best_confirmed = str(done.sort_values("confirmed", ascending=mode == "min", kind="stable")["config_id"].iloc[0])
    return Confirmed(metric, mode, pick, list((plan or {}).get("seeds", sorted({s for v in values.values()
                                                                                    for s in v}))),
                     table.sort_values(["role", "rank"], ascending=[False, True]).reset_index(drop=True),
                     interval, search_iv, vs_base, best_confirmed)
