"""Which searched knob matters (issue 36): importance over configuration means, its stability, its limits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_best import _run, _study_dir

from raybal.analysis.best import best_trial, format_best
from raybal.analysis.importance import MIN_CONFIGS, importance


def _configs(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` configurations whose objective is set by ``a`` alone (b and c are noise knobs)."""
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0, 1, n), rng.uniform(1e-4, 1e-2, n)
    c = rng.choice(["x", "y", "z"], n)
    return pd.DataFrame({"a": a, "b": b, "c": c, "obj": a + 0.02 * rng.normal(size=n)})


@pytest.mark.parametrize("evaluator", ["ped_anova", "fanova"])
def test_the_one_knob_that_matters_ranks_first_steadily(evaluator: str) -> None:
    imp = importance(_configs(30), "obj", "max", ["a", "b", "c"], evaluator=evaluator, boots=10)
    assert imp.enough and next(iter(imp.values)) == "a"
    assert imp.values["a"] > 0.5 and sum(imp.values.values()) == pytest.approx(1.0)
    assert imp.first["a"] >= 0.6 and 0.3 < imp.low["a"] < imp.high["a"]  # 0.6: the sentence's "matters most"
    assert "a matters most" in imp.sentence()
    flipped = importance(_configs(30).assign(obj=lambda d: -d["obj"]), "obj", "min", ["a", "b", "c"],
                         evaluator=evaluator, boots=5)
    assert next(iter(flipped.values)) == "a"  # minimising -a: the same knob


def test_too_few_configurations_say_so_instead_of_ranking_noise() -> None:
    imp = importance(_configs(MIN_CONFIGS - 1), "obj", "max", ["a", "b", "c"])
    assert not imp.enough and not imp.values
    assert "not enough configurations to say (7; ped_anova needs 8)" in imp.sentence()
    many_knobs = _configs(9).assign(**{f"k{i}": np.arange(9) * (i + 1) for i in range(4)})
    assert not importance(many_knobs, "obj", "max", ["a", "b", "c", "k0", "k1", "k2", "k3"]).enough  # 2 per knob


def test_a_conditional_knob_is_left_out_and_named() -> None:
    df = _configs(20).assign(d=lambda x: np.where(x.index % 2 == 0, 1.0, np.nan))
    imp = importance(df, "obj", "max", ["a", "b", "d"], boots=5)
    assert imp.left_out == ["d"] and set(imp.values) == {"a", "b"} and "left out" in imp.sentence()


def test_best_says_which_knob_matters_over_the_study(tmp_path) -> None:  # noqa: ANN001
    rng = np.random.default_rng(1)
    runs = [_run(f"b{s}", "vanilla", s, 0.5, 0.5, role="baseline") for s in range(2)]
    for i, lr in enumerate(np.geomspace(1e-4, 1e-2, 12)):
        wd = float(rng.uniform(0, 0.1))
        for s in range(2):  # the objective follows the learning rate; weight decay is noise
            v = 0.6 + 0.1 * float(np.log10(lr) + 4) + 0.005 * s
            runs.append(_run(f"c{i}s{s}", "vanilla", s, v, v, train__lr=float(lr), train__weight_decay=wd))
    d = _study_dir(tmp_path, runs)
    meta = d / "study.json"
    both = '"searched": ["train.lr", "train.weight_decay"]'
    meta.write_text(meta.read_text().replace('"searched": ["train.lr"]', both))
    b = best_trial(d)
    assert b.importance is not None and b.importance.n_configs == 12  # the baseline is not a configuration
    assert next(iter(b.importance.values)) == "train.lr"
    assert "which knob matters for final.val_accuracy" in format_best(b)
    assert b.to_json()["importance"]["importance"]["train.lr"] > 0.5
    assert best_trial(d, importance=None).importance is None
    # a multi-objective study: each objective gets its own answer (test accuracy follows lr here too)
    meta.write_text(meta.read_text().replace('"objectives": [{"metric": "final.val_accuracy", "mode": "max"}]',
                                             '"objectives": [{"metric": "final.val_accuracy", "mode": "max"}, '
                                             '{"metric": "final.test_accuracy", "mode": "max"}]'))
    multi = best_trial(d)
    assert [i.metric for i in multi.other_importance] == ["final.test_accuracy"]
    assert next(iter(multi.other_importance[0].values)) == "train.lr"
    assert multi.to_json()["other_importance"][0]["metric"] == "final.test_accuracy"
