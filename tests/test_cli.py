"""`raybal train` / `raybal robustness` end to end, and bad input -> exit 2 with one line."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import assert_unique_keys

from raybal.cli import main

ROOT = Path(__file__).resolve().parents[1]

TINY_RUN = """
[data]
name = "synthetic_aerial"
n_train = 256
n_val = 128
n_test = 128
image_size = 16

[model]
name = "late"
width = 8
stages = 3

[balance]
method = "vanilla"

[train]
epochs = 2
batch_size = 32
mu_repeats = 1

[robustness]
modalities = ["eo"]
corruptions = ["gaussian", "blackout"]
levels = { gaussian = [0.0, 0.12] }
splits = ["val", "test"]
"""


def run_file(tmp_path: Path, text: str = TINY_RUN, name: str = "run.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_train_writes_every_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "res"
    assert main(["train", str(run_file(tmp_path)), "--results", str(out)]) == 0
    captured = capsys.readouterr()
    assert "epoch 2/2" in captured.err and "MU eo" in captured.err
    assert str(out.resolve()) in captured.out
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 1
    row = trials.iloc[0]
    for col in ("trial_id", "status", "error", "config_json", "balance.method", "train.lr", "data.name",
                "final.val_accuracy", "final.test_accuracy", "final.mu.eo", "final.mu.sar",
                "robust.val_mean_accuracy", "robust.test_mean_accuracy", "wall_s", "raybal_version"):
        assert col in trials.columns, col
    assert row["status"] == "ok" and pd.isna(row["error"])
    assert row["final.mu.eo"] + row["final.mu.sar"] == pytest.approx(1.0)
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert len(epochs) == 2 * 3 and set(epochs["split"]) == {"train", "val", "test"}
    assert {"loss", "accuracy", "lambda_mu"} <= set(epochs.columns)
    assert not epochs.duplicated(["trial_id", "epoch", "split"]).any()
    util = pd.read_parquet(out / "utilization.parquet")
    assert {"mu", "cond_util", "learning_speed"} <= set(util.columns)
    sums = util.groupby(["trial_id", "epoch", "split"])["mu"].sum()
    assert sums.to_numpy() == pytest.approx(1.0)
    assert_unique_keys(out)
    best_epoch = trials.iloc[0]["final.best_epoch"]
    assert set(util.loc[util["final"], "epoch"]) == {best_epoch}  # the selected epoch's rows are marked
    assert set(util.loc[util["final"], "split"]) == {"val", "test"}
    rob = pd.read_parquet(out / "robustness.parquet")
    # 2 splits x (2 gaussian levels + 1 blackout) on eo
    assert len(rob) == 6 and {"accuracy", "mu.eo", "mu.sar"} <= set(rob.columns)
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "ok" and meta["config"]["train"]["epochs"] == 2
    assert (out / "checkpoints" / "run" / "model.pt").is_file()

    # A second run with the same config into the same dir resumes: nothing recorded twice.
    assert main(["train", str(run_file(tmp_path)), "--results", str(out), "--quiet"]) == 0
    assert len(pd.read_parquet(out / "epochs.parquet")) == 6
    # ... and a different config into it is refused, leaving it intact.
    assert main(["train", str(run_file(tmp_path)), "--results", str(out), "--set", "train.lr=0.01"]) == 2
    assert "holds a different run" in capsys.readouterr().err
    assert len(pd.read_parquet(out / "trials.parquet")) == 1
    # Resource knobs say where a run executes, not what it computes: the same run, accepted (and resumed).
    assert main(["train", str(run_file(tmp_path)), "--results", str(out), "--quiet",
                 "--set", "train.num_threads=1", "--set", "train.checkpoint_every=2"]) == 0
    assert len(pd.read_parquet(out / "epochs.parquet")) == 6

    # The robustness command sweeps the checkpoint.
    rob_out = tmp_path / "rob"
    ckpt = out / "checkpoints" / "run" / "model.pt"
    assert main(["robustness", str(ckpt), "--results", str(rob_out), "--quiet",
                 "--set", 'robustness.corruptions=["speckle"]', "--set", "robustness.modalities=[\"sar\"]"]) == 0
    rob2 = pd.read_parquet(rob_out / "robustness.parquet")
    assert set(rob2["corruption"]) == {"speckle"} and set(rob2["modality"]) == {"sar"}
    assert json.loads((rob_out / "run.json").read_text())["kind"] == "robustness"
    # The standard suite: every corruption on the modalities whose shape it fits, and the joint fault.
    suite_out = tmp_path / "suite"
    assert main(["robustness", str(ckpt), "--results", str(suite_out), "--quiet",
                 "--suite", str(ROOT / "studies" / "robustness_suite.toml")]) == 0
    rs = pd.read_parquet(suite_out / "robustness.parquet")
    assert set(rs["corruption"]) == {"gaussian", "speckle", "missing", "clouds", "haze", "blur", "resolution",
                                     "misregistration", "band_drop", "clouds_and_speckle"}
    assert set(rs.loc[rs["corruption"] == "band_drop", "modality"]) == {"eo"}  # 1-band SAR: skipped
    assert set(rs.loc[rs["corruption"] == "clouds", "level"]) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert set(rs.loc[rs["corruption"] == "clouds_and_speckle", "modality"]) == {"eo+sar"}
    summary = pd.read_parquet(suite_out / "robustness_summary.parquet")
    assert (summary["modality"] == "all").sum() == 1 and summary["mra"].notna().all()
    # every row's metric on the 200 bootstrap resamples of the test split, and 95 % intervals from them
    assert rs["boot"].map(len).eq(200).all() and rs["clean_boot"].map(len).eq(200).all()
    assert (summary["mra_lo"] < summary["mra_hi"]).all() and (summary["clean_lo"] <= summary["clean"]).all()
    assert (summary["clean"] <= summary["clean_hi"]).all() and (summary["clean_lo"] < summary["clean_hi"]).all()
    assert summary["ce_lo"].isna().all()  # no baseline here
    bad_suite = tmp_path / "bad_suite.toml"
    bad_suite.write_text("[train]\nepochs = 1\n")
    capsys.readouterr()
    assert main(["robustness", str(ckpt), "--results", str(tmp_path / "s2"), "--suite", str(bad_suite)]) == 2
    assert "--suite" in capsys.readouterr().err and not (tmp_path / "s2").exists()
    # It goes through the same results-directory guard: not into the training run's directory, nor into
    # a robustness directory of another sweep; both left intact.
    before = (out / "trials.parquet").read_bytes()
    assert main(["robustness", str(ckpt), "--results", str(out), "--quiet"]) == 2
    assert main(["robustness", str(ckpt), "--results", str(rob_out), "--quiet",
                 "--set", "robustness.modalities=[\"eo\"]"]) == 2
    assert "holds" in capsys.readouterr().err
    assert (out / "trials.parquet").read_bytes() == before
    assert set(pd.read_parquet(rob_out / "robustness.parquet")["modality"]) == {"sar"}

    # Stored files of another layout are refused by name (one format_version each), never half-read.
    import torch

    old = torch.load(ckpt, weights_only=False)
    old_ckpt = tmp_path / "old.pt"
    torch.save({k: v for k, v in old.items() if k != "format_version"}, old_ckpt)
    capsys.readouterr()
    assert main(["robustness", str(old_ckpt), "--results", str(tmp_path / "rob-old"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(old_ckpt) in err and "checkpoint format None" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "rob-old").exists()
    meta["format_version"] = 0
    (out / "run.json").write_text(json.dumps(meta))
    assert main(["best", str(out)]) == 2
    err = capsys.readouterr().err
    assert "run.json" in err and "results format 0" in err and len(err.strip().splitlines()) == 1


BAD = [
    ("[train\nlr = 1", "malformed TOML"),
    ("[train]\nlearning_rate = 0.1", "train.learning_rate: unknown key"),
    ("[train]\nlr = -0.1", "train.lr: must be > 0"),
    ("[train]\nepochs = \"ten\"", "train.epochs: expected an integer"),
    ("[balance]\nmethod = \"mu_target\"\ntarget = {eo = 1.5, sar = -0.5}", "balance.target.eo: must be <= 1.0"),
    ("[balance]\nmethod = \"mu_target\"\ntarget = {eo = 0.7, sar = 0.2}", "balance.target: fractions must sum to 1"),
    ("[balance]\nmethod = \"mu_target\"\ntarget = {eo = 0.75, lidar = 0.25}", "balance.target.lidar: unknown modality"),
    ("[balance]\nmethod = \"mu_target\"\ntarget = {eo = 1.0}", "balance.target: missing modality 'sar'"),
    ("[balance]\nmethod = \"mu_target\"", "balance.target: required"),
    ("[data]\nname = \"mnist\"", "data.name: unknown data set"),
    ("[data]\nname = \"mavoc_folder\"\nroot = \"/no/such/dir\"", "data.root: folder not found"),
]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_run_file_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            text: str, message: str) -> None:
    out = tmp_path / "res"
    code = main(["train", str(run_file(tmp_path, text)), "--results", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("raybal: error:")
    assert message in err
    assert not out.exists(), "nothing may be written on bad input"


def test_missing_file_and_bad_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(tmp_path / "nope.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["train", str(run_file(tmp_path)), "--set", "train.lr=-1", "--results", str(tmp_path / "r")]) == 2
    assert "train.lr: must be > 0" in capsys.readouterr().err
    assert main(["robustness", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_console_script_help() -> None:
    out = subprocess.run([sys.executable, "-m", "raybal.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "COMMAND" in out.stdout and not out.stderr, out.stderr


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command line that ends in a parser: the top level, each sub-command, each sub-sub-command."""
    out = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _commands(sub, (*prefix, name))
    return out


