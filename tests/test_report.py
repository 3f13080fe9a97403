"""``raybal report`` and the notebooks against a small real results directory (a tiny study)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient
from PIL import Image

from raybal.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study_dir(small_study: Path) -> Path:
    return small_study


def test_report_writes_every_figure(study_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = study_dir / "rep"
    assert main(["report", str(study_dir), "--out", str(out)]) == 0
    expected = ["mu_over_epochs", "accuracy_vs_noise", "achieved_vs_target", "search", "configurations", "greedy",
                "imbalance_measures", "robustness_mra"]
    html = (out / "index.html").read_text()
    for name in expected:
        png = out / f"{name}.png"
        assert png.is_file(), f"{name}.png missing: {capsys.readouterr().out}"
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            w, h = im.size
            assert im.format == "PNG" and w >= 400 and h >= 300 and w * h < 6000 * 3000
        assert f"src='{name}.png'" in html
    # every figure drawn but the importance one (4 configurations are too few to rank knobs) and the
    # confirmation's (raybal confirm has not run), each saying so
    assert "<table" in html and html.count("skipped") == 2
    assert "skipped: which knob matters for final.val_accuracy: not enough configurations" in html
    assert "skipped: no confirmation (raybal confirm DIR re-trains" in html
    # the best configuration with its interval, its difference to the baseline, and the Pareto set
    assert "Best configuration" in html and "95% CI" in html and "baseline (vanilla)" in html
    assert "Pareto set" in html
    assert not list(out.glob(".*.tmp"))  # no temporary leftovers


def test_a_study_writes_its_robustness_summary(study_dir: Path) -> None:
    import pandas as pd

    s = pd.read_parquet(study_dir / "robustness_summary.parquet")
    trials = pd.read_parquet(study_dir / "trials.parquet")
    ok = trials[trials["status"] == "ok"]
    assert set(s["trial_id"]) == set(ok["trial_id"]) and not s.duplicated(["trial_id", "split", "modality",
                                                                             "corruption"]).any()
    search = s[s["trial_id"].isin(ok.loc[ok["role"] == "search", "trial_id"])]
    base = s[s["trial_id"].isin(ok.loc[ok["role"] == "baseline", "trial_id"])]
    assert search["ce"].notna().all() and base["ce"].isna().all()  # paired with the baseline by seed
    # each with its bootstrap interval over the test samples, resample by resample against the baseline
    assert search[["ce_lo", "ce_hi", "effective_robustness_lo", "effective_robustness_hi"]].notna().all().all()
    assert (search["ce_lo"] <= search["ce"]).mean() > 0.8 and (search["ce"] <= search["ce_hi"]).mean() > 0.8
    assert (search["effective_robustness_lo"] < search["effective_robustness_hi"]).mean() > 0.8
    assert (s["rel_robustness_lo"] <= s["rel_robustness_hi"]).all()  # equal where a corruption changes nothing
    assert (s[s["modality"] == "all"].groupby("trial_id").size() == 2).all()  # one all-row per split
    t = ok.set_index("trial_id")
    allrows = s[(s["modality"] == "all") & (s["split"] == "val")].set_index("trial_id")
    assert (allrows["mra"] - t.loc[allrows.index, "robust.val_mra"]).abs().max() < 1e-9


def test_report_on_a_single_run_skips_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import tiny_config

    from raybal.training.runner import train_to_dir

    train_to_dir(tiny_config(), tmp_path / "run")
    assert main(["report", str(tmp_path / "run")]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "run" / "report" / "mu_over_epochs.png").is_file()
    assert "search               skipped: not a study" in text
    assert "skipped" in (tmp_path / "run" / "report" / "index.html").read_text()
    assert main(["report", str(tmp_path / "nothing-here")]) == 2


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")))
def test_notebook_runs(name: str, study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks with outputs cleared"
    monkeypatch.setenv("RAYBAL_RESULTS", str(study_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    if name.startswith("02"):  # it reads robustness_summary.parquet: the per-method table was shown
        assert any("rel_robustness" in str(o) for c in nb.cells for o in c.get("outputs", []))
    assert os.environ["RAYBAL_RESULTS"] == str(study_dir)


def test_labels_tell_runs_trained_with_an_augmentation_from_the_plain_method() -> None:
    """Issue 34: a vanilla run trained with noise (or a corruption) as augmentation is not the vanilla
    baseline's curve; geometric augmentations are named where the runs differ in them."""
    from raybal.analysis.runs import trial_labels

    t = pd.DataFrame({
        "trial_id": ["a", "b", "c", "d"],
        "balance.method": ["vanilla", "vanilla", "vanilla", "mu_target"],
        "balance.target.eo": [None, None, None, 0.75],
        "data.augment.noise.eo": [None, 0.1, None, None],
        "data.augment.corruptions.eo.clouds": [None, None, 0.5, None],
        "data.augment.flip": [False, False, False, False],
    })
    labels = trial_labels(t)
    assert labels.to_dict() == {"a": "vanilla", "b": "vanilla +noise eo 0.1", "c": "vanilla +clouds eo p=0.5",
                                "d": "mu_target eo=0.75"}
    flipped = trial_labels(t.assign(**{"data.augment.flip": [False, True, False, False]}))
    assert flipped["a"] == "vanilla +flip=False" and flipped["b"] == "vanilla +noise eo 0.1 +flip=True"


def test_best_ranks_and_constrains_on_mce_and_effective_robustness(study_dir: Path, capsys) -> None:  # noqa: ANN001
    import pandas as pd

    from raybal.analysis.best import best_trial
    from raybal.cli import main

    s = pd.read_parquet(study_dir / "robustness_summary.parquet")
    trials = pd.read_parquet(study_dir / "trials.parquet")
    allrows = s[(s["modality"] == "all") & (s["split"] == "test")].set_index("trial_id")
    b = best_trial(study_dir, metric="robust.test_mce", importance=None)
    assert b.mode == "min"  # a corruption error: lower is better
    search = trials[(trials["status"] == "ok") & (trials["role"] == "search")]
    means = search.assign(mce=search["trial_id"].map(allrows["ce"])).groupby("config_id")["mce"].mean()
    assert b.value == pytest.approx(means.min())  # the baseline has no mCE: never a candidate
    er = best_trial(study_dir, metric="robust.test_effective_robustness", importance=None)
    assert er.mode == "max" and not b.is_baseline and not er.is_baseline
    worst = means.max()
    kept = best_trial(study_dir, metric="final.val_accuracy",
                      constraints=[f"robust.test_mce <= {means.min() + 1e-6:.6f}"], importance=None)
    assert kept.row["robust.test_mce"] == pytest.approx(means.min()) and kept.candidates == 1  # only that one
    capsys.readouterr()
    assert main(["best", str(study_dir), "--metric", "robust.test_mce", "--constraint",
                 f"robust.test_mce <= {worst + 1:.3f}"]) == 0
    assert "robust.test_mce" in capsys.readouterr().out
