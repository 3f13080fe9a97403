"""What Optuna hears about a trial: a stopped trial is pruned, never a NaN value (issue 16)."""

from __future__ import annotations

import math

import optuna
from optuna.trial import TrialState
from ray import tune

from raybal.searcher import StudySearch


def _searcher(metric):  # noqa: ANN001, ANN202
    mode = ["max"] * len(metric) if isinstance(metric, list) else "max"
    return StudySearch(space={"x": tune.uniform(0.0, 1.0)}, metric=metric, mode=mode,
                       sampler=optuna.samplers.RandomSampler(seed=0))


def test_a_stopped_trial_is_pruned_and_a_final_nan_is_a_failure() -> None:
    s = _searcher("robust.val_mean_accuracy")
    for t in ("stopped", "done", "nan", "error"):
        assert s.suggest(t) is not None
    # ASHA stopped it after epoch 2: its last report is a per-epoch one, the robust objective still NaN.
    s.on_trial_complete("stopped", {"robust.val_mean_accuracy": math.nan, "val_accuracy": 0.8, "epoch": 2})
    s.on_trial_complete("done", {"robust.val_mean_accuracy": 0.71, "epoch": 8, "done_ok": 1})
    s.on_trial_complete("nan", {"robust.val_mean_accuracy": math.nan, "epoch": 8, "done_ok": 1})
    s.on_trial_complete("error", {"robust.val_mean_accuracy": 0.5, "epoch": 3}, error=True)
    trials = s._ot_study.trials
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    assert trials[1].value == 0.71


def test_multi_objective_stopped_trials_are_pruned_too() -> None:
    s = _searcher(["robust.val_mean_accuracy", "final.val_accuracy"])
    s.suggest("a")
    s.suggest("b")
    s.on_trial_complete("a", {"robust.val_mean_accuracy": math.nan, "final.val_accuracy": 0.9, "epoch": 1})
    s.on_trial_complete("b", {"robust.val_mean_accuracy": 0.7, "final.val_accuracy": 0.9, "done_ok": 1})
    assert [t.state for t in s._ot_study.trials] == [TrialState.PRUNED, TrialState.COMPLETE]
    assert s._ot_study.trials[1].values == [0.7, 0.9]
