"""Robustness summary metrics (issue 34): mRA, relative robustness, CE and effective robustness by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from raybal.results.robust_summary import ALL, corruption_error, curve_metrics, run_columns, summary_table


def test_mra_and_relative_robustness_of_a_severity_curve() -> None:
    m = curve_metrics([1, 2, 3, 4, 5], [0.9, 0.8, 0.7, 0.6, 0.5], 1.0)
    assert m["mra"] == pytest.approx(0.7)
    # the clean point (0, 1.0) first; levels scaled to [0, 1]: 0.2 (0.95 + 0.85 + 0.75 + 0.65 + 0.55)
    assert m["rel_robustness"] == pytest.approx(0.75)
    flat = curve_metrics([1, 2, 3], [0.8, 0.8, 0.8], 0.8)
    assert flat == {"mra": pytest.approx(1.0), "rel_robustness": pytest.approx(1.0)}


def test_a_level_0_in_the_sweep_is_the_clean_point() -> None:
    m = curve_metrics([0.12, 0.0, 0.06], [0.6, 0.95, 0.8], 0.95)  # any order
    assert m["mra"] == pytest.approx((0.8 + 0.6) / 2 / 0.95)
    assert m["rel_robustness"] == pytest.approx((0.5 * (0.95 + 0.8) / 2 + 0.5 * (0.8 + 0.6) / 2) / 0.95)
    assert math.isnan(curve_metrics([1], [0.5], 0.0)["mra"])


def test_corruption_error_is_summed_errors_relative_to_the_baseline() -> None:
    assert corruption_error([1, 2], [0.9, 0.8], [0.8, 0.6]) == pytest.approx((0.1 + 0.2) / (0.2 + 0.4))
    assert corruption_error([0, 1], [1.0, 0.9], [1.0, 0.8]) == pytest.approx(0.1 / 0.2)  # level 0 left out


def _rows(tid: str, vals: list[float], cor: str = "clouds") -> list[dict]:
    return [{"trial_id": tid, "split": "test", "modality": "eo", "corruption": cor, "level": float(i + 1),
             "accuracy": v} for i, v in enumerate(vals)]


def test_the_summary_pairs_the_baseline_by_seed_and_adds_an_all_row() -> None:
    trials = pd.DataFrame([
        {"trial_id": "b0", "status": "ok", "role": "baseline", "replicate": 0, "final.test_accuracy": 0.9},
        {"trial_id": "b1", "status": "ok", "role": "baseline", "replicate": 1, "final.test_accuracy": 0.8},
        {"trial_id": "m0", "status": "ok", "role": "search", "replicate": 0, "final.test_accuracy": 1.0},
        {"trial_id": "m1", "status": "ok", "role": "search", "replicate": 1, "final.test_accuracy": 1.0},
        {"trial_id": "f0", "status": "failed", "role": "search", "replicate": 0, "final.test_accuracy": None}])
    rob = pd.DataFrame(_rows("b0", [0.6, 0.3]) + _rows("b1", [0.4, 0.2]) + _rows("m0", [0.9, 0.7])
                       + _rows("m0", [0.8, 0.8], "haze") + _rows("b0", [0.9, 0.9], "haze")
                       + _rows("b1", [0.8, 0.8], "haze") + _rows("m1", [0.5, 0.5]))
    s = summary_table(trials, rob, "accuracy").set_index(["trial_id", "modality", "corruption"])
    m0 = s.loc[("m0", "eo", "clouds")]
    assert m0["clean"] == 1.0 and m0["mra"] == pytest.approx(0.8) and m0["levels"] == 2
    assert m0["ce"] == pytest.approx((0.1 + 0.3) / (0.4 + 0.7))  # against b0 (seed 0), not b1
    b0_mra = (0.6 + 0.3) / 2 / 0.9
    assert m0["effective_robustness"] == pytest.approx(1.0 * (0.8 - b0_mra))
    assert s.loc[("m1", "eo", "clouds"), "ce"] == pytest.approx(1.0 / (0.6 + 0.8))  # against b1
    allrow = s.loc[("m0", ALL, ALL)]
    haze = s.loc[("m0", "eo", "haze")]
    assert allrow["ce"] == pytest.approx((m0["ce"] + haze["ce"]) / 2)  # mCE: the mean over corruptions
    assert allrow["mra"] == pytest.approx((m0["mra"] + haze["mra"]) / 2) and allrow["levels"] == 4
    assert math.isnan(s.loc[("b0", "eo", "clouds"), "ce"])  # the baseline is the reference, not compared
    assert "f0" not in s.index.get_level_values(0)
    assert not s.index.duplicated().any()


def test_run_columns_are_the_all_rows_values() -> None:
    cols = run_columns(_rows("m0", [0.9, 0.7]) + _rows("m0", [0.8, 0.8], "haze"), "accuracy", {"test": 1.0})
    assert cols["robust.test_mra"] == pytest.approx((0.8 + 0.8) / 2)
    assert set(cols) == {"robust.test_mra", "robust.test_rel_robustness"}


def test_mra_and_relative_robustness_are_study_objectives() -> None:
    from conftest import tiny_config

    from raybal.config import ConfigError
    from raybal.study.objectives import StudySettings, resolve_objectives

    base = tiny_config(**{"robustness.enabled": True})
    for name in ("robust.val_mra", "robust.val_rel_robustness"):
        (obj,) = resolve_objectives(StudySettings(objective=name), base)
        assert obj.mode == "max"
    with pytest.raises(ConfigError, match="test metric"):
        resolve_objectives(StudySettings(objective="robust.test_mra"), base)


def test_a_confirmation_run_is_compared_with_the_baselines_confirmation_run_of_its_seed() -> None:
    """raybal confirm: a confirmation run's seed (1000) is not the search baseline's (0): it is compared with
    the baseline configuration's confirmation run of seed 1000, not with a search run by replicate."""
    def row(tid: str, cfg: str, role: str, rep: int, seed: int, acc: float) -> dict:
        return {"trial_id": tid, "config_id": cfg, "status": "ok", "role": role, "replicate": rep,
                "train.seed": seed, "final.test_accuracy": acc}

    trials = pd.DataFrame([row("b0", "B", "baseline", 0, 0, 0.9), row("m0", "M", "search", 0, 0, 1.0),
                           row("cb0", "B", "confirm", 0, 1000, 0.8), row("cm0", "M", "confirm", 0, 1000, 1.0)])
    rob = pd.DataFrame(_rows("b0", [0.6, 0.3]) + _rows("m0", [0.9, 0.7]) + _rows("cb0", [0.4, 0.2])
                       + _rows("cm0", [0.5, 0.5]))
    s = summary_table(trials, rob, "accuracy").set_index(["trial_id", "modality", "corruption"])
    assert s.loc[("m0", "eo", "clouds"), "ce"] == pytest.approx((0.1 + 0.3) / (0.4 + 0.7))  # against b0
    assert s.loc[("cm0", "eo", "clouds"), "ce"] == pytest.approx((0.5 + 0.5) / (0.6 + 0.8))  # against cb0
    assert math.isnan(s.loc[("cb0", "eo", "clouds"), "ce"])  # the baseline's own confirmation run


