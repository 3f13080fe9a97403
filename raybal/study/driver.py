"""Studies on Ray Tune + Optuna (DESIGN.md §4, §6): ``raybal study run`` / ``study resume``.

Ray is touched here only. Each trial is a Tune *function trainable* that builds its run
config from the study's base run file plus the values Optuna drew (define-by-run, so
conditional parameters work) and calls :func:`raybal.training.loop.fit` in the trial process: no
Train worker group for one-worker trials (its start-up would be a fixed cost on every trial; see
benchmarks/bench_distributed.py). Every epoch is reported to Tune (ASHA stops trials on the
per-epoch validation metric, ``time_attr = epoch``); the last report carries the final metrics
the objectives name.

Results: each trial writes its :class:`RunResult` next to its checkpoints
(``checkpoints/<trial_id>/result.json``) and the driver, the only writer of the Parquet
tables, merges it when Tune reports the trial finished, stopped or failed. A trial stopped by
ASHA is recorded from its last checkpoint (``status = stopped``), one that raised with its
error line (``status = failed``). The driver also reconciles on every start and at the end,
so a driver killed between a trial's end and the merge loses nothing.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

from raybal._atomic import atomic_write_bytes, atomic_write_json
from raybal.config import ConfigError
from raybal.config.secrets import redact, redacted, resolve_url
from raybal.config.tasks import metric_name
from raybal.measure.robustness import check_corruptions
from raybal.results.schema import failed_result
from raybal.results.tables import (
    FORMAT_VERSION,
    Results,
    ResultsError,
    check_writable,
    environment,
    load_results,
    read_meta,
)
from raybal.study.claims import (
    SLOTS,
    await_config,
    claim_slot,
    index_finished,
    release_configs,
    release_unfinished_slots,
    slot_holders,
)
from raybal.study.recorder import LOST, SKIPPED, Recorder, lost_trials, make_callback, status_line, stopped_result
from raybal.study.space import Study, corner_points, load_study, stored_study, trial_values
from raybal.training import faults
from raybal.training.loop import check_pretrained, fit
from raybal.training.result_file import has_result, read_result, write_result

TUNE_DIR = "tune"


# ----------------------------------------------------------------------------- trial side


def _numbers(final: dict[str, Any]) -> dict[str, Any]:
    """The numeric final metrics (what Tune and Optuna can take); a true/false one as 1.0 / 0.0, so a
    constraint such as ``final.target_met == true`` reaches the sampler."""
    return {k: float(v) if isinstance(v, bool) else v for k, v in final.items() if isinstance(v, (int, float))}


class TrialFn:
    """The Tune function trainable (a picklable callable: the same object on restore)."""

    def __init__(self, study: Study, results_dir: Path, slots: tuple[str, int] | None = None,
                 retry_failed: bool = False) -> None:
        self.study = study
        self.retry_failed = retry_failed  # a run that failed trains again when Tune resumes it (raybal confirm)
        self.results_dir = results_dir
        # (folder, count) of the run slots its trials claim: the study's, or a confirmation's own
        self.slots = slots or (SLOTS, study.runs)
        self.fault = os.environ.get(faults.ENV)  # the reliability tests' injected fault, carried to the trials
        self.__name__ = "raybal_trial"

    def __call__(self, params: dict[str, Any]) -> None:
        from ray import tune

        tid = tune.get_context().get_trial_id()
        values = trial_values(params)
        rep, role = int(values.get("_replicate", 0)), str(values.get("_role", "search"))
        cfg = self.study.run_config(values)
        metric = metric_name(cfg.data.params.task)
        if not claim_slot(self.results_dir, tid, self.slots[1], self.slots[0]):
            atomic_write_bytes(self.results_dir / "checkpoints" / tid / SKIPPED, b"")
            nan = {o.metric: math.nan for o in self.study.objectives}
            tune.report({**nan, f"val_{metric}": math.nan, "val_loss": math.nan, "epoch": cfg.train.epochs,
                         "skipped": 1})
            return
        own = read_result(self.results_dir / "checkpoints" / tid)
        if own is not None and (own.status != "failed" or not getattr(self, "retry_failed", False)):
            # Run again after it ended (the driver resumes Tune's errored trials to re-run those whose process
            # died, a trial that failed by raising among them; a driver killed after a trial's end): its record
            # stands and is reported as it was, nothing trains.
            final = _numbers(own.final) if own.status == "ok" else {o.metric: math.nan for o in self.study.objectives}
            tune.report({f"val_{metric}": final.get(f"final.val_{metric}", math.nan),
                         "val_loss": final.get("final.val_loss", math.nan), **final, "epoch": cfg.train.epochs,
                         **({"done_ok": 1} if own.status == "ok" else {}), "ended_before": 1})
            return
        reused = await_config(self.results_dir, cfg, tid, rep, role)  # None: this trial trains it
        if reused is not None:  # the same resolved config already ran here: its result, not a second training
            final = _numbers(reused.final)
            tune.report({f"val_{metric}": final.get(f"final.val_{metric}"), "val_loss": final.get("final.val_loss"),
                         **final, "epoch": cfg.train.epochs, "done_ok": 1, "reused": 1})
            return
        if cfg.train.num_threads == 0:  # the trial's CPU share, without changing the recorded config
            import torch

            torch.set_num_threads(self.study.settings.cpus_per_trial)
        ckdir = self.results_dir / "checkpoints" / tid
        objectives = [o.metric for o in self.study.objectives]
        pending: dict[str, Any] = {}

        def epoch_report(event: dict[str, Any]) -> dict[str, Any]:
            rep = {"epoch": event["epoch"], f"val_{metric}": event[f"val_{metric}"], "val_loss": event["val_loss"]}
            for m, share in (event.get("mu") or {}).items():
                rep[f"mu.{m}"] = share
            for name in objectives:
                # final.val_<x> has a per-epoch value val_<x> in the event (task metrics, the loss, and the
                # method's split_metrics); others (robustness) are NaN until the final report.
                value = event.get(name[len("final."):]) if name.startswith("final.") else None
                rep[name] = value if isinstance(value, (int, float)) else math.nan
            return rep

        def progress(event: dict[str, Any]) -> None:
            if "epoch" not in event:
                return
            if event["epoch"] < event["epochs"]:
                if role != "baseline":  # the baseline is the reference: ASHA never sees it before its end
                    tune.report(epoch_report(event))
            else:  # the last epoch is reported once, with the final metrics
                pending.update(epoch_report(event))

        t0 = time.perf_counter()
        try:
            if cfg.train.workers > 1:
                # A multi-worker trial launches its own TorchTrainer (Ray is already connected here). It
                # reports to Tune once, at the end: ASHA cannot stop it early.
                from raybal.training.distributed import fit_distributed

                result = fit_distributed(cfg, trial_id=tid, checkpoint_dir=ckdir,
                                         storage_path=self.results_dir / "ray", quiet=True)
            else:
                with faults.carried(self.fault):
                    result = fit(cfg, trial_id=tid, checkpoint_dir=ckdir, progress=progress)
        except Exception as exc:
            failed = failed_result(cfg, tid, exc, time.perf_counter() - t0)
            done = stopped_result(self.study, tid, values, ckdir, "failed", failed.error)
            failed = dataclasses.replace(failed, replicate=rep, role=role, epochs=done.epochs,
                                         utilization=done.utilization)  # the epochs it did finish
            write_result(ckdir, failed)
            release_configs(self.results_dir, tid)
            raise
        result = dataclasses.replace(result, replicate=rep, role=role)
        write_result(ckdir, result)
        index_finished(self.results_dir, cfg, tid)
        release_configs(self.results_dir, tid)
        final = _numbers(result.final)
        last = {f"val_{metric}": final.get(f"final.val_{metric}"), "val_loss": final.get("final.val_loss")}
        tune.report({**last, **pending, **final, "epoch": cfg.train.epochs, "done_ok": 1})


# ----------------------------------------------------------------------------- driver side


class _DefineByRun:
    """Optuna's define-by-run space (picklable: the searcher is saved with the experiment)."""

    def __init__(self, study: Study, base_flat: dict[str, Any]) -> None:
        self.space, self.base_flat = study.space, base_flat

    def __call__(self, trial: Any) -> dict[str, Any]:
        return self.space.sample(trial, self.base_flat)


