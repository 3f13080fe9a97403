"""A shared checkpoint or results folder can never run code: every file raybal reads back is data.

Each test plants a pickle whose ``__reduce__`` runs a shell command (``touch MARKER``) where raybal reads a
file, then checks that the marker never appeared and that the file was refused by name (or, for caches,
rebuilt). The first test shows the payload is live: unpickled, it runs."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from raybal.cli import main


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return os.system, (f"touch {self.marker}",)


def _one_line(err: str, path: Path) -> None:
    assert len(err.strip().splitlines()) == 1 and str(path) in err and err.startswith("raybal: error:"), err


def test_the_payload_runs_when_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_a_model_checkpoint_with_code_in_it_is_refused_by_raybal_robustness(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker, ckpt = tmp_path / "ran", tmp_path / "model.pt"
    torch.save({"format_version": 1, "kind": "selected", "config_json": Payload(marker), "model": {},
                "epoch": 1, "final": {}, "trial_id": "run", "normalizer": None}, ckpt)
    assert main(["robustness", str(ckpt), "--results", str(tmp_path / "rob"), "--quiet"]) == 2
    _one_line(capsys.readouterr().err, ckpt)
    assert not marker.exists() and not (tmp_path / "rob").exists()


def test_a_last_checkpoint_with_code_in_it_is_refused_on_resume(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run.toml"
    run.write_text("[data]\nn_train = 64\nn_val = 32\nn_test = 32\nimage_size = 16\n[model]\nwidth = 8\nstages = 3\n"
                   "[train]\nepochs = 1\nmu_repeats = 1\n")
    out = tmp_path / "res"
    assert main(["train", str(run), "--results", str(out), "--quiet"]) == 0
    last = out / "checkpoints" / "run" / "last.pt"
    good = torch.load(last, weights_only=True)
    marker = tmp_path / "ran"
    torch.save({**good, "method": Payload(marker)}, last)
    capsys.readouterr()
    assert main(["train", str(run), "--results", str(out), "--quiet"]) == 2  # the same run: it would resume
    _one_line(capsys.readouterr().err, last)
    assert not marker.exists()


def test_a_trial_result_file_with_code_in_it_is_refused(tmp_path: Path) -> None:
    from raybal.training.result_file import RESULT_FILE, ResultFileError, read_result

    marker = tmp_path / "ran"
    for name, content in (("pickle", pickle.dumps(Payload(marker))), ("json", b'{"format_version": 0}'),
                          ("torn", b'{"format_version": 1, "trial_id": ')):
        ckdir = tmp_path / name
        ckdir.mkdir()
        (ckdir / RESULT_FILE).write_bytes(content)
        with pytest.raises(ResultFileError, match=str(ckdir / RESULT_FILE)):
            read_result(ckdir)
    assert not marker.exists()


def test_a_planted_result_in_a_study_folder_stops_the_resume_and_runs_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], finished_study: Path) -> None:
    from raybal.training.result_file import RESULT_FILE

    out = finished_study
    # A trial folder raybal did not write, holding a slot, its record a pickle: what resume reads back.
    planted = out / "checkpoints" / "planted"
    planted.mkdir()
    marker = tmp_path / "ran"
    (planted / RESULT_FILE).write_bytes(pickle.dumps(Payload(marker)))
    (out / "slots" / "99999").write_text("planted")
    capsys.readouterr()
    assert main(["study", "resume", str(out), "--quiet"]) == 2
    _one_line(capsys.readouterr().err, planted / RESULT_FILE)
    assert not marker.exists()


def test_planted_data_and_normalisation_caches_are_rebuilt_never_run(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from raybal.data import cache_root, data_key, load_data
    from raybal.resolve import default_config

    monkeypatch.setenv("RAYBAL_CACHE", str(tmp_path / "cache"))
    cfg = default_config(**{"data.name": "digit_views", "data.normalize": True}).data
    marker = tmp_path / "ran"
    root = cache_root(cfg) / "data"
    root.mkdir(parents=True)
    torch.save({"x": Payload(marker)}, root / f"{cfg.name}-{data_key(cfg)}.pt")
    first = load_data(cfg)
    for norm in root.glob("*.norm.json"):
        norm.write_bytes(pickle.dumps(Payload(marker)))
    again = load_data(cfg)
    assert not marker.exists()
    assert torch.equal(first.train.y, again.train.y) and again.normalizer == first.normalizer


SECRET = "s3cr3t-Passw0rd"
TINY_STUDY = ("[data]\nn_train = 64\nn_val = 32\nn_test = 32\nimage_size = 16\n[model]\nwidth = 8\nstages = 3\n"
              "[train]\nepochs = 1\nmu_repeats = 1\n[study]\nobjective = \"final.val_accuracy\"\nnum_samples = 1\n"
              "baseline = \"none\"\nscheduler = \"fifo\"\nstorage = \"{storage}\"\n[search]\n"
              "\"train.lr\" = {{loguniform = [1e-3, 1e-2]}}\n")


@pytest.fixture(scope="module")
def _one_finished_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-trial study (SQLite storage), run once for the module."""
    from raybal.training.distributed import init_ray

    init_ray(None)  # the session's one local Ray (conftest.local_ray)
    root = tmp_path_factory.mktemp("finished")
    study = root / "s.toml"
    study.write_text(TINY_STUDY.format(storage="sqlite"))
    out = root / "res"
    assert main(["study", "run", str(study), "--results", str(out), "--quiet"]) == 0
    return out


