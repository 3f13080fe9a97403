"""Real tiny studies on a local Ray: Tune + Optuna + ASHA, ``raybal best``, interrupt and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import assert_unique_keys

from raybal.analysis.best import best_trial
from raybal.cli import main

pytestmark = pytest.mark.usefixtures("local_ray")

STUDY = """
[data]
n_train = 256
n_val = 128
n_test = 128
image_size = 16
[model]
width = 8
stages = 3
[balance]
method = "mu_target"
target = {{eo = 0.75, sar = 0.25}}
[train]
epochs = {epochs}
batch_size = 32
mu_repeats = 1
[robustness]
modalities = ["eo"]
corruptions = ["gaussian"]
levels = {{gaussian = [0.0, 0.12]}}
splits = ["val", "test"]
[study]
name = "tiny"
objective = "final.val_accuracy"
num_samples = {n}
scheduler = "asha"
grace_period = 1
reduction_factor = 2
seed = 0
startup_trials = 2
constraints = ["final.val_accuracy >= 0.2"]
[search]
"balance.target.eo" = {{uniform = [0.5, 0.95]}}
"train.lr" = {{loguniform = [1e-5, 1e-2]}}
"""


def write_study(tmp_path: Path, n: int = 6, epochs: int = 4) -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text(STUDY.format(n=n, epochs=epochs))
    return p


def test_tiny_study_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "res"
    rc = main(["study", "run", str(write_study(tmp_path)), "--results", str(out)])
    assert rc == 0
    everything = pd.read_parquet(out / "trials.parquet")
    assert len(everything) == 7 and everything["trial_id"].is_unique  # 6 proposals + the vanilla baseline
    baseline = everything[everything["role"] == "baseline"]
    assert len(baseline) == 1 and baseline["status"].iloc[0] == "ok"  # ASHA never judges the baseline
    assert baseline["balance.method"].iloc[0] == "vanilla" and baseline["train.lr"].iloc[0] == 0.002  # base file's
    trials = everything[everything["role"] == "search"]
    assert set(trials["status"]) <= {"ok", "stopped"} and (trials["status"] == "ok").any()
    assert (trials["status"] == "stopped").any(), "ASHA stopped no trial (lr spans 1e-5..1e-2)"
    # every trial carries its config; searched values differ between trials and the target sums to 1
    assert trials["balance.target.eo"].nunique() == 6 and trials["config_id"].nunique() == 6
    assert ((trials["balance.target.eo"] + trials["balance.target.sar"]) - 1).abs().max() < 1e-9
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert_unique_keys(out)
    per_trial = epochs[epochs["split"] == "val"].groupby("trial_id")["epoch"].max()
    ok = trials.set_index("trial_id")["status"]
    assert (per_trial[ok[ok == "ok"].index] == 4).all() and (per_trial[ok[ok == "stopped"].index] < 4).all()
    rob = pd.read_parquet(out / "robustness.parquet")
    assert set(rob["trial_id"]) == set(ok[ok == "ok"].index) | set(baseline["trial_id"])
    meta = json.loads((out / "study.json").read_text())
    assert meta["status"] == "finished" and meta["best"]["metric"] == "final.val_accuracy"
    # Optuna's own state persists in SQLite beside the tables: a stopped trial is pruned there, not a NaN.
    import optuna

    ot = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")
    states = [t.state.name for t in ot.trials]
    assert len(states) == 6 and states.count("COMPLETE") == (ok == "ok").sum()
    assert states.count("PRUNED") == (ok == "stopped").sum()
    # the constraint's violation (0.2 - accuracy: <= 0 when it holds) reached the sampler with each result
    done = [t for t in ot.trials if t.state.name == "COMPLETE"]
    assert done and all(t.constraints == {"final.val_accuracy >= 0.2": pytest.approx(0.2 - t.value)} for t in done)
    assert meta["sampler"] == "tpe"
    assert "trial" in capsys.readouterr().err  # live progress lines

    capsys.readouterr()
    assert main(["best", str(out), "--json"]) == 0
    best = json.loads(capsys.readouterr().out)
    cand = everything[(everything["status"] == "ok") & (everything["final.val_accuracy"] >= 0.2)]
    assert best["trial_id"] in set(cand["trial_id"])
    assert best["value"] == pytest.approx(cand["final.val_accuracy"].max())
    assert best["is_baseline"] == (best["trial_id"] in set(baseline["trial_id"]))
    # The best mu_target configuration (the searched one, whichever wins overall), against the baseline.
    from raybal.analysis.best import best_trial

    searched = best_trial(out, method="mu_target")
    assert searched.trial_id in set(trials["trial_id"]) and not searched.is_baseline
    assert set(searched.target) == {"eo", "sar"} and abs(sum(searched.target.values()) - 1) < 1e-9
    # one seed: the difference to the baseline is known, its interval is not
    diff = searched.value - baseline["final.val_accuracy"].iloc[0]
    assert searched.vs_baseline is not None and searched.vs_baseline.diff.mean == pytest.approx(diff)
    assert searched.vs_baseline.verdict == "unknown" and not searched.interval.defined
    # a stricter constraint from the command line changes the candidate set, never picks a failed/stopped trial
    capsys.readouterr()
    assert main(["best", str(out), "--json", "--metric", "final.val_loss"]) == 0
    low = json.loads(capsys.readouterr().out)
    assert low["mode"] == "min" and low["value"] == pytest.approx(cand["final.val_loss"].min())
    assert main(["best", str(out), "--constraint", "final.val_accuracy >= 2"]) == 2


def test_best_on_empty_or_foreign_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["best", str(tmp_path / "nope")]) == 2
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("hi")
    assert main(["best", str(tmp_path / "foreign")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("raybal: error:") for line in err)


def test_interrupted_study_resumes_without_repeats(tmp_path: Path, local_ray: None) -> None:
    import ray

    # The file says 4 epochs; the study is started with --set train.epochs=3, and resume must run that study.
    # Two configurations and the baseline, each with two seeds: 6 runs.
    study, out = write_study(tmp_path, n=2, epochs=4), tmp_path / "res"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "raybal.cli", "study", "run", str(study), "--results", str(out),
                             "--set", "study.max_concurrent=1", "--set", "study.scheduler=\"fifo\"",
                             "--set", "train.epochs=3", "--set", "study.repeats=2",
                             "--address", ray.get_runtime_context().gcs_address],  # the session's Ray
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        p = out / "trials.parquet"
        if p.is_file() and len(pd.read_parquet(p)) >= 2:
            break
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("no trial finished in time: " + (proc.stderr.read() if proc.stderr else ""))
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    proc.wait(timeout=120)
    before = pd.read_parquet(out / "trials.parquet")
    assert 2 <= len(before) < 6, "the study was not interrupted mid-way"
    assert json.loads((out / "study.json").read_text())["status"] == "interrupted"
    import optuna

    storage = f"sqlite:///{out / 'optuna.db'}"
    killed = optuna.load_study(study_name="tiny", storage=storage)  # opens after the driver was stopped
    assert len(killed.trials) <= 2

    assert main(["study", "resume", str(out), "--quiet"]) == 0
    resumed = optuna.load_study(study_name="tiny", storage=storage)
    after = pd.read_parquet(out / "trials.parquet")
    assert len(after) == 6 and after["trial_id"].is_unique
    assert set(before["trial_id"]) <= set(after["trial_id"])  # nothing lost
    assert (after["status"] == "ok").all()
    # every configuration (and the baseline) ran its two seeds, across the interruption; Optuna was told
    # each configuration once, with the mean over its seeds
    groups = after.groupby("config_id")
    assert len(groups) == 3 and (groups["train.seed"].apply(sorted).map(tuple) == (0, 1)).all()
    assert (after.groupby("role")["config_id"].nunique() == pd.Series({"baseline": 1, "search": 2})).all()
    told = sorted(t.value for t in resumed.trials if t.state.name == "COMPLETE")
    means = sorted(after[after["role"] == "search"].groupby("config_id")["final.val_accuracy"].mean())
    assert told == pytest.approx(means)
    assert (after["train.epochs"] == 3).all()  # every trial, before and after the resume, carries the override
    assert json.loads((out / "study.json").read_text())["overrides"]["train.epochs"] == 3
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert not epochs.duplicated(["trial_id", "epoch", "split"]).any()
    assert (epochs[epochs["split"] == "val"].groupby("trial_id").size() == 3).all()
    # the study's directory is not reused for a different study or a run
    assert main(["study", "run", str(study), "--results", str(out)]) == 2


def test_a_configuration_already_run_is_not_trained_again(tmp_path: Path) -> None:
    # Every proposal is the baseline's own configuration (vanilla, base settings). Two trials run at a time,
    # so the first proposal starts while the baseline trains: it waits for it instead of training it again;
    # later ones reuse the finished result.
    text = STUDY.format(n=3, epochs=2).replace('scheduler = "asha"', 'scheduler = "fifo"\nmax_concurrent = 2')
    text = text.split("[search]")[0] + '[search]\n"balance.method" = {choice = ["vanilla"]}\n'
    study = tmp_path / "dup.toml"
    study.write_text(text)
    out = tmp_path / "res"
    assert main(["study", "run", str(study), "--results", str(out)]) == 0
    trials = pd.read_parquet(out / "trials.parquet").set_index("trial_id")
    assert len(trials) == 4 and (trials["status"] == "ok").all() and trials["config_id"].nunique() == 1
    trained = trials[trials["final.reused_from"].isna()]
    assert len(trained) == 1, trials["final.reused_from"]
    src = trained.index[0]
    assert (trials["role"] == "baseline").sum() == 1  # either of the first two may have won the claim
    assert (trials["final.reused_from"].dropna() == src).all()
    for col in ("final.val_accuracy", "final.test_accuracy", "robust.val_mean_accuracy"):
        assert trials[col].nunique() == 1, col
    for tid in trials.index.drop(src):
        assert not (out / "checkpoints" / tid / "last.pt").exists()  # nothing trained
    assert not list((out / "configs").glob("*.running"))  # every claim released
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert epochs.groupby("trial_id").size().nunique() == 1  # each trial has its (copied) epochs
    b = best_trial(out)  # the duplicates are one configuration, counted once
    assert b.is_baseline and b.candidates == 1 and b.interval.n == 1


def test_an_unreachable_optuna_storage_is_refused_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "res"
    rc = main(["study", "run", str(write_study(tmp_path)), "--results", str(out),
               "--set", f'study.storage="sqlite:///{tmp_path}/no/such/dir/o.db"'])
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "study.storage" in err[0], err


def test_per_method_studies_give_every_method_its_configurations_and_seeds(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    text = STUDY.format(n=1, epochs=1).replace('scheduler = "asha"',
                                               'scheduler = "fifo"\nper_method = true\nrepeats = 2')
    text = text.replace('constraints = ["final.val_accuracy >= 0.2"]', "")
    text = text.split("[search]")[0] + ('[search]\n"balance.method" = {choice = ["mu_target", "ogm_ge"]}\n'
                                        '"balance.alpha" = {uniform = [0.1, 1.0], '
                                        'when = {"balance.method" = "ogm_ge"}}\n'
                                        '"balance.target.eo" = {uniform = [0.5, 0.9], '
                                        'when = {"balance.method" = "mu_target"}}\n')
    study = tmp_path / "pm.toml"
    study.write_text(text)
    out = tmp_path / "res"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # and every run logged to MLflow (the mlflow extra)
    assert main(["study", "run", str(study), "--results", str(out), "--quiet", "--mlflow", uri]) == 0
    t = pd.read_parquet(out / "trials.parquet")
    assert len(t) == 6 and (t["status"] == "ok").all()  # (2 methods x 1 configuration + the baseline) x 2 seeds
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    logged = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert sorted(r.data.tags["raybal.trial_id"] for r in logged) == sorted(t["trial_id"])
    assert sorted(r.data.tags["raybal.role"] for r in logged) == sorted(t["role"])
    assert all("final.val_accuracy" in r.data.metrics for r in logged)
    per = t.groupby("balance.method")["config_id"].nunique()
    assert per.to_dict() == {"mu_target": 1, "ogm_ge": 1, "vanilla": 1}
    assert (t.groupby("config_id")["train.seed"].apply(sorted).map(tuple) == (0, 1)).all()
    capsys.readouterr()
    assert main(["best", str(out), "--per-method", "--json"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"vanilla", "mu_target", "ogm_ge"} and rows["vanilla"]["verdict"] == "baseline"
    for m in ("mu_target", "ogm_ge"):
        runs = t[t["balance.method"] == m]
        base = t[t["role"] == "baseline"].set_index("train.seed")["final.val_accuracy"]
        assert rows[m]["n"] == 2 and rows[m]["mean"] == pytest.approx(runs["final.val_accuracy"].mean())
        diff = (runs.set_index("train.seed")["final.val_accuracy"] - base).mean()
        assert rows[m]["vs_baseline"] == pytest.approx(diff)