def study_meta(study: Study, status: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    s = study.settings
    return {
        "format_version": FORMAT_VERSION, "kind": "study", "name": s.name, "status": status,
        # credentials in URLs masked (config.secrets): a results folder travels
        "study_file": redact(study.source), "study_resolved": redacted(study.resolved),
        "overrides": redacted(study.overrides),
        "objectives": [{"metric": o.metric, "mode": o.mode} for o in study.objectives],
        "constraints": [str(c) for c in study.constraints], "num_samples": s.num_samples, "seed": s.seed,
        "repeats": s.repeats, "baseline": None if s.baseline == "none" else s.baseline, "runs": study.runs,
        "per_method": s.per_method, "configurations": study.configurations,
        "scheduler": s.scheduler, "sampler": s.sampler, "base_config": study.base.to_dict(),
        "searched": study.space.columns(), "versions": environment(),
        "best": {"metric": study.objectives[0].metric, "mode": study.objectives[0].mode,
                 "constraints": [str(c) for c in study.constraints],
                 "selection": "validation metrics; test numbers are reported, never optimised"},
        **(extra or {}),
    }


def _prepare(results_dir: Path, study: Study, resume: bool) -> None:
    check_writable(results_dir)
    if (results_dir / "run.json").is_file():
        raise ResultsError(f"{results_dir} holds a single run's results; pick another --results for a study")
    meta_path = results_dir / "study.json"
    if resume:
        if not meta_path.is_file() or not (results_dir / TUNE_DIR).is_dir():
            raise ResultsError(f"{results_dir} holds no study to resume (no study.json / {TUNE_DIR}/)")
        release_unfinished_slots(results_dir)
        return
    if meta_path.is_file():
        try:
            same = read_meta(meta_path)["study_file"] == redact(study.source)
        except ResultsError:  # another layout, or not JSON: not this study either way
            same = False
        raise ResultsError(f"{results_dir} already holds {'this' if same else 'a different'} study"
                           + (f"; continue it with `raybal study resume {results_dir}`" if same
                              else "; pick another --results"))


def _init_ray(address: str | None) -> bool:
    import optuna

    # Snapshot Tune's experiment state at least every second (default: every 10 s or more). A driver
    # killed between snapshots would otherwise forget trials it had already started, and the resumed
    # study would start others in their place: one trial more than num_samples.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")

    from raybal.training.distributed import init_ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return init_ray(address)


OPTUNA_DB = "optuna.db"


def storage_url(study: Study, results_dir: Path) -> str | None:
    """``study.storage`` as a SQLAlchemy URL (None = Optuna's in-memory storage)."""
    url = study.settings.storage
    if url == "memory":
        return None
    return f"sqlite:///{results_dir / OPTUNA_DB}" if url == "sqlite" else resolve_url(url, "study.storage")


def open_storage(url: str) -> Any:
    """An Optuna RDB storage; an unreachable URL (or a missing database driver) is a ConfigError."""
    import optuna

    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # sqlalchemy's OperationalError, ArgumentError, a missing DB-API module, ...
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise ConfigError("study.storage", redact(f"cannot open {url!r} ({type(exc).__name__}: {msg})")) from None


def grace_period(study: Study) -> int:
    """ASHA's grace period: ``study.grace_period``, but never shorter than the latest epoch at which a
    method of the search space has fully acted (``BalanceMethod.acting_epoch``: a mu_target trial is
    not judged before its penalty can be at full weight, an OGM-GE / greedy one before its start
    epoch), taken over the corners of the search space (the acting epoch grows with warm-up,
    pre-training and start epochs); at most the run's epochs."""
    from raybal.balancing import METHODS

    acting = 1
    for values in corner_points(study.space, study.base):
        cfg = study.space.trial_config(study.base_raw, values)
        acting = max(acting, METHODS.get(cfg.balance.method).obj.acting_epoch(cfg))
    return min(max(study.settings.grace_period, acting), study.base.train.epochs)


def _concurrency(study: Study) -> int:
    import ray

    s, tc = study.settings, study.base.train
    cpus = int(ray.available_resources().get("CPU", 1))
    per_trial = tc.workers * tc.cpus_per_worker if tc.workers > 1 else s.cpus_per_trial
    n = max(cpus // per_trial, 1)  # never more trials than their workers can get CPUs for: no deadlock
    if tc.use_gpu:
        n = min(n, max(int(ray.available_resources().get("GPU", 0)) // max(tc.workers, 1), 1))
    if s.max_concurrent:
        n = min(n, s.max_concurrent)
    return max(min(n, study.runs), 1)


def scheduler_for(study: Study) -> Any:
    """The study's Tune scheduler: FIFO, or ASHA on the per-epoch validation metric; with ``repeats > 1``
    the replicate-aware ASHA (:mod:`raybal.study.scheduler`), which judges a configuration by the mean
    over its seeds and never on one seed's report."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = study.settings
    if s.scheduler != "asha":
        return FIFOScheduler()
    kw = {"time_attr": "epoch", "metric": f"val_{metric_name(study.base.data.params.task)}", "mode": "max",
          "max_t": study.base.train.epochs, "grace_period": grace_period(study), "reduction_factor": s.reduction_factor}
    if s.repeats > 1:
        from raybal.study.scheduler import ReplicateASHA

        return ReplicateASHA(repeats=s.repeats, **kw)
    return ASHAScheduler(**kw)


def _tuner(study: Study, results_dir: Path, recorder: Recorder, restore: bool, errored: bool = False) -> Any:
    from ray import tune

    from raybal.study.searcher import StudySearch

    s = study.settings
    if study.base.train.workers > 1:
        # The trial function only waits on its TorchTrainer, which asks for the workers' CPUs itself; the
        # function holds no CPU (a bundle must not be empty: 1 MiB of Ray's logical memory resource).
        resources: dict[str, float] = {"cpu": 0, "memory": 2**20}
    else:
        resources = {"cpu": s.cpus_per_trial, **({"gpu": 1} if study.base.train.use_gpu else {})}
    trainable = tune.with_resources(TrialFn(study, results_dir), resources)
    path = str(results_dir / TUNE_DIR)
    if restore:
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=errored,
                                  restart_errored=False)
    base_flat = study.base_flat
    metrics = [o.metric for o in study.objectives]
    modes = [o.mode for o in study.objectives]
    url = storage_url(study, results_dir)
    searcher = StudySearch(space=_DefineByRun(study, base_flat), study_name=s.name, repeats=s.repeats,
                           baseline=None if s.baseline == "none" else s.baseline, base_seed=study.base.train.seed,
                           per_method=study.space.method_choice() if s.per_method else (),
                           storage=open_storage(url) if url else None,
                           storage_spec=None if url is None else (url if s.storage == "sqlite" else s.storage),
                           constraints=study.constraints,
                            metric=metrics if len(metrics) > 1 else metrics[0],
                            mode=modes if len(modes) > 1 else modes[0], sampler=study.sampler())
    scheduler = scheduler_for(study)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=study.runs,
                                    max_concurrent_trials=_concurrency(study), reuse_actors=True),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(results_dir), verbose=0,
                                  callbacks=[make_callback(recorder)],
                                  failure_config=tune.FailureConfig(max_failures=s.trial_retries)),
    )


def run_study(study: Study | str | Path, results_dir: str | Path | None = None, *, address: str | None = None,
              resume: bool = False, quiet: bool = False) -> Results:
    """Run (or with ``resume=True`` continue) a study; returns its results directory's tables."""
    if not isinstance(study, Study):
        study = load_study(study)
    from raybal.data import load_data

    d = Path(results_dir or Path("results") / study.settings.name).resolve()
    # Bad data, pretrained weights or an unreachable Optuna storage fail before anything is written (and the
    # data cache is warm for trials).
    base_data = load_data(study.base.data)
    check_pretrained(study.base, base_data)
    check_corruptions(study.base, base_data)
    if study.settings.storage not in ("sqlite", "memory") and not resume:
        open_storage(resolve_url(study.settings.storage, "study.storage"))
    tracker = None
    mlflow_uri = resolve_url(study.settings.mlflow, "study.mlflow") if study.settings.mlflow else ""
    if mlflow_uri:
        from raybal.results.tracking import Tracker, check_uri

        check_uri(mlflow_uri, "study.mlflow")
    _prepare(d, study, resume)
    if mlflow_uri:
        tracker = Tracker(mlflow_uri, study.settings.name, spec=study.settings.mlflow)
    atomic_write_json(study_meta(study, "running"), d / "study.json")
    recorder = Recorder(study, d, quiet=quiet, tracker=tracker)
    started = _init_ray(address)
    t0 = time.perf_counter()
    status = "interrupted"
    try:
        recorder.requeue = study.settings.trial_retries > 0
        grid = _tuner(study, d, recorder, restore=resume).fit()
        grid = run_lost_again(study.settings.trial_retries, d, recorder, grid, quiet,
                              lambda: _tuner(study, d, recorder, restore=True, errored=True))
        reconcile(study, d, recorder, grid)
        results = load_results(d)
        n = len(results.search().trials)  # the study's runs (a confirmation's are its own)
        status = "finished" if n >= study.runs else "interrupted"
    finally:
        meta = study_meta(study, status, {"wall_s": time.perf_counter() - t0})
        atomic_write_json(meta, d / "study.json")
        if started:
            import ray

            ray.shutdown()
    return load_results(d)


def run_lost_again(rounds: int, d: Path, recorder: Recorder, grid: Any, quiet: bool, restore: Any) -> Any:
    """Run the trials whose process died (marked ``LOST`` by the recorder) again, up to ``rounds``
    (``study.trial_retries``) times: ``restore()`` gives the experiment's Tuner with its errored trials
    resumed under their own ids, so each continues from its last epoch checkpoint and keeps its run slot.
    Ray Tune 2.60 can end such a trial ERROR whatever retries its FailureConfig has left (a second failure
    of the lost node's tasks finds it already requeued); a trial that raised in training is resumed too and
    ends at once (its record stands). Still lost after the rounds: recorded failed. The marks are files, so
    a driver killed between rounds leaves them to ``study resume``."""
    for _ in range(rounds):
        lost = lost_trials(d)
        if not lost:
            break
        for tid in lost:  # marked again by the recorder if it dies again
            (d / "checkpoints" / tid / LOST).unlink(missing_ok=True)
        if not quiet:
            status_line(f"running {len(lost)} trial(s) again whose process died: {', '.join(lost)}")
        grid = restore().fit()
    recorder.setup()  # the rounds' records were made by Tune's copy of the callback
    for tid, mark in lost_trials(d).items():  # still lost after the rounds: failed, with Tune's error line
        failed = recorder.record(tid, mark.get("params") or {}, "error", str(mark.get("error") or "trial process died"))
        if failed is not None:  # its record beside its checkpoints, as a trial that raised leaves it
            write_result(d / "checkpoints" / tid, failed)
        (d / "checkpoints" / tid / LOST).unlink(missing_ok=True)
    return grid


def reconcile(study: Study, d: Path, recorder: Recorder, grid: Any = None, slots: str = SLOTS) -> None:
    """Record every ended trial that the tables do not hold yet (e.g. after a driver crash); ``slots``:
    the folder of run slots whose holders are this experiment's trials."""
    recorder.setup()
    ended: dict[str, tuple[dict[str, Any], str, str | None]] = {}
    if grid is not None:
        for r in grid:
            tid = (r.metrics or {}).get("trial_id")
            if tid:
                ended[str(tid)] = (dict(r.config or {}), "error" if r.error else "complete",
                                   str(r.error).strip().splitlines()[-1][:500] if r.error else None)
    ck = d / "checkpoints"
    # A result on disk that Tune did not report counts only when its trial holds a slot: a trial process
    # of a killed driver that outlived it (its slot released on resume) may finish later, and must not
    # make the study one trial too many.
    held = slot_holders(d, slots)
    for sub in sorted(ck.iterdir()) if ck.is_dir() else []:
        if sub.is_symlink() or not sub.is_dir():  # raybal writes folders only: reported, never followed
            what = "a link" if sub.is_symlink() else "a file"
            status_line(f"ignored {sub}: not a trial folder raybal wrote ({what})")
            continue
        if has_result(sub) and sub.name not in ended and sub.name in held:
            ended[sub.name] = ({}, "complete", None)
    for tid, (params, how, err) in ended.items():
        if tid not in recorder.recorded:
            recorder.record(tid, params, how, err)


def _check_tune_state_is_yours(tune_dir: Path) -> None:
    """Ray Tune keeps its experiment state as pickles (``Tuner.restore`` loads them), which can run code:
    resume only state this user wrote. A file of another owner, or a link, stops the resume by name."""
    uid = os.getuid()
    for path in [tune_dir, *tune_dir.rglob("*")]:
        if path.is_symlink() or path.lstat().st_uid != uid:
            why = "a link" if path.is_symlink() else "another owner"
            raise ResultsError(f"{path}: Ray Tune's state here was not written by you ({why}); it is pickled and "
                               "would run on resume: start a new study instead")


def resume_study(results_dir: str | Path, *, address: str | None = None, quiet: bool = False) -> Results:
    """Continue an interrupted study from its results directory (the study file stored in study.json)."""
    d = Path(results_dir).resolve()
    meta_path = d / "study.json"
    if not meta_path.is_file() or not (d / TUNE_DIR).is_dir():
        raise ResultsError(f"{d} holds no study to resume (no study.json and {TUNE_DIR}/ state)")
    _check_tune_state_is_yours(d / TUNE_DIR)
    return run_study(stored_study(meta_path), d, address=address, resume=True, quiet=quiet)
