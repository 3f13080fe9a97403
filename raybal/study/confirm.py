"""``raybal confirm``: a study's winners re-measured on fresh seeds.

The configuration ``raybal best`` selects is the best of many on the seeds it was selected on, so its
search-time mean is biased upward: the winner's curse. A confirmation re-trains the top ``K``
configurations (ranked as ``raybal best`` ranks them, handed in by :mod:`raybal.analysis.confirmed`:
the study's objective, its constraints, only configurations whose every seed finished) and the study's
baseline with ``N`` seeds that no run of the results directory used, and records them in the same
tables with ``role = "confirm"``. Search-time
readers (``raybal best``'s selection, intervals and importance, the report's search figures) never read
those rows; ``raybal best`` reports them beside the search-time figures
(:mod:`raybal.analysis.confirmed`).

Each run re-trains the exact config a search run stored (``trials.parquet``'s ``config_json``) with
its new ``train.seed``. The runs are Ray Tune trials like a study's, without early stopping, in the
study's results directory: ``confirm.json`` (the plan, fixed by the first call: configurations and
seeds), ``tune-confirm/`` (Tune's state), ``slots-confirm/`` and trial folders under ``checkpoints/``.
Interrupted, the same command continues: finished runs are kept, unfinished ones resume from their
last checkpoint, none runs twice.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from raybal._atomic import atomic_write_json
from raybal.config import ConfigError
from raybal.results.tables import Results, ResultsError, load_results
from raybal.study.space import CONFIRM_RUN, STORED_CONFIG, Study, stored_study

PLAN = "confirm.json"
TUNE_DIR = "tune-confirm"
SLOTS = "slots-confirm"
SEED_OFFSET = 1000  # confirmation seeds start this far above the study's base seed (and skip any used one)


def _study(d: Path) -> Study:
    meta_path = d / "study.json"
    if not meta_path.is_file():
        raise ResultsError(f"{d}: no study.json: raybal confirm re-measures a study's results")
    return stored_study(meta_path)


Ranking = Callable[[Path, int], tuple[list[str], str, str]]  # (dir, k) -> (top k config ids, metric, mode)


def plan_confirmation(d: Path, study: Study, ranking: Ranking, top: int, seeds: int) -> dict[str, Any]:
    """The runs of a confirmation: the top ``top`` configurations of ``ranking`` (the baseline's left out:
    it is confirmed once, as the reference) and the baseline, each on ``seeds`` fresh seeds."""
    t = load_results(d).trials
    search = t[t["role"] != "confirm"]
    base_ids = list(dict.fromkeys(search.loc[search["role"] == "baseline", "config_id"].astype(str)))
    ids, metric, mode = ranking(d, top + len(base_ids))
    ranked = [c for c in ids if c not in base_ids][:top]
    picks = [(cid, rank + 1, "search") for rank, cid in enumerate(ranked)]
    picks += [(cid, 0, "baseline") for cid in base_ids[:1]]
    used = set(pd.to_numeric(t["train.seed"], errors="coerce").dropna().astype(int))
    fresh: list[int] = []
    s = int(study.base.train.seed) + SEED_OFFSET
    while len(fresh) < seeds:
        if s not in used:
            fresh.append(s)
        s += 1
    configs = []
    for cid, rank, role in picks:
        every = search[search["config_id"].astype(str) == cid]  # the config is the same whatever its status
        rows = every[every["status"] == "ok"]
        values = pd.to_numeric(rows[metric], errors="coerce").dropna()
        configs.append({"config_id": cid, "rank": rank, "role": role, "config_json": str(every["config_json"].iloc[0]),
                        "search_mean": float(values.mean()) if len(values) else math.nan,
                        "search_seeds": sorted(int(x) for x in pd.to_numeric(rows["train.seed"]))})
    return {"top": top, "seeds": fresh, "metric": metric, "mode": mode, "configs": configs, "status": "running"}


def _runs(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """One Tune trial's values per (configuration, seed)."""
    return [{STORED_CONFIG: c["config_json"], "train.seed": seed, "_replicate": j, "_role": "confirm",
             "_confirms": c["config_id"]}
            for c in plan["configs"] for j, seed in enumerate(plan["seeds"])]


