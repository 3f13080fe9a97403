"""Shared by the balancing benchmarks: run a named grid of configs into one results directory.

Each run is a trial of the directory (``trials.parquet`` etc. as in DESIGN.md §4) and is
written as soon as it finishes, so a second benchmark reading the same runs (the target
tracking and noise robustness tables share theirs) or a re-run after an interruption
trains only what is missing. A stored run is reused only when its stored config equals the requested one.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from raybal.config import RunConfig
from raybal.results import load_results, write_results
from raybal.train import fit


def run_grid(runs: dict[str, RunConfig], results_dir: str | Path) -> pd.DataFrame:
    """Train every (trial_id -> config) not already stored; return the directory's trials table."""
    d = Path(results_dir)
    d.mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    if (d / "trials.parquet").is_file():
        t = load_results(d).trials
        for _, row in t[t["status"] == "ok"].iterrows():
            done[str(row["trial_id"])] = str(row["config_json"])
    todo = [(tid, cfg) for tid, cfg in runs.items() if done.get(tid) != cfg.to_json()]
    print(f"{len(runs) - len(todo)} of {len(runs)} runs already in {d}; training {len(todo)}", file=sys.stderr)
    for i, (tid, cfg) in enumerate(todo, 1):
        t0 = time.perf_counter()
        result = fit(cfg, trial_id=tid)
        write_results(d, [result])
        metric = "miou" if "final.test_miou" in result.final else "accuracy"
        print(f"[{i}/{len(todo)}] {tid}: test {metric} {result.final.get(f'final.test_{metric}', float('nan')):.3f} "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    trials = load_results(d).trials
    return trials[trials["trial_id"].isin(list(runs))].reset_index(drop=True)


def mean_sd(values: pd.Series) -> str:
    return f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.3f}"