def test_each_statistic_has_its_bootstrap_interval_paired_with_the_baseline_resample_by_resample() -> None:
    import numpy as np

    trials = pd.DataFrame([
        {"trial_id": "b0", "status": "ok", "role": "baseline", "replicate": 0, "final.test_accuracy": 0.9},
        {"trial_id": "m0", "status": "ok", "role": "search", "replicate": 0, "final.test_accuracy": 1.0},
        {"trial_id": "n0", "status": "ok", "role": "search", "replicate": 0, "final.test_accuracy": 1.0}])
    m = {1: np.array([0.9, 0.8, 1.0, 0.85]), 2: np.array([0.7, 0.6, 0.75, 0.65])}
    b = {1: np.array([0.6, 0.5, 0.7, 0.55]), 2: np.array([0.3, 0.2, 0.4, 0.25])}
    mc, bc = np.array([1.0, 0.95, 1.0, 0.9]), np.array([0.9, 0.85, 0.95, 0.8])

    def rows(tid: str, vals: list[float], boot: dict | None, clean: np.ndarray | None) -> list[dict]:
        out = _rows(tid, vals)
        for r in out:
            r["boot"] = list(boot[int(r["level"])]) if boot else None
            r["clean_boot"] = list(clean) if boot else None
        return out

    rob = pd.DataFrame(rows("m0", [0.9, 0.7], m, mc) + rows("b0", [0.6, 0.3], b, bc)
                       + rows("n0", [0.9, 0.7], None, None))  # n0: a sweep without resamples
    rob["resamples"] = rob["boot"].map(lambda v: "4x10@0" if v is not None else None)
    s = summary_table(trials, rob, "accuracy").set_index(["trial_id", "modality", "corruption"])
    mra = (m[1] + m[2]) / 2 / mc
    rel = (0.5 * (mc + m[1]) / 2 + 0.5 * (m[1] + m[2]) / 2) / mc  # levels 0, 1, 2 scaled by 2
    ce = ((1 - m[1]) + (1 - m[2])) / ((1 - b[1]) + (1 - b[2]))
    er = mc * (mra - (b[1] + b[2]) / 2 / bc)
    for row in (s.loc[("m0", "eo", "clouds")], s.loc[("m0", ALL, ALL)]):  # one curve: the all-row's too
        for k, per in (("clean", mc), ("mra", mra), ("rel_robustness", rel), ("ce", ce),
                       ("effective_robustness", er)):
            lo, hi = np.percentile(per, [2.5, 97.5])
            assert (row[f"{k}_lo"], row[f"{k}_hi"]) == (pytest.approx(lo), pytest.approx(hi)), k
    n0 = s.loc[("n0", "eo", "clouds")]
    assert n0["ce"] == pytest.approx(s.loc[("m0", "eo", "clouds"), "ce"]) and math.isnan(n0["ce_lo"])
    assert math.isnan(s.loc[("b0", "eo", "clouds"), "ce_lo"])  # the reference: no CE, no interval
    assert s.loc[("b0", "eo", "clouds"), "mra_lo"] == pytest.approx(np.percentile((b[1] + b[2]) / 2 / bc, 2.5))