def test_every_command_explains_itself(capsys: pytest.CaptureFixture[str]) -> None:
    from raybal.cli import build_parser

    commands = _commands(build_parser())
    assert {("train",), ("study", "run"), ("study", "resume"), ("best",), ("report",), ("robustness",),
            ("info",)} <= set(commands)
    for cmd in commands:
        with pytest.raises(SystemExit) as stop:
            main([*cmd, "--help"])
        out = capsys.readouterr().out
        assert stop.value.code == 0 and out.startswith("usage: raybal"), cmd
        assert len(out.splitlines()) > 3, (cmd, out)


def test_info_gives_one_whole_sentence_per_entry_and_an_entrys_knobs(capsys: pytest.CaptureFixture[str]) -> None:
    from raybal.balancing import METHODS
    from raybal.data import DATASETS
    from raybal.models import MODELS
    from raybal.noise import CORRUPTIONS

    assert main(["info"]) == 0
    lines = {line.split()[0]: line.split(None, 1)[1] for line in capsys.readouterr().out.splitlines()
             if line.startswith("  ")}
    for reg in (DATASETS, MODELS, METHODS, CORRUPTIONS):
        for name in reg.names():
            assert lines.get(name, "").endswith("."), (name, lines.get(name))  # a sentence, whole
    assert main(["info", "mu_target"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mu_target (balancing method): Utilization-targeted")
    assert "tolerance = 0.05 [> 0.0, <= 0.5]  max |MU share - target|" in out
    assert "weight = 'adaptive' ['adaptive' | 'warmup']" in out
    assert main(["info", "no_such_thing"]) == 2
    assert "unknown name 'no_such_thing'" in capsys.readouterr().err


def test_worker_count_must_divide_the_global_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(run_file(tmp_path)), "--workers", "3", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("raybal: error: train.batch_size: the global batch") and "train.workers = 3" in err
    assert not (tmp_path / "r").exists()
