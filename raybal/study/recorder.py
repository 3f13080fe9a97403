"""The study driver's record keeping (used by :mod:`raybal.study.driver`).

:class:`Recorder` is the Tune callback on the driver, the only writer of the Parquet tables. Each
trial leaves its :class:`RunResult` in ``checkpoints/<trial_id>/result.json``
(:mod:`raybal.training.result_file`); a trial that ended without one (stopped by ASHA, or its process
died) is rebuilt from its last epoch checkpoint. What a trial claims before it trains (a slot, a
configuration) is :mod:`raybal.study.claims`.

A trial whose process died without leaving its result (its node was lost, the process killed) is, with
``requeue`` on, not recorded as failed but marked ``LOST`` in its checkpoint folder (the error line and its
values): the driver runs it again, under the same trial id, from its last epoch checkpoint
(:func:`raybal.study.driver.run_lost_again`). The mark is a file, not the callback's memory: Tune pickles
its callbacks with the experiment and a restored experiment calls a copy.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from raybal.config import ConfigError
from raybal.results.schema import RunResult
from raybal.results.tables import ResultsError, load_results, write_results
from raybal.study.claims import release_configs
from raybal.study.space import Study, trial_values
from raybal.training import checkpoint
from raybal.training.result_file import read_result

SKIPPED = "SKIPPED"
LOST = "LOST"  # a trial whose process died without its result: {"error", "params"}, until it runs again


def lost_trials(results_dir: Path) -> dict[str, dict[str, Any]]:
    """Trial id -> its LOST mark, for the trials marked lost that have no result since."""
    import json

    ck = results_dir / "checkpoints"
    out = {}
    for mark in sorted(ck.glob(f"*/{LOST}")) if ck.is_dir() else []:
        if read_result(mark.parent) is None:
            try:
                out[mark.parent.name] = json.loads(mark.read_text())
            except ValueError:  # torn by a killed driver: the error line is lost, the trial is not
                out[mark.parent.name] = {"error": "trial process died", "params": {}}
    return out


def status_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def stopped_result(study: Study, tid: str, params: dict[str, Any], ckdir: Path, status: str,
                    error: str | None) -> RunResult:
    """A trial that ended without its own record: rebuild it from its last checkpoint."""
    params = trial_values(params)
    try:
        cfg = study.run_config(params)
    except (ConfigError, KeyError):
        cfg = study.base
    recs = checkpoint.read_records(ckdir / checkpoint.LAST)
    # None: no checkpoint, or one torn by a killed process; the config row still counts
    epochs, utilization, wall_s = recs if recs is not None else ([], [], 0.0)
    return RunResult(trial_id=tid, config=cfg, status=status, error=error, replicate=int(params.get("_replicate", 0)),
                     role=str(params.get("_role", "search")), epochs=epochs, utilization=utilization, wall_s=wall_s)


class Recorder:
    """Tune callback on the driver: progress lines and the Parquet tables as trials end."""

    def __init__(self, study: Study, results_dir: Path, quiet: bool = False, tracker: Any = None,
                 runs: int | None = None) -> None:
        self.study = study
        self.runs = runs or study.runs  # the experiment's runs (a confirmation has its own count)
        self.results_dir = results_dir
        self.quiet = quiet
        self.tracker = tracker  # raybal.results.tracking.Tracker (study.mlflow) or None
        self.recorded: dict[str, str] = {}  # trial id -> the status its row holds
        self.requeue = False  # a trial whose process died is marked LOST (the driver runs it again)

    def setup(self, **info: Any) -> None:
        self.recorded = {}
        try:
            t = load_results(self.results_dir).trials
            done = t[t["status"].isin(["ok", "failed", "stopped"])]
            self.recorded = dict(zip(done["trial_id"].astype(str), done["status"].astype(str)))
        except ResultsError:
            pass

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.quiet or "epoch" not in result:
            return
        metric = next((k for k in result if k.startswith("val_") and k != "val_loss"), None)
        mus = " ".join(f"{k[3:]} {v:.2f}" for k, v in result.items() if k.startswith("mu."))
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        epochs = self.study.base.train.epochs
        status_line(f"[{done}/{self.runs} done] trial {trial.trial_id} epoch "
                     f"{result['epoch']}/{epochs}  {metric} {result.get(metric, float('nan')):.3f}"
                     + (f"  MU {mus}" if mus else ""))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.record(trial.trial_id, trial.config, ended="complete")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid, error = trial.trial_id, _tune_error(trial)
        ckdir = self.results_dir / "checkpoints" / tid
        # getattr: the callback of an experiment pickled before requeue existed has none
        if (getattr(self, "requeue", False) and tid not in self.recorded and read_result(ckdir) is None
                and not (ckdir / SKIPPED).is_file()):
            # the trial's process died before it could write its result (an error raised in training writes one)
            import json

            from raybal._atomic import atomic_write_bytes

            mark = {"error": error, "params": dict(trial.config)}
            atomic_write_bytes(ckdir / LOST, json.dumps(mark, default=str).encode())
            release_configs(self.results_dir, tid)  # a trial waiting on its configuration trains it meanwhile
            if not self.quiet:
                status_line(f"trial {tid} lost its process ({error}); it runs again from its last checkpoint")
            return
        self.record(tid, trial.config, ended="error", error=error)

    def record(self, tid: str, params: dict[str, Any], ended: str, error: str | None = None) -> RunResult | None:
        ckdir = self.results_dir / "checkpoints" / tid
        own = read_result(ckdir)
        # A trial run again after it ended keeps its row, unless it now finished where its row says it did not
        # (a trial stopped by an interrupted driver and resumed; a failed run ``raybal confirm`` trained again).
        if tid in self.recorded and not (self.recorded[tid] != "ok" and own is not None and own.status == "ok"):
            return None
        if (ckdir / SKIPPED).is_file():
            if not self.quiet:
                status_line(f"trial {tid} skipped: the study already holds its {self.runs} runs")
            return None
        if own is not None:
            result = own
        elif ended == "complete":
            result = stopped_result(self.study, tid, params, ckdir, "stopped", None)
        else:
            result = stopped_result(self.study, tid, params, ckdir, "failed", error or "trial process died")
        write_results(self.results_dir, [result])
        release_configs(self.results_dir, tid)  # a trial waiting on this one's config goes on
        self.recorded[tid] = result.status
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