def confirm_study(results_dir: str | Path, ranking: Ranking, *, top: int = 3, seeds: int = 5,
                  address: str | None = None, quiet: bool = False) -> Results:
    """Re-train the top ``top`` configurations of ``ranking`` (``raybal best``'s:
    :func:`raybal.analysis.confirm.confirm`) and the study's baseline on ``seeds`` fresh seeds, or
    continue such a confirmation; returns the results directory's tables."""
    if top < 1:
        raise ConfigError("--top", f"at least 1 configuration to confirm, got {top}")
    if seeds < 2:
        raise ConfigError("--seeds", f"at least 2 fresh seeds (an interval needs two), got {seeds}")
    d = Path(results_dir).resolve()
    study = _study(d)
    plan_path = d / PLAN
    if plan_path.is_file():
        try:
            plan = json.loads(plan_path.read_text())
            recorded = (int(plan["top"]), len(plan["seeds"]), plan["configs"])
        except (ValueError, KeyError, TypeError):
            raise ResultsError(f"{plan_path}: not a confirmation plan raybal wrote; remove it and {TUNE_DIR}/ "
                               "to start the confirmation again") from None
        if recorded[:2] != (top, seeds):
            raise ResultsError(f"{plan_path}: this study's confirmation is --top {plan['top']} --seeds "
                               f"{len(plan['seeds'])}; run it with those to continue it (or remove {plan_path.name}, "
                               f"{TUNE_DIR}/ and the confirm rows to start another)")
    else:
        if (d / TUNE_DIR).exists():
            raise ResultsError(f"{d / TUNE_DIR}: a confirmation's state without its {PLAN}; remove it to start again")
        plan = plan_confirmation(d, study, ranking, top, seeds)
        atomic_write_json(plan, plan_path)
    _run(study, d, plan, address, quiet)
    res = load_results(d)
    done = res.trials[(res.trials["role"] == "confirm") & (res.trials["status"] == "ok")]
    plan["status"] = "finished" if len(done) >= len(_runs(plan)) else "interrupted"
    atomic_write_json(plan, plan_path)
    return res


def _run(study: Study, d: Path, plan: dict[str, Any], address: str | None, quiet: bool) -> None:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from raybal.study.claims import release_unfinished_slots
    from raybal.study.driver import TrialFn, _concurrency, _init_ray, reconcile, run_lost_again
    from raybal.study.recorder import Recorder, make_callback

    runs = _runs(plan)
    recorder = Recorder(study, d, quiet=quiet, runs=len(runs))
    started = _init_ray(address)
    t0 = time.perf_counter()
    try:
        if study.base.train.workers > 1:
            resources: dict[str, float] = {"cpu": 0, "memory": 2**20}
        else:
            resources = {"cpu": study.settings.cpus_per_trial, **({"gpu": 1} if study.base.train.use_gpu else {})}
        trainable = tune.with_resources(TrialFn(study, d, slots=(SLOTS, len(runs)), retry_failed=True), resources)
        recorder.requeue = study.settings.trial_retries > 0  # before Tune pickles its callbacks
        if (d / TUNE_DIR).is_dir():
            from raybal.study.driver import _check_tune_state_is_yours

            _check_tune_state_is_yours(d / TUNE_DIR)
            release_unfinished_slots(d, SLOTS)
            # a run that failed is tried again from its last checkpoint: a confirmation wants every seed
            tuner = tune.Tuner.restore(str(d / TUNE_DIR), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True, restart_errored=False)
        else:
            shutil.rmtree(d / SLOTS, ignore_errors=True)  # a fresh confirmation: no slot of an earlier one
            tuner = tune.Tuner(
                trainable, param_space={CONFIRM_RUN: tune.grid_search(runs)},  # one trial per run, in order
                tune_config=tune.TuneConfig(scheduler=FIFOScheduler(), num_samples=1,
                                            max_concurrent_trials=_concurrency(study), reuse_actors=True),
                run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(d), verbose=0,
                                          callbacks=[make_callback(recorder)],
                                          failure_config=tune.FailureConfig(max_failures=study.settings.trial_retries)))
        grid = run_lost_again(study.settings.trial_retries, d, recorder, tuner.fit(), quiet, lambda: tune.Tuner.restore(
            str(d / TUNE_DIR), trainable=trainable, resume_unfinished=True, resume_errored=True, restart_errored=False))
        reconcile(study, d, recorder, grid, slots=SLOTS)
    finally:
        if not quiet:
            print(f"confirmation: {len(runs)} runs in {time.perf_counter() - t0:.0f} s", flush=True)
        if started:
            import ray

            ray.shutdown()