def test_the_all_rows_resample_is_the_mean_over_curves_and_other_resamples_are_not_paired() -> None:
    import numpy as np

    trials = pd.DataFrame([
        {"trial_id": "b0", "status": "ok", "role": "baseline", "replicate": 0, "final.test_accuracy": 0.9},
        {"trial_id": "m0", "status": "ok", "role": "search", "replicate": 0, "final.test_accuracy": 1.0}])
    boot = {("m0", "clouds"): [0.9, 0.8, 0.7], ("m0", "haze"): [0.6, 0.8, 1.0],
            ("b0", "clouds"): [0.5, 0.6, 0.7], ("b0", "haze"): [0.5, 0.5, 0.5]}
    rows = []
    for (tid, cor), vals in boot.items():
        r = _rows(tid, [float(np.mean(vals))], cor)[0]
        rows.append({**r, "boot": vals, "clean_boot": [1.0, 1.0, 1.0],
                     "resamples": "3x10@0" if tid == "m0" or cor == "clouds" else "3x10@1"})
    s = summary_table(trials, pd.DataFrame(rows), "accuracy").set_index(["trial_id", "modality", "corruption"])
    mra = (np.array(boot[("m0", "clouds")]) + np.array(boot[("m0", "haze")])) / 2  # clean 1 on each resample
    lo, hi = np.percentile(mra, [2.5, 97.5])
    assert (s.loc[("m0", ALL, ALL), "mra_lo"], s.loc[("m0", ALL, ALL), "mra_hi"]) == (pytest.approx(lo),
                                                                                       pytest.approx(hi))
    assert not math.isnan(s.loc[("m0", "eo", "clouds"), "ce_lo"])  # the baseline's resamples are its own
    assert math.isnan(s.loc[("m0", "eo", "haze"), "ce_lo"])  # drawn with another seed: no pairing
    assert not math.isnan(s.loc[("m0", "eo", "haze"), "ce"])  # the point value needs no resamples
    assert math.isnan(s.loc[("m0", ALL, ALL), "ce_lo"])  # one curve without: no all-row interval
