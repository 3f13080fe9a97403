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


def test_a_benchmark_records_its_table_with_where_it_was_measured(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import _record
    import pandas as pd

    md = tmp_path / "RESULTS.md"
    md.write_text(f"# Benchmark results\n\nintro\n\n{_record.BEGIN}\nold\n{_record.END}\n\n## By hand\n\nkept\n")
    monkeypatch.setattr(_record, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(_record, "RESULTS_MD", md)
    table = pd.DataFrame({"chunk": [64, 128], "ms": [0.5, 0.25]})
    assert _record.record("bench_x", table, quick=True) is None and not (tmp_path / "results").exists()
    path = _record.record("bench_x", table)
    stored = pd.read_parquet(path)
    assert list(stored["ms"]) == [0.5, 0.25] and set(_record.STAMP) <= set(stored.columns)
    assert stored["commit"].iloc[0] and "CPUs" in stored["machine"].iloc[0]
    text = md.read_text()
    assert "### bench_x" in text and f"Measured at `{stored['commit'].iloc[0]}`" in text and "0.25" in text
    assert "old" not in text and text.endswith("## By hand\n\nkept\n") and text.startswith("# Benchmark results")
