"""Bad input: exit code 2, one line naming what is wrong, and nothing written (issue 7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from raybal.cli import main

TINY = """
[data]
n_train = 64
n_val = 32
n_test = 32
image_size = 16
[model]
width = 8
stages = 3
[train]
epochs = 1
"""
STUDY_TAIL = """
[study]
objective = "final.val_accuracy"
num_samples = 2
[search]
"train.lr" = {loguniform = [1e-3, 1e-2]}
"""


def png(path: Path, mode: str = "RGB", value: int = 50) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3) if mode == "RGB" else (8, 8), value, dtype=np.uint8), mode).save(path)


def mavoc(root: Path) -> None:
    for c in ("0", "1"):
        for i in range(3):
            png(root / "EO" / c / f"EO_{c}{i}.png", "RGB")
            png(root / "SAR" / c / f"SAR_{c}{i}.png", "L")


def manifest(root: Path, drop: str | None = None, bad_row: int | None = None) -> Path:
    rows = [{"label": i % 2, "eo": np.zeros((3, 8, 8)).tolist(), "sar": np.zeros((1, 8, 8)).tolist()}
            for i in range(10)]
    if bad_row is not None:
        rows[bad_row]["sar"] = np.zeros((1, 4, 4)).tolist()
    df = pd.DataFrame(rows)
    if drop:
        df = df.drop(columns=[drop])
    root.mkdir(parents=True, exist_ok=True)
    df.to_parquet(root / "m.parquet")
    return root / "m.parquet"


def data_case(kind: str, tmp: Path) -> str:
    """A [data] section (TOML) for one bad-data case, building the files it needs."""
    d = tmp / "data"
    if kind == "missing_path":
        return f'[data]\nname = "mavoc_folder"\nroot = "{d / "nope"}"\n'
    if kind == "empty_folder":
        (d / "EO").mkdir(parents=True)
        (d / "SAR").mkdir()
    else:
        mavoc(d) if kind in ("unpaired", "not_image") else None
    if kind == "unpaired":
        (d / "SAR" / "1" / "SAR_12.png").unlink()
    if kind == "not_image":
        (d / "SAR" / "1" / "SAR_12.png").write_text("not an image")
    if kind in ("empty_folder", "unpaired", "not_image"):
        return f'[data]\nname = "mavoc_folder"\nroot = "{d}"\nimage_size = 8\n'
    path = manifest(d, drop="sar" if kind == "manifest_column" else None,
                    bad_row=3 if kind == "manifest_shape" else None)
    return f'[data]\nname = "manifest"\npath = "{path}"\nimage_size = 8\n'


MU_TINY = TINY + '[balance]\nmethod = "mu_target"\ntarget = {eo = 0.5, sar = 0.5}\n'
RUN_CASES = [  # (id, run file text or a data-case kind, what the one line must contain)
    ("malformed_toml", "[train\nepochs = 2", "malformed TOML"),
    ("unknown_section", TINY + "[trian]\nepochs = 2\n", "trian: unknown section"),
    ("unknown_key", TINY.replace("epochs = 1", "epochs = 1\nepoch = 2"), "train.epoch: unknown key"),
    ("wrong_type", TINY.replace("epochs = 1", 'epochs = "two"'), "train.epochs:"),
    ("out_of_range", TINY.replace("epochs = 1", "epochs = 1\nlr = -1.0"), "train.lr: must be > 0"),
    ("target_sum", TINY + '[balance]\nmethod = "mu_target"\ntarget = {eo = 0.5, sar = 0.6}\n',
     "balance.target: fractions must sum to 1"),
    ("target_modality", TINY + '[balance]\nmethod = "mu_target"\ntarget = {eo = 0.5, nir = 0.5}\n',
     "balance.target.nir: unknown modality"),
    ("unknown_profile", TINY.replace("n_train = 64", 'n_train = 64\nprofile = "ntire"'),
     "data.profile: unknown profile 'ntire' (known: default, ntire21)"),
    ("augment_noise_text", TINY + "[data.augment]\nnoise = {eo = \"0.1\"}\n",
     "data.augment.noise.eo: expected a variance (a number), got '0.1'"),
    ("augment_noise_modality", TINY + "[data.augment]\nnoise = {ir = 0.1}\n",
     "data.augment.noise.ir: unknown modality 'ir'"),
    ("augment_corruption_name", TINY + "[data.augment]\ncorruptions = {eo = {fog = 0.3}}\n",
     "data.augment.corruptions.eo.fog: unknown corruption 'fog'"),
    ("augment_corruption_probability", TINY + "[data.augment]\ncorruptions = {eo = {clouds = 1.5}}\n",
     "data.augment.corruptions.eo.clouds: a probability in [0, 1], got 1.5"),
    ("augment_corruption_shape", TINY + "[data.augment]\ncorruptions = {sar = {band_drop = 0.2}}\n",
     "data.augment.corruptions.sar.band_drop: on modality 'sar'"),
    ("tolerance_zero", MU_TINY + 'tolerance = 0.0\n', "balance.tolerance: must be > 0"),
    ("tolerance_large", MU_TINY + 'tolerance = 0.6\n', "balance.tolerance: must be <= 0.5"),
    ("warmup_range", MU_TINY + 'warmup = 1.5\n', "balance.warmup: must be <= 1"),
    ("growth_with_steps", MU_TINY + 'growth = 1.0\n', "balance.growth: only with balance.schedule"),
    ("select_target_vanilla", TINY.replace("epochs = 1", 'epochs = 1\nselect = "target"'),
     "train.select: \"target\" needs a method with a utilization target"),
    ("unknown_dataset", TINY.replace("[data]", '[data]\nname = "imagenet"'), "data.name: unknown"),
    ("unknown_model", TINY.replace("[model]", '[model]\nname = "resnet"'), "model.name: unknown"),
    ("unknown_method", TINY + '[balance]\nmethod = "magic"\n', "balance.method: unknown"),
    ("unknown_corruption", TINY + '[robustness]\ncorruptions = ["fog"]\n', "robustness.corruptions[0]: unknown"),
    ("joint_one_modality", TINY + '[robustness]\nenabled = true\njoint = {storm = {eo = "clouds"}}\n',
     "robustness.joint.storm: a table of at least two modality = corruption pairs"),
    ("joint_name_clash", TINY + '[robustness]\nenabled = true\njoint = {clouds = {eo = "clouds", sar = "speckle"}}\n',
     "robustness.joint.clouds: 'clouds' is a corruption's name"),
    ("joint_shape", TINY + '[robustness]\nenabled = true\njoint = {storm = {eo = "clouds", sar = "band_drop"}}\n',
     "robustness.joint.storm.sar: band_drop on modality 'sar'"),
    ("band_missing", TINY + '[robustness]\nenabled = true\nbands = {dead_nir = {eo = [1, 7]}}\n',
     "robustness.bands.dead_nir.eo: on modality 'eo': band 7 does not exist: the modality has 3 bands (0-2)"),
    ("band_not_an_index", TINY + '[robustness]\nenabled = true\nbands = {dead = {eo = ["nir"]}}\n',
     "robustness.bands.dead.eo: a list of band indices"),
    ("severity_range", TINY + '[robustness]\nenabled = true\ncorruptions = ["clouds"]\nlevels = {clouds = [2, 6]}\n',
     "robustness.levels.clouds[1]: a severity, one of 1-5, got 6"),
    ("missing_rate", TINY + '[robustness]\nenabled = true\ncorruptions = ["missing"]\nlevels = {missing = [1.5]}\n',
     "robustness.levels.missing[0]: must be in [0, 1]"),
    ("band_drop_one_band", TINY + '[robustness]\nenabled = true\nmodalities = ["sar"]\n'
     'corruptions = ["gaussian", "band_drop"]\n', "robustness.corruptions[1]: band_drop on modality 'sar'"),
    ("image_corruption_on_vectors", '[data]\nname = "digit_views"\n[train]\nepochs = 1\n[robustness]\nenabled = true\n'
     'corruptions = ["misregistration"]\n', "robustness.corruptions[0]: misregistration applies to no modality"),
    ("missing_path", "data:missing_path", "data.root: folder not found"),
    ("empty_folder", "data:empty_folder", "empty folder"),
    ("unpaired", "data:unpaired", "unpaired chip"),
    ("not_image", "data:not_image", "not an image"),
    ("manifest_column", "data:manifest_column", "missing column 'sar'"),
    ("manifest_shape", "data:manifest_shape", "differs"),
]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("raybal: error: ")
    return err[0]


@pytest.mark.parametrize("case, text, expect", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_bad_run_input(case: str, text: str, expect: str, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    if text.startswith("data:"):
        text = data_case(text[5:], tmp_path) + "[model]\nwidth = 8\nstages = 3\n[train]\nepochs = 1\n"
    run = tmp_path / "run.toml"
    run.write_text(text)
    out = tmp_path / "results"
    assert main(["train", str(run), "--results", str(out)]) == 2
    assert expect in one_error_line(capsys)
    assert not out.exists(), "bad input must not write anything"
    # the same run file as a study base is refused the same way, before Ray starts
    study = tmp_path / "study.toml"
    study.write_text(text + STUDY_TAIL if case != "malformed_toml" else text)
    assert main(["study", "run", str(study), "--results", str(out)]) == 2
    assert expect in one_error_line(capsys)
    assert not out.exists()


SEARCH_CASES = [
    ('"train.lr" = {uniform = [0.1, 0.01]}', "search.train.lr.uniform: low 0.1 > high 0.01"),
    ('"train.lr" = {gaussian = [0, 1]}', "unknown distribution"),
    ('"train.lrate" = {uniform = [0.1, 0.2]}', "search.train.lrate: unknown key"),
    ('"balance.method" = {choice = ["vanilla", "magic"]}', "search.balance.method: unknown"),
]


@pytest.mark.parametrize("search, expect", SEARCH_CASES)
def test_bad_search_space(search: str, expect: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = tmp_path / "study.toml"
    study.write_text(TINY + '[study]\nobjective = "final.val_accuracy"\n[search]\n' + search + "\n")
    assert main(["study", "run", str(study), "--results", str(tmp_path / "res")]) == 2
    assert expect in one_error_line(capsys)
    assert not (tmp_path / "res").exists()


STUDY_CASES = [
    ("repeats = 0", '"train.lr" = {uniform = [0.001, 0.01]}', "study.repeats: must be >= 1"),
    ('baseline = "magic"', '"train.lr" = {uniform = [0.001, 0.01]}', "study.baseline: unknown balancing method"),
    ('baseline = "greedy_guided"', '"train.lr" = {uniform = [0.001, 0.01]}', "study.baseline: 'greedy_guided' cannot"),
    ("repeats = 2", '"train.seed" = {int = [0, 9]}', "search.train.seed: cannot be searched with study.repeats"),
]


@pytest.mark.parametrize("setting, search, expect", STUDY_CASES, ids=[c[0] for c in STUDY_CASES])
def test_bad_study_settings(setting: str, search: str, expect: str, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    study = tmp_path / "study.toml"
    study.write_text(TINY + f'[study]\nobjective = "final.val_accuracy"\n{setting}\n[search]\n{search}\n')
    assert main(["study", "run", str(study), "--results", str(tmp_path / "res")]) == 2
    assert expect in one_error_line(capsys)
    assert not (tmp_path / "res").exists()


def test_results_dir_of_another_study_or_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "res"
    d.mkdir()
    (d / "study.json").write_text(json.dumps({"kind": "study", "study_file": "[study]\nname = 'other'\n"}))
    (d / "trials.parquet").write_bytes(b"")  # a file that is there must stay untouched
    before = sorted(p.name for p in d.iterdir())
    study = tmp_path / "s.toml"
    study.write_text(TINY + STUDY_TAIL)
    assert main(["study", "run", str(study), "--results", str(d)]) == 2
    assert "a different study" in one_error_line(capsys)
    assert main(["study", "resume", str(d)]) == 2  # no tune/ state: nothing to resume
    assert "no study to resume" in one_error_line(capsys)
    assert main(["train", str(tmp_path / "s.toml"), "--results", str(d)]) == 2  # a run into a study's dir
    one_error_line(capsys)
    assert sorted(p.name for p in d.iterdir()) == before and (d / "trials.parquet").read_bytes() == b""


def test_best_on_empty_and_foreign_dirs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "trials.parquet").write_text("not parquet")
    for d in ("empty", "foreign", "missing"):
        assert main(["best", str(tmp_path / d)]) == 2
        one_error_line(capsys)


def test_unwritable_results_dir_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    run = tmp_path / "run.toml"
    run.write_text(TINY)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a results path under a regular file cannot be created, even by root
    assert main(["train", str(run), "--results", str(blocker / "res")]) == 2
    assert "not writable" in one_error_line(capsys)
    if os.geteuid() != 0:  # a read-only directory (root ignores permissions)
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            assert main(["train", str(run), "--results", str(ro)]) == 2
            assert "not writable" in one_error_line(capsys)
        finally:
            ro.chmod(0o700)


def test_full_disk_fails_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))  # 1 MB free
    run = tmp_path / "run.toml"
    run.write_text(TINY)
    assert main(["train", str(run), "--results", str(tmp_path / "res")]) == 2
    line = one_error_line(capsys)
    assert "only 1 MB free" in line and "RAYBAL_MIN_FREE_MB" in line
    assert not any((tmp_path / "res").iterdir()), "nothing written but the (empty) directory probe"
