"""Shared by the balancing benchmarks: run a named grid of configs into one results directory.

Each run is a trial of the directory (``trials.parquet`` etc. as in DESIGN.md §4) and is
written as soon as it finishes, so a second benchmark reading the same runs (the target
tracking and noise robustness tables share theirs) or a re-run after an interruption
trains only what is missing. A stored run is reused only when its stored config equals the requested one.

``jobs`` > 1 trains that many runs at once, each in its own process with (CPUs / jobs) torch
threads; the parent alone writes the results directory. The
small default models scale poorly across threads, so on 2 cores two 1-thread runs finish
sooner than one 2-thread run after another. Only *where* runs execute changes, never a config.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import pandas as pd

from raybal.config import RunConfig
from raybal.data.pipeline import usable_cpus
from raybal.results.tables import load_results, write_results
from raybal.training.loop import fit


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _fit(cfg: RunConfig, tid: str) -> tuple[object, float]:
    t0 = time.perf_counter()
    result = fit(cfg, trial_id=tid)
    return result, time.perf_counter() - t0


def default_jobs() -> int:
    """One run per 1-thread process on each core, at most 2 (memory and timing noise beyond)."""
    return max(1, min(2, usable_cpus()))


def run_grid(runs: dict[str, RunConfig], results_dir: str | Path, jobs: int = 1) -> pd.DataFrame:
    """Train every (trial_id -> config) not already stored; return the directory's trials table."""
    d = Path(results_dir)
    d.mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    if (d / "trials.parquet").is_file():
        t = load_results(d).trials
        for _, row in t[t["status"] == "ok"].iterrows():
            done[str(row["trial_id"])] = str(row["config_json"])
    todo = [(tid, cfg) for tid, cfg in runs.items() if done.get(tid) != cfg.to_json()]
    jobs = max(1, min(jobs, len(todo)))
    print(f"{len(runs) - len(todo)} of {len(runs)} runs already in {d}; training {len(todo)}"
          + (f", {jobs} at a time" if jobs > 1 else ""), file=sys.stderr)
    t_start = time.perf_counter()

    def report(i: int, tid: str, result, seconds: float) -> None:
        write_results(d, [result])
        metric = "miou" if "final.test_miou" in result.final else "accuracy"
        print(f"[{i}/{len(todo)}] {tid}: test {metric} {result.final.get(f'final.test_{metric}', float('nan')):.3f} "
              f"({seconds:.0f} s; {time.perf_counter() - t_start:.0f} s in all)", file=sys.stderr)

    if jobs == 1:
        for i, (tid, cfg) in enumerate(todo, 1):
            report(i, tid, *_fit(cfg, tid))
    elif todo:
        # A run that raises is reported and the others go on (what finished is written); the grid
        # raises at the end, naming them. Ctrl-C cancels what has not started and stops at once.
        failed: list[str] = []
        pool = ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_set_threads,
                                   initargs=(max(1, usable_cpus() // jobs),))
        try:
            pending = {pool.submit(_fit, cfg, tid): tid for tid, cfg in todo}
            i = 0
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    tid = pending.pop(fut)
                    i += 1
                    try:
                        result, seconds = fut.result()
                    except Exception as exc:  # noqa: BLE001 - reported, and raised once the grid is done
                        failed.append(tid)
                        print(f"[{i}/{len(todo)}] {tid}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
                        continue
                    report(i, tid, result, seconds)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(todo)} runs failed: {', '.join(failed)}")
    trials = load_results(d).trials
    return trials[trials["trial_id"].isin(list(runs))].reset_index(drop=True)


def mean_sd(values: pd.Series) -> str:
    return f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.3f}"
