"""One run from a config to a results directory (``raybal train`` and ``raybal robustness``).

Checks that the directory is writable and does not belong to another run *before* any
work starts, resumes from the run's last checkpoint when the same config is run again into
the same directory, and writes the Parquet tables plus ``run.json`` at the end. Both commands
go through :func:`prepare_dir` (the guard) and :func:`record_run` (the writer).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from raybal._atomic import atomic_write_json
from raybal.config import RunConfig
from raybal.config.tasks import metric_name
from raybal.data import load_data
from raybal.measure.robustness import check_corruptions, sweep
from raybal.resolve import with_overrides
from raybal.results.schema import RunResult, failed_result, robustness_rows, robustness_summary
from raybal.results.tables import FORMAT_VERSION, ResultsError, check_writable, environment, read_meta, write_results
from raybal.training import checkpoint
from raybal.training.loop import Progress, build_for, check_pretrained, fit

RUN_TRIAL_ID = "run"


def default_results_dir(cfg: RunConfig) -> Path:
    return Path("results") / f"train-{cfg.data.name}-{cfg.balance.method}-{cfg.digest()[:8]}"


def prepare_dir(results_dir: str | Path, cfg: RunConfig, kind: str = "run") -> Path:
    """The results directory for a ``kind`` record of ``cfg``: writable, and not holding a study,
    another kind of record or another config (resource knobs aside: they do not change the digest)."""
    d = check_writable(results_dir)
    meta = d / "run.json"
    if (d / "study.json").is_file():
        raise ResultsError(f"{d} holds a study's results; pick another --results for a single run")
    if meta.is_file():
        old = read_meta(meta)
        if old.get("kind") != kind:
            raise ResultsError(f"{d} holds a {old.get('kind')} record, not a {kind}; pick another --results")
        if old.get("config_digest") != cfg.digest():
            raise ResultsError(f"{d} holds a different run (config {old.get('config_digest')}); "
                               "pick another --results or delete it")
    return d


def run_meta(cfg: RunConfig, status: str, kind: str = "run", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION, "kind": kind, "status": status, "config": cfg.to_dict(),
        "config_digest": cfg.digest(),
        "seed": cfg.train.seed, "versions": environment(),
        "best": {"metric": f"final.val_{metric_name(cfg.data.params.task)}",
                 "mode": "max", "selection": "validation split; test numbers are reported, never optimised"},
        **(extra or {}),
    }


def record_run(d: Path, result: RunResult, kind: str = "run", extra: dict[str, Any] | None = None) -> None:
    """Write ``result`` into the tables of ``d`` and its ``run.json`` (status from the result)."""
    write_results(d, [result])
    info = {"error": result.error} if result.status == "failed" else {"wall_s": result.wall_s}
    atomic_write_json(run_meta(result.config, result.status, kind, {**info, **(extra or {})}), d / "run.json")


def train_to_dir(cfg: RunConfig, results_dir: str | Path, *, progress: Progress | None = None,
                 address: str | None = None, quiet: bool = False, mlflow: str | None = None) -> RunResult:
    """Run ``fit`` and record it; a failure is recorded as ``status = failed`` and re-raised.

    ``train.workers > 1`` or an ``address`` runs it data-parallel on Ray Train
    (:mod:`raybal.training.distributed`); otherwise plain ``fit()`` in this process, no Ray at all.
    ``progress`` receives per-epoch events (in rank 0's worker when distributed: it must pickle);
    ``quiet`` drops it. ``mlflow``: a tracking URI the run is also logged to (:mod:`raybal.results.tracking`).
    """
    progress = None if quiet else progress
    data = load_data(cfg.data)  # bad data (missing file, unpaired chip, ...) fails here: nothing written yet
    check_pretrained(cfg, data)  # so does a missing or mismatched model.pretrained file
    check_corruptions(cfg, data)  # and a corruption that cannot apply to its modality
    tracker = None
    if mlflow:
        from raybal.config.secrets import resolve_url
        from raybal.results.tracking import Tracker, check_uri

        uri = resolve_url(mlflow, "--mlflow")  # env:NAME: the URI (and its token) from the environment
        check_uri(uri, "--mlflow")  # so does an unusable tracking URI
        tracker = Tracker(uri, "raybal-train")
    d = prepare_dir(results_dir, cfg)
    atomic_write_json(run_meta(cfg, "running"), d / "run.json")
    t0 = time.perf_counter()
    try:
        ckdir = d / "checkpoints" / RUN_TRIAL_ID
        if cfg.train.workers > 1 or address:
            from raybal.training.distributed import fit_distributed

            result = fit_distributed(cfg, trial_id=RUN_TRIAL_ID, checkpoint_dir=ckdir, storage_path=d / "ray",
                                     address=address, quiet=progress is None, progress=progress)
        else:
            result = fit(cfg, trial_id=RUN_TRIAL_ID, checkpoint_dir=ckdir, progress=progress, data=data)
    except KeyboardInterrupt:
        atomic_write_json(run_meta(cfg, "interrupted"), d / "run.json")
        raise
    except Exception as exc:
        failed = failed_result(cfg, RUN_TRIAL_ID, exc, time.perf_counter() - t0)
        record_run(d, failed)
        if tracker is not None:
            tracker.log(failed)
        raise
    record_run(d, result)
    if tracker is not None:
        tracker.log(result)
    return result


def robustness_config(selected: checkpoint.Selected, overrides: dict[str, Any]) -> RunConfig:
    """The checkpoint's config with the sweep enabled and ``robustness.*`` overrides applied."""
    for k in overrides:
        if not k.startswith("robustness."):
            raise ResultsError(f"{k}: only robustness.* keys can be overridden here")
    return with_overrides(selected.config, {"robustness.enabled": True, **overrides})


def robustness_to_dir(checkpoint_path: str | Path, results_dir: str | Path | None, overrides: dict[str, Any], *,
                      progress: Progress | None = None) -> tuple[RunResult, Path]:
    """The noise sweep of a ``model.pt``, recorded like a run (same guard, same writer)."""
    selected = checkpoint.load_selected(checkpoint_path)
    cfg = robustness_config(selected, overrides)
    tid = selected.trial_id
    d = Path(results_dir) if results_dir else Path("results") / f"robustness-{tid}-{cfg.digest()[:8]}"
    data = load_data(cfg.data, normalizer=selected.normalizer)  # the training run's statistics, not new ones
    check_corruptions(cfg, data)  # a corruption that cannot apply: refused before anything is written
    d = prepare_dir(d, cfg, kind="robustness")
    model = build_for(cfg, data)
    model.load_state_dict(selected.state)
    t0 = time.perf_counter()

    def tick(done: int, total: int) -> None:
        if progress is not None:
            progress({"trial_id": tid, "robustness": (done, total)})

    points = sweep(model, data, cfg.robustness, mu_repeats=cfg.train.mu_repeats, progress=tick)
    rows = robustness_rows(tid, points, data.task, cfg.robustness.measure_mu)
    metric = metric_name(data.task)
    clean = {sp: selected.final[f"final.{sp}_{metric}"] for sp in ("val", "test")
             if f"final.{sp}_{metric}" in selected.final}
    summary = robustness_summary(rows, data.task, clean)
    ck = str(selected.path.resolve())
    res = RunResult(trial_id=tid, config=cfg, robustness=rows, final={**selected.final, **summary}, checkpoint=ck,
                    wall_s=time.perf_counter() - t0)
    record_run(d, res, kind="robustness", extra={"checkpoint": ck, "summary": summary})
    return res, d
