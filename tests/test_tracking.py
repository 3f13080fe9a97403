"""Optional MLflow logging (the mlflow extra): runs, their per-epoch and final metrics, bad URIs."""

from __future__ import annotations

from pathlib import Path

import pytest

from raybal.cli import main

pytest.importorskip("mlflow")

RUN = """
[data]
n_train = 128
n_val = 64
n_test = 64
image_size = 16
[model]
width = 8
stages = 3
[train]
epochs = 2
batch_size = 32
mu_repeats = 1
"""


@pytest.mark.parametrize("store", ["sqlite", "file"])
def test_a_run_is_logged_with_its_epochs_and_finals(store: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}" if store == "sqlite" else (tmp_path / "mlruns").as_uri()
    run = tmp_path / "run.toml"
    run.write_text(RUN)
    assert main(["train", str(run), "--results", str(tmp_path / "res"), "--quiet", "--mlflow", uri]) == 0
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("raybal-train")
    runs = c.search_runs([exp.experiment_id])
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED" and r.data.tags["raybal.trial_id"] == "run"
    assert r.data.params["train.epochs"] == "2" and r.data.params["balance.method"] == "vanilla"
    import pandas as pd

    trials = pd.read_parquet(tmp_path / "res" / "trials.parquet")
    assert r.data.metrics["final.test_accuracy"] == pytest.approx(trials["final.test_accuracy"].iloc[0])
    assert r.data.tags["raybal.config_id"] == trials["config_id"].iloc[0]
    history = c.get_metric_history(r.info.run_id, "val_accuracy")
    epochs = pd.read_parquet(tmp_path / "res" / "epochs.parquet")
    val = epochs[epochs["split"] == "val"].sort_values("epoch")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(val["epoch"])
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(list(val["accuracy"]))


def test_an_unusable_tracking_uri_exits_2_before_anything_is_written(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run.toml"
    run.write_text(RUN)
    for uri in ("http://127.0.0.1:9", "nosuchscheme://x"):
        assert main(["train", str(run), "--results", str(tmp_path / "res"), "--mlflow", uri]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and "--mlflow" in err[0] and "cannot use MLflow" in err[0], err
        assert not (tmp_path / "res").exists()


def test_a_pickled_tracker_holds_the_uri_as_written_and_opens_it_again(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Tune saves the study's callbacks (and so the tracker) in the results folder: what it pickles is
    the URI as the config gives it (env:NAME), never the resolved URI or its token."""
    import pickle

    from raybal.results.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("RAYBAL_TEST_MLFLOW", uri)
    tracker = Tracker(uri, "exp", spec="env:RAYBAL_TEST_MLFLOW")
    blob = pickle.dumps(tracker)
    assert uri.encode() not in blob and b"env:RAYBAL_TEST_MLFLOW" in blob
    again = pickle.loads(blob)
    assert again.uri == uri and again._exp == tracker._exp and not again._warned
    inline = pickle.dumps(Tracker(uri, "exp", spec="https://alice:t0ken@mlflow.example"))
    assert b"t0ken" not in inline
