"""The study driver's record keeping (used by :mod:`raybal.study.driver`).

* Trial slots: Tune snapshots its experiment state every second or so; a driver killed between
  snapshots forgets the trials it started since, and the restored study would start as many again
  (a re-drawn point, a new id): one trial too many. So every trial first claims one of the study's
  ``Study.runs`` slots (an O_EXCL file holding its id, on the results directory's storage). A trial
  that finds no free slot is skipped: it trains nothing and is not recorded. On resume, slots of
  trials that never finished are released.
* :class:`Recorder`: the Tune callback on the driver, the only writer of the Parquet tables. Each
  trial leaves its :class:`RunResult` in ``checkpoints/<trial_id>/result.pkl``; a trial that ended
  without one (stopped by ASHA, or its process died) is rebuilt from its last epoch checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

from raybal._atomic import atomic_write_bytes
from raybal.config import ConfigError
from raybal.results.schema import RunResult
from raybal.results.tables import ResultsError, load_results, write_results
from raybal.study.space import Study
from raybal.training import checkpoint

RESULT_FILE = "result.pkl"
SKIPPED = "SKIPPED"


def status_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def claim_slot(results_dir: Path, tid: str, n: int) -> bool:
    sd = results_dir / "slots"
    sd.mkdir(parents=True, exist_ok=True)
    for f in sd.iterdir():
        if f.read_text() == tid:
            return True  # a restarted trial keeps its slot
    for k in range(n):
        try:
            fd = os.open(sd / f"{k:05d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(tid)
        return True
    return False


def slot_holders(results_dir: Path) -> set[str]:
    """Ids of the trials that hold a slot now."""
    sd = results_dir / "slots"
    return {f.read_text() for f in sd.iterdir()} if sd.is_dir() else set()


def release_unfinished_slots(results_dir: Path) -> None:
    release_configs(results_dir)
    sd = results_dir / "slots"
    for f in sd.iterdir() if sd.is_dir() else []:
        tid = f.read_text()
        if not (results_dir / "checkpoints" / tid / RESULT_FILE).is_file():
            f.unlink(missing_ok=True)


def stopped_result(study: Study, tid: str, params: dict[str, Any], ckdir: Path, status: str,
                    error: str | None) -> RunResult:
    """A trial that ended without its own record: rebuild it from its last checkpoint."""
    try:
        cfg = study.space.trial_config(study.base_raw, params)
    except ConfigError:
        cfg = study.base
    recs = checkpoint.read_records(ckdir / checkpoint.LAST)
    # None: no checkpoint, or one torn by a killed process; the config row still counts
    epochs, utilization, wall_s = recs if recs is not None else ([], [], 0.0)
    return RunResult(trial_id=tid, config=cfg, status=status, error=error, replicate=int(params.get("_replicate", 0)),
                     role=str(params.get("_role", "search")), epochs=epochs, utilization=utilization, wall_s=wall_s)


class Recorder:
    """Tune callback on the driver: progress lines and the Parquet tables as trials end."""

    def __init__(self, study: Study, results_dir: Path, quiet: bool = False, tracker: Any = None) -> None:
        self.study = study
        self.results_dir = results_dir
        self.quiet = quiet
        self.tracker = tracker  # raybal.results.tracking.Tracker (study.mlflow) or None
        self.recorded: set[str] = set()

    def setup(self, **info: Any) -> None:
        self.recorded = set()
        try:
            t = load_results(self.results_dir).trials
            self.recorded = set(t.loc[t["status"].isin(["ok", "failed", "stopped"]), "trial_id"].astype(str))
        except ResultsError:
            pass

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.quiet or "epoch" not in result:
            return
        metric = next((k for k in result if k.startswith("val_") and k != "val_loss"), None)
        mus = " ".join(f"{k[3:]} {v:.2f}" for k, v in result.items() if k.startswith("mu."))
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        epochs = self.study.base.train.epochs
        status_line(f"[{done}/{self.study.runs} done] trial {trial.trial_id} epoch "
                     f"{result['epoch']}/{epochs}  {metric} {result.get(metric, float('nan')):.3f}"
                     + (f"  MU {mus}" if mus else ""))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.record(trial.trial_id, trial.config, ended="complete")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.record(trial.trial_id, trial.config, ended="error", error=_tune_error(trial))

    def record(self, tid: str, params: dict[str, Any], ended: str, error: str | None = None) -> RunResult | None:
        ckdir = self.results_dir / "checkpoints" / tid
        path = ckdir / RESULT_FILE
        if (ckdir / SKIPPED).is_file():
            if not self.quiet:
                status_line(f"trial {tid} skipped: the study already holds its {self.study.runs} runs")
            return None
        if path.is_file():
            result: RunResult = pickle.loads(path.read_bytes())
        elif ended == "complete":
            result = stopped_result(self.study, tid, params, ckdir, "stopped", None)
        else:
            result = stopped_result(self.study, tid, params, ckdir, "failed", error or "trial process died")
        write_results(self.results_dir, [result])
        release_configs(self.results_dir, tid)  # a trial waiting on this one's config goes on
        self.recorded.add(tid)
        if self.tracker is not None:
            self.tracker.log(result)
        if not self.quiet:
            what = {"ok": "finished", "stopped": "stopped early (ASHA)", "failed": f"FAILED: {result.error}"}
            status_line(f"trial {tid} {what.get(result.status, result.status)}")
        return result


def _tune_error(trial: Any) -> str:
    try:
        msg = trial.get_error()
    except Exception:  # the error file is gone or unreadable: still record the failure
        msg = None
    lines = [ln for ln in str(msg or "").strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "trial process died"


def make_callback(recorder: Recorder) -> Any:
    from ray.tune import Callback

    class _RecorderCallback(Callback):
        def __init__(self, rec: Recorder) -> None:
            self.rec = rec

        def setup(self, **info: Any) -> None:
            self.rec.setup(**info)

        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
            self.rec.on_trial_result(iteration, trials, trial, result)

        def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
            self.rec.on_trial_complete(iteration, trials, trial)

        def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
            self.rec.on_trial_error(iteration, trials, trial)

    return _RecorderCallback(recorder)


CONFIGS_DIR = "configs"  # <digest> -> the id of the first trial that finished that resolved config


def index_finished(results_dir: Path, cfg: Any, tid: str) -> None:
    """Remember that trial ``tid`` finished ``cfg`` (the first such trial wins)."""
    d = results_dir / CONFIGS_DIR
    d.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(d / cfg.digest(), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(tid)


def reuse_finished(results_dir: Path, cfg: Any, tid: str, replicate: int = 0, role: str = "search") -> Any:
    """The result of an earlier trial that finished the same resolved config (``RunConfig.digest``: what
    the run computes, resources aside), as trial ``tid``'s own record, written beside its checkpoints;
    None when there is none. Training is deterministic given the config, so the answer is the same and
    the study's budget goes to configurations it has not seen (a sampler can propose the parameter-free
    vanilla branch of a conditional space many times). A trial whose config another trial is training
    right now waits for it (:func:`await_config`)."""
    entry = results_dir / CONFIGS_DIR / cfg.digest()
    if not entry.is_file():
        return None
    src = entry.read_text().strip()
    try:
        prior = pickle.loads((results_dir / "checkpoints" / src / RESULT_FILE).read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError):
        return None
    if prior.status != "ok" or src == tid:
        return None
    t0 = time.perf_counter()

    def own(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**row, "trial_id": tid} for row in rows]

    ckdir = results_dir / "checkpoints" / tid
    ckdir.mkdir(parents=True, exist_ok=True)
    # This trial's own config (the same digest; resources may differ), replicate and role.
    res = dataclasses.replace(prior, trial_id=tid, config=cfg, replicate=replicate, role=role,
                              epochs=own(prior.epochs), utilization=own(prior.utilization),
                              robustness=own(prior.robustness), final={**prior.final, "final.reused_from": src},
                              wall_s=time.perf_counter() - t0)
    atomic_write_bytes(ckdir / RESULT_FILE, pickle.dumps(res))
    return res


RUNNING = ".running"  # configs/<digest>.running: the id of the trial training that config now


def _claim_config(results_dir: Path, cfg: Any, tid: str) -> str | None:
    """Claim the training of ``cfg`` for trial ``tid``: None when it is ours, else the holder's id."""
    d = results_dir / CONFIGS_DIR
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{cfg.digest()}{RUNNING}"
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = path.read_text().strip()
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue  # released between the two calls: try again
            if holder == "" and age > 30:  # created by a process that died before writing its id
                path.unlink(missing_ok=True)
                continue
            return None if holder == tid else holder or "?"  # ours (a restarted trial), or held
        with os.fdopen(fd, "w") as fh:
            fh.write(tid)
        return None


def await_config(results_dir: Path, cfg: Any, tid: str, replicate: int = 0, role: str = "search",
                 poll_s: float = 0.5) -> Any:
    """Reuse or claim ``cfg``: while another trial trains the same resolved config, wait; then its result
    as this trial's (:func:`reuse_finished`), or None (the other trial was stopped or failed, or there was
    none): this trial holds the claim and trains the config itself. The claim is released by
    :func:`release_configs` when the trial ends (by the trial, and by the driver when it records it)."""
    while _claim_config(results_dir, cfg, tid) is not None:
        time.sleep(poll_s)
    reused = reuse_finished(results_dir, cfg, tid, replicate, role)
    if reused is not None:
        release_configs(results_dir, tid)
    return reused


def release_configs(results_dir: Path, tid: str | None = None) -> None:
    """Drop the training claims of trial ``tid`` (None: every claim, for a resumed study)."""
    d = results_dir / CONFIGS_DIR
    for f in d.glob(f"*{RUNNING}") if d.is_dir() else []:
        try:
            if tid is None or f.read_text().strip() == tid:
                f.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
