"""One run from a config to a results directory (what ``raybal train`` does).

Checks that the directory is writable and does not belong to another run *before* any
work starts, resumes from the run's last checkpoint when the same config is run again into
the same directory, and writes the Parquet tables plus ``run.json`` at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from raybal.config import RunConfig
from raybal.results import ResultsError, atomic_write_json, check_writable, environment, write_results
from raybal.train import Progress, RunResult, failed_result, fit

RUN_TRIAL_ID = "run"


def default_results_dir(cfg: RunConfig) -> Path:
    return Path("results") / f"train-{cfg.data.name}-{cfg.balance.method}-{cfg.digest()[:8]}"


def prepare_dir(results_dir: str | Path, cfg: RunConfig) -> Path:
    d = check_writable(results_dir)
    meta = d / "run.json"
    if (d / "study.json").is_file():
        raise ResultsError(f"{d} holds a study's results; pick another --results for a single run")
    if meta.is_file():
        try:
            old = json.loads(meta.read_text())
        except json.JSONDecodeError:
            raise ResultsError(f"{meta}: not valid JSON; pick another --results") from None
        if old.get("config_digest") != cfg.digest():
            raise ResultsError(f"{d} holds a different run (config {old.get('config_digest')}); "
                               "pick another --results or delete it")
    return d


def run_meta(cfg: RunConfig, status: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "kind": "run", "status": status, "config": cfg.to_dict(), "config_digest": cfg.digest(),
        "seed": cfg.train.seed, "versions": environment(),
        "best": {"metric": f"final.val_{'accuracy' if cfg.data.params.task == 'classification' else 'miou'}",
                 "mode": "max", "selection": "validation split; test numbers are reported, never optimised"},
        **(extra or {}),
    }


def train_to_dir(cfg: RunConfig, results_dir: str | Path, *, progress: Progress | None = None,
                 address: str | None = None, quiet: bool = False) -> RunResult:
    """Run ``fit`` and record it; a failure is recorded as ``status = failed`` and re-raised.

    ``train.workers > 1`` or an ``address`` runs it data-parallel on Ray Train
    (:mod:`raybal.distributed`); otherwise plain ``fit()`` in this process, no Ray at all.
    """
    from raybal.data import load_data

    data = load_data(cfg.data)  # bad data (missing file, unpaired chip, ...) fails here: nothing written yet
    d = prepare_dir(results_dir, cfg)
    atomic_write_json(run_meta(cfg, "running"), d / "run.json")
    t0 = time.perf_counter()
    try:
        ckdir = d / "checkpoints" / RUN_TRIAL_ID
        if cfg.train.workers > 1 or address:
            from raybal.distributed import fit_distributed

            result = fit_distributed(cfg, trial_id=RUN_TRIAL_ID, checkpoint_dir=ckdir, storage_path=d / "ray",
                                     address=address, quiet=quiet)
        else:
            result = fit(cfg, trial_id=RUN_TRIAL_ID, checkpoint_dir=ckdir, progress=progress, data=data)
    except KeyboardInterrupt:
        atomic_write_json(run_meta(cfg, "interrupted"), d / "run.json")
        raise
    except Exception as exc:
        failed = failed_result(cfg, RUN_TRIAL_ID, exc, time.perf_counter() - t0)
        write_results(d, [failed])
        atomic_write_json(run_meta(cfg, "failed", {"error": failed.error}), d / "run.json")
        raise
    write_results(d, [result])
    atomic_write_json(run_meta(cfg, "ok", {"wall_s": result.wall_s}), d / "run.json")
    return result
