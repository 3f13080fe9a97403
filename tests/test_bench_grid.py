"""The benchmarks' grid runner (``benchmarks/_grid.py``): runs trained several at a time write the
same results directory as one after another, and a failing run neither stops the others nor is lost."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import tiny_config

from raybal.results.tables import load_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _grid import run_grid  # noqa: E402


def test_parallel_grid_keeps_the_finished_runs_and_names_the_failed_one(tmp_path, monkeypatch) -> None:
    # Injected in the spawned workers through their environment: seed 1 fails at epoch 1.
    monkeypatch.setenv("RAYBAL_FAULT", "error:1:train.seed == 1")
    runs = {f"s{s}": tiny_config(**{"train.seed": s, "train.epochs": 1}) for s in (0, 1, 2)}
    with pytest.raises(RuntimeError, match=r"1 of 3 runs failed: s1$"):
        run_grid(runs, tmp_path, jobs=2)
    trials = load_results(tmp_path).trials
    assert sorted(trials["trial_id"]) == ["s0", "s2"] and (trials["status"] == "ok").all()
    # A second pass trains only what is missing (the failed run), here without the fault.
    monkeypatch.delenv("RAYBAL_FAULT")
    table = run_grid(runs, tmp_path, jobs=2)
    assert sorted(table["trial_id"]) == ["s0", "s1", "s2"]
    one = run_grid({"s1": runs["s1"]}, tmp_path / "serial", jobs=1)  # the same run, one after another
    assert float(one["final.test_accuracy"].iloc[0]) == pytest.approx(
        float(table.set_index("trial_id").loc["s1", "final.test_accuracy"]), abs=0.02)
