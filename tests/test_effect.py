"""Does utilization predict the objective? (``raybal.analysis.effect``; tables written directly.)

Two studies of 4 configurations x 3 seeds with a known answer: in one the objective rises 0.05 per
+0.1 of EO share with a small additive seed effect; in the other only the seed moves it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

from raybal.analysis.best import best_trial, format_best
from raybal.analysis.effect import utilization_effect
from raybal.results.schema import RunResult
from raybal.results.tables import FORMAT_VERSION, read_table, write_results

SHARES = [0.5, 0.6, 0.7, 0.8]  # achieved EO share of each configuration (its target, met exactly)
SEED_EFFECT = {0: -0.02, 1: 0.0, 2: 0.02}


def _study(tmp_path: Path, value) -> Path:  # noqa: ANN001 - value(share, seed) -> objective
    runs = []
    for c, share in enumerate(SHARES):
        for seed in SEED_EFFECT:
            cfg = tiny_config(balance__method="mu_target", balance__target={"eo": share, "sar": 1 - share},
                              train__seed=seed)
            final = {"final.val_accuracy": value(share, seed), "final.test_accuracy": 0.9,
                     "final.mu.eo": share, "final.mu.sar": 1 - share}
            runs.append(RunResult(trial_id=f"c{c}s{seed}", config=cfg, status="ok", final=final, replicate=seed))
    d = tmp_path / "res"
    d.mkdir()
    (d / "study.json").write_text(json.dumps({
        "format_version": FORMAT_VERSION, "kind": "study", "status": "finished", "baseline": None,
        "searched": ["balance.target.eo"], "repeats": 3,
        "objectives": [{"metric": "final.val_accuracy", "mode": "max"}],
        "best": {"metric": "final.val_accuracy", "mode": "max", "constraints": []}}))
    write_results(d, runs)
    return d


def test_a_known_slope_and_its_variance_shares(tmp_path: Path) -> None:
    d = _study(tmp_path, lambda share, seed: 0.5 + 0.5 * share + SEED_EFFECT[seed])
    e = utilization_effect(read_table(d / "trials.parquet"), "final.val_accuracy", "eo")
    assert e is not None and (e.n_runs, e.n_configs, e.n_seeds) == (12, 4, 3)
    assert e.slope == pytest.approx(0.05, abs=1e-9)  # 0.5 per unit of share = 0.05 per 0.1
    # by hand: configuration SS = 3 seeds x 0.25 x sum((share - 0.65)^2) = 0.0375; seed SS = 4 x 0.0008
    ss_config, ss_seed = 0.0375, 0.0032
    assert e.share_config == pytest.approx(ss_config / (ss_config + ss_seed), abs=1e-9)
    assert e.share_seed == pytest.approx(ss_seed / (ss_config + ss_seed), abs=1e-9)
    assert e.share_rest == pytest.approx(0.0, abs=1e-9)
    assert e.r2_utilization == pytest.approx(e.share_config, abs=1e-9)  # the configuration effect is the line
    # the residuals are the seed effects: s^2 = 0.0032 / 10, Sxx = 0.15; t(0.975, 10) = 2.228
    half = 2.228138851986274 * np.sqrt(0.0032 / 10 / 0.15) * 0.1
    assert e.slope_high - e.slope == pytest.approx(half, rel=1e-6) and e.slope - e.slope_low == pytest.approx(half)
    assert e.predicts and e.share_range == (0.5, 0.8)
    text = e.sentence()
    assert "utilization explains 92 % of final.val_accuracy over 12 runs" in text
    assert "slope +5.00 points per +0.1 of eo share" in text and "the seed 8 %" in text
    assert "it predicts the objective" in text


def test_no_effect_when_only_the_seed_moves_the_objective(tmp_path: Path) -> None:
    d = _study(tmp_path, lambda share, seed: 0.8 + 5 * SEED_EFFECT[seed])
    b = best_trial(d)
    e = b.utilization
    assert e is not None and e.slope == pytest.approx(0.0, abs=1e-9) and not e.predicts
    assert e.slope_low < 0 < e.slope_high
    assert e.r2_utilization == pytest.approx(0.0, abs=1e-9) and e.share_config == pytest.approx(0.0, abs=1e-9)
    assert e.share_seed == pytest.approx(1.0, abs=1e-9)
    out = format_best(b)
    assert "no evidence that it predicts the objective" in out and "the seed 100 %" in out
    assert b.to_json()["utilization_effect"]["predicts"] is False


def test_one_run_per_configuration_has_no_variance_shares(tmp_path: Path) -> None:
    d = _study(tmp_path, lambda share, seed: 0.5 + 0.5 * share + SEED_EFFECT[seed])
    t = read_table(d / "trials.parquet")
    one = t[t["train.seed"] == 0]  # 4 configurations, one seed each: the configuration would "explain" 100 %
    e = utilization_effect(one, "final.val_accuracy", "eo")
    assert e is not None and e.slope == pytest.approx(0.05) and np.isnan(e.share_config)
    assert "the configuration explains" not in e.sentence() and e.to_json()["share_config"] is None


def test_no_answer_without_a_searched_target_or_enough_runs(tmp_path: Path) -> None:
    d = _study(tmp_path, lambda share, seed: 0.5 + 0.5 * share)
    t = read_table(d / "trials.parquet")
    assert utilization_effect(t.iloc[:3], "final.val_accuracy", "eo") is None  # 3 runs: no interval
    assert utilization_effect(t, "final.val_loss", "eo") is None  # not a column
    meta = json.loads((d / "study.json").read_text())
    (d / "study.json").write_text(json.dumps({**meta, "searched": ["train.lr"]}))
    assert best_trial(d).utilization is None and best_trial(d).to_json()["utilization_effect"] is None


def test_best_json_and_the_report_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from raybal.analysis.report import make_report
    from raybal.cli import main

    d = _study(tmp_path, lambda share, seed: 0.5 + 0.5 * share + SEED_EFFECT[seed])
    assert main(["best", str(d), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["utilization_effect"]["slope"] == pytest.approx(0.05)
    assert any(s.startswith("utilization explains") for s in out["sentences"])
    figures = {f.name: f for f in make_report(d)}
    assert figures["utilization_effect"].path is not None and figures["utilization_effect"].path.stat().st_size > 0
    assert "utilization explains" in (d / "report" / "index.html").read_text()
