"""``raybal best`` over replicates: intervals, paired differences, failed seeds (tables written directly)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from conftest import tiny_config

from raybal.analysis.best import best_trial, format_best
from raybal.analysis.intervals import mean_interval, paired_difference
from raybal.results.schema import RunResult
from raybal.results.tables import FORMAT_VERSION, ResultsError, write_results

T_975_2 = 4.302652729749462  # Student's t, 97.5 % quantile, 2 degrees of freedom (tables: 4.303)


def test_mean_interval_matches_the_closed_form() -> None:
    iv = mean_interval([1.0, 2.0, 3.0])  # mean 2, s = 1
    assert iv.mean == 2.0 and iv.n == 3
    assert iv.high - iv.mean == pytest.approx(T_975_2 / math.sqrt(3), rel=1e-9)
    assert iv.low == pytest.approx(2.0 - T_975_2 / math.sqrt(3), rel=1e-9)
    one = mean_interval([0.7])
    assert one.mean == 0.7 and not one.defined and one.verdict("max") == "unknown"
    # paired by seed: a constant difference has zero spread, whatever the seeds' own spread
    d = paired_difference({0: 0.9, 1: 0.5, 2: 0.7, 7: 0.1}, {0: 0.8, 1: 0.4, 2: 0.6, 5: 0.3})
    assert d.n == 3 and d.mean == pytest.approx(0.1) and d.high - d.low == pytest.approx(0.0, abs=1e-12)
    assert d.verdict("max") == "better" and d.verdict("min") == "worse"
    assert paired_difference({0: 1.0, 1: 0.0}, {0: 0.0, 1: 1.0}).verdict("max") == "indistinguishable"


def test_a_bounded_metric_has_its_interval_inside_its_range() -> None:
    from raybal.analysis.intervals import bounded_interval, is_bounded, metric_interval

    spread = [0.75, 0.77, 0.94]  # three seeds far apart: the plain t interval leaves [0, 1]
    assert mean_interval(spread).high > 1.0
    iv = bounded_interval(spread)
    assert 0.0 < iv.low < iv.mean < iv.high < 1.0 and iv.mean == pytest.approx(sum(spread) / 3)
    assert bounded_interval([1.0, 1.0, 0.98]).high <= 1.0 and bounded_interval([0.0, 0.01, 0.0]).low >= 0.0
    close = [0.80, 0.81, 0.82]  # close together, away from the bounds: the two intervals nearly agree
    assert bounded_interval(close).low == pytest.approx(mean_interval(close).low, abs=2e-3)
    assert bounded_interval(close).high == pytest.approx(mean_interval(close).high, abs=2e-3)
    assert is_bounded("final.val_accuracy") and is_bounded("robust.val_mean_miou") and is_bounded("final.mu.eo")
    assert not is_bounded("final.val_loss") and not is_bounded("wall_s")
    assert metric_interval(spread, "final.val_loss") == mean_interval(spread)
    # a column named like a [0, 1] metric whose values leave [0, 1] (a raw MU in nats, a negative relative
    # drop) keeps the plain t interval
    assert not is_bounded("final.mu_raw.eo") and not is_bounded("final.val_cond_util.eo")
    assert metric_interval([-0.1, -0.05, -0.2], "final.val_accuracy") == mean_interval([-0.1, -0.05, -0.2])


def _run(tid: str, method: str, seed: int, val: float, test: float, status: str = "ok", role: str = "search",
         **kw: float) -> RunResult:
    extra = {"balance.target": {"eo": 0.75, "sar": 0.25}} if method == "mu_target" else {}
    cfg = tiny_config(balance__method=method, train__seed=seed, **extra, **kw)
    final = {"final.val_accuracy": val, "final.test_accuracy": test, "final.mu.eo": 0.8, "final.mu.sar": 0.2}
    return RunResult(trial_id=tid, config=cfg, status=status, final=final if status == "ok" else {},
                     replicate=seed, role=role)


def _study_dir(tmp_path: Path, runs: list[RunResult]) -> Path:
    d = tmp_path / "res"
    d.mkdir()
    (d / "study.json").write_text(json.dumps({
        "format_version": FORMAT_VERSION, "kind": "study", "status": "finished", "baseline": "vanilla",
        "searched": ["train.lr"],
        "objectives": [{"metric": "final.val_accuracy", "mode": "max"}],
        "best": {"metric": "final.val_accuracy", "mode": "max", "constraints": []}}))
    write_results(d, runs)
    return d


def test_best_ranks_means_over_seeds_and_compares_paired_by_seed(tmp_path: Path) -> None:
    runs = [_run(f"b{s}", "vanilla", s, v, 0.5, role="baseline") for s, v in enumerate([0.60, 0.70, 0.65])]
    # A: +0.10 over the baseline on every seed (a tight paired difference despite the seeds' spread)
    runs += [_run(f"a{s}", "vanilla", s, v + 0.10, 0.6, train__lr=0.004) for s, v in enumerate([0.60, 0.70, 0.65])]
    # B: one seed higher than any of A's, but a lower mean
    runs += [_run(f"c{s}", "vanilla", s, v, 0.7, train__lr=0.008) for s, v in enumerate([0.90, 0.55, 0.60])]
    # C: the highest values, but one seed failed: reported, never averaged
    runs += [_run("d0", "vanilla", 0, 0.99, 0.9, train__lr=0.001), _run("d1", "vanilla", 1, 0.99, 0.9, train__lr=0.001),
             _run("d2", "vanilla", 2, 0.0, 0.0, status="failed", train__lr=0.001)]
    b = best_trial(_study_dir(tmp_path, runs))
    assert b.trial_ids == ["a0", "a1", "a2"] and b.trial_id == "a0"
    assert b.value == pytest.approx(0.75) and b.interval.n == 3
    # an accuracy: the t interval of the logits (0.70, 0.80, 0.75), mapped back
    z = [math.log(v / (1 - v)) for v in (0.70, 0.80, 0.75)]
    zm = sum(z) / 3
    zs = math.sqrt(sum((v - zm) ** 2 for v in z) / 2)
    assert b.interval.high == pytest.approx(1 / (1 + math.exp(-(zm + T_975_2 * zs / math.sqrt(3)))), rel=1e-6)
    assert b.interval.low == pytest.approx(1 / (1 + math.exp(-(zm - T_975_2 * zs / math.sqrt(3)))), rel=1e-6)
    assert b.row["final.test_accuracy"] == pytest.approx(0.6)  # means over seeds
    assert b.candidates == 3  # A, B, the baseline; C is out
    assert b.vs_baseline.diff.mean == pytest.approx(0.10) and b.vs_baseline.verdict == "better"
    assert b.vs_baseline.diff.high - b.vs_baseline.diff.low < 1e-9
    nxt = b.vs_runner_up  # A - B per seed: -0.20, +0.25, +0.15
    assert nxt.diff.mean == pytest.approx((-0.20 + 0.25 + 0.15) / 3) and nxt.verdict == "indistinguishable"
    assert list(b.failed["n_failed"]) == [1] and list(b.failed["n_ok"]) == [2]
    text = format_best(b)
    assert "better than the baseline (vanilla)" in text and "NOT distinguishable from the runner-up" in text
    assert "95% CI" in text and "configurations with a failed or missing seed" in text
    js = b.to_json()
    assert js["vs_baseline"]["verdict"] == "better" and js["interval"]["n"] == 3
    assert js["failed_configs"][0]["n_failed"] == 1 and len(js["sentences"]) == 3  # + "not enough configurations"
    assert js["importance"]["enough"] is False and js["importance"]["n_configs"] == 2


def test_best_says_when_the_best_configuration_was_steered_by_validation(tmp_path: Path) -> None:
    runs = [_run(f"b{s}", "vanilla", s, 0.6, 0.5, role="baseline") for s in range(2)]
    runs += [_run(f"m{s}", "mu_target", s, 0.8, 0.6) for s in range(2)]
    for r in runs:
        r.final["final.steered_by_val"] = r.trial_id.startswith("m")
    b = best_trial(_study_dir(tmp_path, runs))
    assert b.trial_ids == ["m0", "m1"] and b.steered and b.to_json()["steered_by_val"] is True
    assert "steered by the validation split" in format_best(b)
    for r in runs:
        r.final["final.steered_by_val"] = False
    (tmp_path / "res2").mkdir()
    clean = best_trial(_study_dir(tmp_path / "res2", runs))
    assert not clean.steered and "steered" not in format_best(clean)


def test_constraints_hold_on_the_means_and_duplicates_count_once(tmp_path: Path) -> None:
    runs = [_run(f"b{s}", "vanilla", s, v, 0.5, role="baseline") for s, v in enumerate([0.6, 0.8])]
    runs += [_run("dup0", "vanilla", 0, 0.6, 0.5), _run("dup1", "vanilla", 1, 0.8, 0.5)]  # the baseline, re-proposed
    for r in runs[2:]:
        r.final["final.reused_from"] = "b" + r.trial_id[-1]
    runs += [_run(f"a{s}", "vanilla", s, v, 0.5, train__lr=0.004) for s, v in enumerate([0.95, 0.5])]
    d = _study_dir(tmp_path, runs)
    b = best_trial(d)
    assert b.trial_ids == ["a0", "a1"] and b.value == pytest.approx(0.725)
    assert b.candidates == 2  # A and the baseline: the re-proposed baseline is the same configuration
    assert b.vs_baseline.diff.mean == pytest.approx(0.025) and b.vs_baseline.diff.n == 2
    with pytest.raises(ResultsError, match="no configuration"):  # one seed's 0.95 is not A's mean
        best_trial(d, constraints=["final.val_accuracy >= 0.9"])
    low = best_trial(d, constraints=["final.val_accuracy <= 0.71"])
    assert low.is_baseline and low.trial_ids == ["b0", "b1"] and "baseline (vanilla) itself" in format_best(low)


def test_a_winning_baseline_prints_no_searched_knob_it_does_not_have(tmp_path: Path) -> None:
    """The quickstart's case: vanilla wins a search over mu_target's target; it has no target, and
    ``raybal best`` printed ``balance.target.eo = None`` for it."""
    runs = [_run(f"b{s}", "vanilla", s, 0.9, 0.9, role="baseline") for s in range(2)]
    runs += [_run(f"m{s}", "mu_target", s, 0.8, 0.8) for s in range(2)]
    d = _study_dir(tmp_path, runs)
    meta = json.loads((d / "study.json").read_text())
    (d / "study.json").write_text(json.dumps({**meta, "searched": ["balance.target.eo", "balance.target.sar"]}))
    b = best_trial(d)
    text = format_best(b).split("runners-up")[0]  # the table of runners-up has the searched columns
    assert b.is_baseline and "baseline (vanilla) itself" in text
    assert "balance.target" not in text and "None" not in text and "nan" not in text
    runner_up = best_trial(d, constraints=["final.val_accuracy <= 0.85"])
    assert "  balance.target.eo = 0.75" in format_best(runner_up)  # a configuration's own knobs still are


def test_the_pareto_set_is_over_configuration_means_of_three_objectives(tmp_path: Path) -> None:
    objs = [("final.val_accuracy", "max"), ("robust.val_mean_accuracy", "max"), ("final.val_mu_target_error", "min")]
    runs = []
    # (clean, robust, target error) per seed; means: A (0.9, 0.8, 0.02), B (0.95, 0.7, 0.05), C dominated by A
    for name, per_seed in {"a": [(0.9, 0.85, 0.01), (0.9, 0.75, 0.03)], "b": [(0.95, 0.7, 0.05), (0.95, 0.7, 0.05)],
                           "c": [(0.85, 0.8, 0.03), (0.85, 0.7, 0.03)]}.items():
        for s, (clean, robust, err) in enumerate(per_seed):
            r = _run(f"{name}{s}", "mu_target", s, clean, 0.5, train__lr={"a": 0.001, "b": 0.002, "c": 0.003}[name])
            r.final.update({"robust.val_mean_accuracy": robust, "final.val_mu_target_error": err})
            runs.append(r)
    runs += [_run(f"v{s}", "vanilla", s, 0.99, 0.5, role="baseline") for s in range(2)]  # no target error: not on it
    for r in runs[-2:]:
        r.final["robust.val_mean_accuracy"] = 0.5
    d = _study_dir(tmp_path, runs)
    meta = json.loads((d / "study.json").read_text())
    meta["objectives"] = [{"metric": m, "mode": mode} for m, mode in objs]
    (d / "study.json").write_text(json.dumps(meta))
    b = best_trial(d)
    assert b.is_baseline  # the best clean accuracy, the first objective
    front = b.pareto.set_index("trial_id")
    assert set(front.index) == {"a0", "b0"}
    assert front.loc["a0", "robust.val_mean_accuracy"] == pytest.approx(0.8)  # the mean, not one seed's
    assert "Pareto set" in format_best(b)


def test_best_target_is_the_target_with_its_uncertainty_attached(tmp_path: Path) -> None:
    from raybal.analysis.best import best_target

    runs = [_run(f"b{s}", "vanilla", s, v, 0.5, role="baseline") for s, v in enumerate([0.6, 0.7, 0.8])]
    runs += [_run(f"m{s}", "mu_target", s, v + 0.05, 0.5) for s, v in enumerate([0.6, 0.7, 0.8])]
    bt = best_target(_study_dir(tmp_path, runs))
    assert bt == {"eo": 0.75, "sar": 0.25} and isinstance(bt, dict)
    assert bt.interval.mean == pytest.approx(0.75) and bt.interval.n == 3
    assert bt.vs_baseline.diff.mean == pytest.approx(0.05) and bt.vs_baseline.verdict == "better"
    assert any("better than the baseline" in line for line in bt.sentences)


def test_a_configuration_missing_seeds_is_reported_not_ranked(tmp_path: Path) -> None:
    runs = [_run(f"b{s}", "vanilla", s, 0.6, 0.5, role="baseline") for s in range(3)]
    runs += [_run(f"a{s}", "vanilla", s, 0.7, 0.5, train__lr=0.004) for s in range(3)]
    runs += [_run("c0", "vanilla", 0, 0.99, 0.5, train__lr=0.008)]  # an interrupted study: 1 of 3 seeds
    runs = [dataclasses.replace(r, wall_s=w) for r, w in zip(runs, [5.0, 0.0, 0.0, 1.0, 2.0, 3.0, 9.0])]
    d = _study_dir(tmp_path, runs)
    meta = json.loads((d / "study.json").read_text())
    (d / "study.json").write_text(json.dumps({**meta, "repeats": 3}))
    b = best_trial(d)
    assert b.trial_ids == ["a0", "a1", "a2"] and b.candidates == 2
    assert list(b.failed["n_ok"]) == [1] and "failed or missing seed" in format_best(b)
    # a metric outside final.* / robust.* is ranked by its mean too (the baseline's first seed is the largest)
    slow = best_trial(d, metric="wall_s", mode="max")
    assert slow.trial_ids == ["a0", "a1", "a2"] and slow.value == pytest.approx(2.0)
