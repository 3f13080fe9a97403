"""Fault injection: a killed Ray Train worker, failing trials, a killed driver, a lost node (issue 7).

Each test checks what survived and that nothing was lost: every epoch exactly once, every
trial exactly once, the Parquet tables readable at every moment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from raybal.cli import main
from raybal.results.tables import read_table

BASE = """
[data]
n_train = {n}
n_val = 128
n_test = 128
image_size = 16
[model]
width = 8
stages = 3
[train]
epochs = {epochs}
batch_size = 32
mu_repeats = 1
optimizer = "sgd"
lr = 0.05
"""


def study_file(tmp: Path, n_samples: int, epochs: int = 3, search: str = '"train.lr" = {uniform = [0.02, 0.08]}',
               extra: str = "", n: int = 256) -> Path:
    p = tmp / "study.toml"
    # No baseline run: these tests count the trials of the search (and a baseline would get the OOM too).
    p.write_text(BASE.format(n=n, epochs=epochs) + f"[study]\nobjective = \"final.val_accuracy\"\nnum_samples = "
                 f"{n_samples}\nscheduler = \"fifo\"\nseed = 0\nbaseline = \"none\"\n{extra}[search]\n{search}\n")
    return p


def assert_complete(out: Path, n_trials: int, epochs: int, statuses: set[str] = frozenset({"ok"})) -> pd.DataFrame:
    t = pd.read_parquet(out / "trials.parquet")
    assert len(t) == n_trials and t["trial_id"].is_unique, t[["trial_id", "status"]]
    assert set(t["status"]) <= set(statuses), t[["trial_id", "status", "error"]]
    e = pd.read_parquet(out / "epochs.parquet")
    assert not e.duplicated(["trial_id", "epoch", "split"]).any()
    ok = t.loc[t["status"] == "ok", "trial_id"]
    assert (e[e["trial_id"].isin(ok) & (e["split"] == "val")].groupby("trial_id").size() == epochs).all()
    return t


class Reader(threading.Thread):
    """Polls every table of a results directory while it is written; records any broken read."""

    def __init__(self, d: Path) -> None:
        super().__init__(daemon=True)
        self.d, self.stop, self.reads, self.errors = d, threading.Event(), 0, []

    def run(self) -> None:
        import json

        while not self.stop.is_set():
            for name in ("trials", "epochs", "utilization", "robustness"):
                p = self.d / f"{name}.parquet"
                try:
                    read_table(p)  # what raybal.load_results (and so the notebooks) use
                    self.reads += 1
                except FileNotFoundError:
                    pass
                except Exception as exc:  # a torn or half-written file
                    self.errors.append(f"{p.name}: {exc!r}")
            try:
                json.loads((self.d / "study.json").read_text())
            except FileNotFoundError:
                pass
            except Exception as exc:
                self.errors.append(f"study.json: {exc!r}")
            time.sleep(0.05)


def wait_for_trials(out: Path, n: int, proc: subprocess.Popen | None = None, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        p = out / "trials.parquet"
        if p.is_file() and len(pd.read_parquet(p)) >= n:
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail("the study ended before it could be interrupted")
        time.sleep(0.3)
    pytest.fail(f"fewer than {n} trials recorded in {timeout}s")


@pytest.mark.faults
def test_failing_trials_are_recorded_and_the_study_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           local_ray: None,  # TrialFn carries RAYBAL_FAULT
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # lr 1e12 makes SGD diverge (the NaN guard stops the trial); batch 16 gets a simulated CUDA OOM in epoch 2.
    monkeypatch.setenv("RAYBAL_FAULT", "oom:2:train.batch_size == 16")
    search = '"train.lr" = {choice = [0.05, 1e12]}\n"train.batch_size" = {choice = [16, 32]}'
    out = tmp_path / "res"
    study = study_file(tmp_path, 8, epochs=2, search=search, extra="trial_retries = 0\nstartup_trials = 8\n")
    assert main(["study", "run", str(study), "--results", str(out), "--quiet"]) == 0
    t = assert_complete(out, 8, 2, {"ok", "failed"})
    for _, r in t.iterrows():
        if r["train.lr"] > 1:  # diverges in epoch 1, before the injected OOM
            assert r["status"] == "failed" and "NonFiniteLossError" in r["error"], r["error"]
        elif r["train.batch_size"] == 16:
            assert r["status"] == "failed" and "OutOfMemoryError" in r["error"], r["error"]
        else:
            assert r["status"] == "ok"
        assert r["status"] == "ok" or "\n" not in r["error"]
    assert (t["status"] == "ok").any() and (t["status"] == "failed").sum() >= 2
    oom = t[(t["train.batch_size"] == 16) & (t["train.lr"] < 1)]
    # The study's seed 0 draws every one of the 4 (lr, batch) cells in its 8 random proposals.
    assert len(oom) and (t["train.lr"] > 1).any(), t[["train.lr", "train.batch_size"]]
    e = pd.read_parquet(out / "epochs.parquet")  # an OOM in epoch 2 keeps epoch 1, which it finished
    assert set(e.loc[e["trial_id"].isin(oom["trial_id"]), "epoch"]) == {1}
    capsys.readouterr()
    assert main(["best", str(out), "--json"]) == 0
    import json

    best = json.loads(capsys.readouterr().out)
    assert t.set_index("trial_id").loc[best["trial_id"], "status"] == "ok"


@pytest.mark.faults
def test_killed_driver_then_resume(tmp_path: Path, local_ray: None) -> None:
    import ray

    out = tmp_path / "res"
    study = study_file(tmp_path, 6, extra="max_concurrent = 1\n")
    reader = Reader(out)
    reader.start()
    # The driver joins the session's Ray (no cold start of its own); Ray ends the killed driver's trials.
    proc = subprocess.Popen([sys.executable, "-m", "raybal.cli", "study", "run", str(study), "--results", str(out),
                             "--quiet", "--address", ray.get_runtime_context().gcs_address],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_trials(out, 2, proc)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only
        proc.wait(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # Ray helper processes left behind by the killed driver
        except ProcessLookupError:
            pass
    before = pd.read_parquet(out / "trials.parquet")
    assert 2 <= len(before) < 6
    assert main(["study", "resume", str(out), "--quiet"]) == 0
    reader.stop.set()
    reader.join(timeout=10)
    t = assert_complete(out, 6, 3)
    assert set(before["trial_id"]) <= set(t["trial_id"])
    assert not reader.errors and reader.reads > 20, (reader.errors, reader.reads)


@pytest.mark.faults
def test_lost_node_mid_study(tmp_path: Path, two_node_cluster, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    """Issue 36: the node running a trial is lost mid-epoch, the results directory (Tune's storage_path)
    on storage both nodes share; the study completes, the lost trial resumes from its last epoch
    checkpoint on the surviving node, and no result is lost or duplicated."""
    import re

    cluster = two_node_cluster
    worker = next(iter(cluster.worker_nodes))
    out = tmp_path / "res"
    study = study_file(tmp_path, 4, epochs=4, n=512, extra="max_concurrent = 2\ntrial_retries = 2\n")
    removed = threading.Event()
    at_removal: dict[str, int] = {}

    def remove_worker_node() -> None:
        deadline = time.time() + 240
        while time.time() < deadline:
            ck = out / "checkpoints"
            running = [d for d in ck.iterdir() if (d / "last.pt").is_file() and not (d / "result.json").is_file()
                       ] if ck.is_dir() else []
            if len(running) >= 2:  # both nodes are training a trial, each with an epoch checkpointed
                at_removal.update({d.name: 1 for d in running})
                cluster.remove_node(worker)
                removed.set()
                return
            time.sleep(0.2)

    killer = threading.Thread(target=remove_worker_node, daemon=True)
    killer.start()
    rc = main(["study", "run", str(study), "--results", str(out), "--address", cluster.address])
    log = capsys.readouterr().err  # the driver's progress lines
    (tmp_path / "driver.log").write_text(log)  # kept for a failure's diagnosis
    assert removed.is_set(), "the worker node was never removed"
    assert rc == 0  # the study completes on the remaining node
    t = assert_complete(out, 4, 4)  # every trial once, every one ok, every epoch once
    # Each running trial reported epoch 1 once: the lost node's trial continued from its checkpoint on the
    # surviving node (a restart from scratch would report its first epoch again).
    reported = re.findall(r"trial (\S+) epoch (\d+)/4", log)
    for tid in at_removal:
        firsts = [e for t_, e in reported if t_ == tid and e == "1"]
        # at most once: the report of epoch 1 may be lost with the node (last.pt is written before it)
        assert len(firsts) <= 1, (tid, [r for r in reported if r[0] == tid], log[-3000:])
    assert set(at_removal) <= set(t["trial_id"])


@pytest.mark.faults
@pytest.mark.parametrize(("retries", "exits"), [(1, 2), (2, 4)])
def test_a_trial_whose_process_dies_past_its_retries_runs_again_from_its_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_ray: None, capsys: pytest.CaptureFixture[str],
        retries: int, exits: int) -> None:
    """Issue 36: a trial's process that dies (as on a lost node) once more than Tune retries it ends ERROR in
    Tune; the driver runs it again under its own id from its last epoch checkpoint (the path Ray Tune 2.60's
    requeue race takes on a lost node). Every trial ends ok, every epoch is trained and recorded once. With
    retries = 2 and 4 exits a re-run trial dies again (a restored experiment calls Tune's pickled copy of the
    driver's callback: the lost marks are files)."""
    import re

    # each trial's process ends at the end of epoch 2 `exits` times: Tune's own retries die too
    monkeypatch.setenv("RAYBAL_FAULT", f"exit{exits}:2")
    out = tmp_path / "res"
    study = study_file(tmp_path, 2, epochs=3, extra=f"trial_retries = {retries}\n")
    assert main(["study", "run", str(study), "--results", str(out)]) == 0
    log = capsys.readouterr().err
    t = assert_complete(out, 2, 3)  # both ok, each epoch once in the tables
    for tid in t["trial_id"]:
        assert f"trial {tid} lost its process" in log, log[-3000:]
        assert len(list((out / "checkpoints" / tid).glob(".fault-exit-*"))) == exits  # it did die so often
        assert not (out / "checkpoints" / tid / "LOST").exists()
        epochs = [int(e) for t_, e in re.findall(r"trial (\S+) epoch (\d+)/3", log) if t_ == tid]
        assert sorted(epochs) == sorted(set(epochs)), (tid, epochs)  # no epoch reported twice: resumed, not redone


@pytest.mark.faults
def test_a_failed_confirmation_run_trains_again_on_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          local_ray: None) -> None:
    """``raybal confirm`` run again trains a confirmation run that failed (from its last checkpoint) and
    replaces its failed row; the runs that finished are not trained again."""
    out = tmp_path / "res"
    study = study_file(tmp_path, 2, epochs=2, extra="repeats = 2\nmax_concurrent = 1\ntrial_retries = 0\n")
    assert main(["study", "run", str(study), "--results", str(out), "--quiet"]) == 0
    args = ["confirm", str(out), "--top", "1", "--seeds", "2", "--quiet"]
    seed = 1000  # the first confirmation seed (study seed 0 + confirm.SEED_OFFSET)
    monkeypatch.setenv("RAYBAL_FAULT", f"error:2:train.seed == {seed}")
    assert main(args) == 1  # a run did not finish ok: "run the same command to retry them"
    t = pd.read_parquet(out / "trials.parquet")
    conf = t[t["role"] == "confirm"]
    assert (conf.loc[conf["train.seed"] == seed, "status"] == "failed").all() and (conf["status"] == "ok").sum() == 1
    finished = conf.loc[conf["status"] == "ok", "trial_id"].iloc[0]
    stamp = (out / "checkpoints" / finished / "result.json").stat().st_mtime_ns
    monkeypatch.delenv("RAYBAL_FAULT")
    assert main(args) == 0
    t = assert_complete(out, 4 + 2, 2)  # every run ok now, each once
    assert (out / "checkpoints" / finished / "result.json").stat().st_mtime_ns == stamp  # not trained again


@pytest.mark.faults
def test_killed_confirmation_then_resume(tmp_path: Path, local_ray: None) -> None:
    """Issue 36: ``raybal confirm`` killed mid-way continues with the same command; every planned run is
    recorded once, on the planned fresh seeds, and what finished before the kill is kept."""
    import json

    import ray

    out = tmp_path / "res"
    study = study_file(tmp_path, 2, epochs=2, extra="repeats = 2\nmax_concurrent = 1\n")
    assert main(["study", "run", str(study), "--results", str(out), "--quiet"]) == 0
    args = ["confirm", str(out), "--top", "2", "--seeds", "3", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "raybal.cli", *args, "--address",
                             ray.get_runtime_context().gcs_address],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_trials(out, 4 + 1, proc)  # the search's 4 runs and a first confirmation run
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    before = pd.read_parquet(out / "trials.parquet")
    assert 5 <= len(before) < 4 + 6
    assert main(args) == 0
    t = assert_complete(out, 4 + 6, 2)
    conf = t[t["role"] == "confirm"]
    plan = json.loads((out / "confirm.json").read_text())
    assert plan["status"] == "finished" and len(plan["configs"]) == 2  # no baseline in this study
    assert not conf.duplicated(["config_id", "train.seed"]).any() and set(conf["train.seed"]) == set(plan["seeds"])
    assert not set(plan["seeds"]) & set(t.loc[t["role"] != "confirm", "train.seed"])
    assert set(before["trial_id"]) <= set(t["trial_id"])