@pytest.fixture
def finished_study(tmp_path: Path, _one_finished_study: Path, local_ray: None) -> Path:
    """This test's own copy of the finished study's results folder, for it to plant files in."""
    import shutil

    out = tmp_path / "res"
    shutil.copytree(_one_finished_study, out, symlinks=True)
    return out


def test_a_password_in_a_storage_url_is_never_printed_or_stored(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from raybal.config.secrets import redact
    from raybal.study.driver import study_meta
    from raybal.study.space import load_study

    assert redact(f"postgresql://alice:{SECRET}@db.example:5432/optuna") == "postgresql://alice:***@db.example:5432/optuna"
    study = tmp_path / "s.toml"
    study.write_text(TINY_STUDY.format(storage=f"postgresql+psycopg2://alice:{SECRET}@127.0.0.1:1/optuna"))
    # unreachable (or no driver): refused in one line, before anything is written, the password masked
    assert main(["study", "run", str(study), "--results", str(tmp_path / "res"), "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert SECRET not in out + err and "alice:***@" in err and "study.storage" in err
    assert not (tmp_path / "res").exists()
    # and what a study stores (study.json) masks it too
    meta = study_meta(load_study(study), "running")
    text = str(meta)
    assert SECRET not in text and "alice:***@" in text


def test_a_url_from_an_environment_variable(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch, local_ray: None) -> None:
    import json

    study = tmp_path / "s.toml"
    study.write_text(TINY_STUDY.format(storage="env:RAYBAL_TEST_STORAGE"))
    monkeypatch.delenv("RAYBAL_TEST_STORAGE", raising=False)
    assert main(["study", "run", str(study), "--results", str(tmp_path / "res"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "study.storage" in err and "RAYBAL_TEST_STORAGE" in err and "is not set" in err
    assert not (tmp_path / "res").exists()
    monkeypatch.setenv("RAYBAL_TEST_STORAGE", f"sqlite:///{tmp_path / 'optuna.db'}")
    assert main(["study", "run", str(study), "--results", str(tmp_path / "res"), "--quiet"]) == 0
    assert (tmp_path / "optuna.db").is_file()  # the variable's URL was used
    stored = json.loads((tmp_path / "res" / "study.json").read_text())
    assert stored["study_resolved"]["study"]["storage"] == "env:RAYBAL_TEST_STORAGE"  # the name, not the URL
    # Ray Tune's own state (tune/, pickles) holds the spec, never the storage or its URL
    url = str(tmp_path / "optuna.db").encode()
    leaks = [p for p in (tmp_path / "res").rglob("*")
             if p.is_file() and p.name != "optuna.db" and url in p.read_bytes()]
    assert not leaks, leaks


def test_a_results_folder_holding_links_and_foreign_files_is_reported_not_followed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], finished_study: Path) -> None:
    import pandas as pd

    from raybal.training.result_file import RESULT_FILE

    out = finished_study
    before = pd.read_parquet(out / "trials.parquet")
    # Files raybal writes have the user's usual permissions (umask), not mkstemp's 0600.
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "trials.parquet").stat().st_mode & 0o777 == 0o666 & ~umask
    # A link to a folder outside, holding a real-looking record and a slot, and a stray file.
    outside = tmp_path / "outside"
    outside.mkdir()
    real = next(p for p in (out / "checkpoints").iterdir() if (p / RESULT_FILE).is_file())
    (outside / RESULT_FILE).write_bytes((real / RESULT_FILE).read_bytes().replace(real.name.encode(), b"linked"))
    (out / "checkpoints" / "linked").symlink_to(outside, target_is_directory=True)
    (out / "slots" / "99998").write_text("linked")
    (out / "checkpoints" / "notes.txt").write_text("not raybal's")
    capsys.readouterr()
    assert main(["study", "resume", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"ignored {out / 'checkpoints' / 'linked'}: not a trial folder raybal wrote (a link)" in err
    assert f"ignored {out / 'checkpoints' / 'notes.txt'}: not a trial folder raybal wrote (a file)" in err
    after = pd.read_parquet(out / "trials.parquet")
    assert sorted(after["trial_id"]) == sorted(before["trial_id"])  # nothing recorded from the link


def test_a_study_name_is_a_plain_name_never_a_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = tmp_path / "s.toml"
    study.write_text(TINY_STUDY.format(storage="sqlite").replace("[study]\n", "[study]\nname = \"../../escape\"\n"))
    assert main(["study", "run", str(study), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "study.name" in err and "'../../escape'" in err
    assert not (tmp_path.parent.parent / "escape").exists()


def test_resume_refuses_ray_tunes_pickled_state_written_by_someone_else(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], finished_study: Path) -> None:
    out = finished_study
    foreign = next(p for p in (out / "tune").rglob("*.pkl"))
    if os.geteuid() != 0:
        pytest.skip("planting a file of another owner needs root")
    os.chown(foreign, os.getuid() + 12345, -1)  # what another user's (or a planted) file looks like
    capsys.readouterr()
    assert main(["study", "resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    _one_line(err, foreign)
    assert "another owner" in err
