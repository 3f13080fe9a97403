"""What Optuna hears about a trial: a stopped trial is pruned, never a NaN value (issue 16)."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune

from raybal.study.searcher import StudySearch


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


def test_replicates_share_a_point_and_optuna_hears_their_mean_once() -> None:
    s = StudySearch(space={"x": tune.uniform(0.0, 1.0)}, metric="m", mode="max", repeats=3, baseline="vanilla",
                    base_seed=10, sampler=optuna.samplers.RandomSampler(seed=0))
    base = [s.suggest(f"b{k}") for k in range(3)]
    assert [b["train.seed"] for b in base] == [10, 11, 12] and {b["_role"] for b in base} == {"baseline"}
    assert all(b["balance.method"] == "vanilla" for b in base)
    a = [s.suggest(f"a{k}") for k in range(3)]  # one Optuna point, three seeds
    c = [s.suggest(f"c{k}") for k in range(3)]
    assert len({p["x"] for p in a}) == 1 and [p["train.seed"] for p in a] == [10, 11, 12]
    assert [p["_replicate"] for p in c] == [0, 1, 2] and c[0]["x"] != a[0]["x"]
    assert len(s._ot_study.trials) == 2  # the baseline is not an Optuna trial
    for k, v in enumerate([0.5, 0.6, 0.7]):
        s.on_trial_result(f"a{k}", {"m": v, "training_iteration": 1})  # only a0's reaches Optuna
        s.on_trial_complete(f"b{k}", {"m": 0.1, "done_ok": 1})  # ignored
    s.on_trial_complete("a1", {"m": 0.6, "done_ok": 1})
    s.on_trial_complete("a0", {"m": 0.5, "done_ok": 1})
    assert s._ot_study.trials[0].state == TrialState.RUNNING  # waits for its last seed
    s.on_trial_complete("a2", {"m": 0.7, "done_ok": 1})
    first = s._ot_study.trials[0]
    assert first.state == TrialState.COMPLETE and first.value == 0.6 and first.intermediate_values == {1: 0.5}
    # one failed seed fails the configuration (not averaged over the rest); a stopped one prunes it
    s.on_trial_complete("c0", {"m": 0.9, "done_ok": 1})
    s.on_trial_complete("c1", {"m": 0.9, "done_ok": 1})
    s.on_trial_complete("c2", None, error=True)
    assert s._ot_study.trials[1].state == TrialState.FAIL
    d = [s.suggest(f"d{k}") for k in range(3)]
    assert d[0] is not None
    for k in range(3):
        s.on_trial_complete(f"d{k}", {"m": 0.9, "epoch": 1} if k == 1 else {"m": 0.9, "done_ok": 1})
    assert s._ot_study.trials[2].state == TrialState.PRUNED


def _space(trial):  # noqa: ANN001, ANN202 - a define-by-run space: the method, then its own knob
    method = trial.suggest_categorical("balance.method", ["vanilla", "mu_target", "ogm_ge"])
    if method == "mu_target":
        trial.suggest_float("balance.target.eo", 0.5, 0.9)
    if method == "ogm_ge":
        trial.suggest_float("balance.alpha", 0.1, 1.0)
    return None


def test_per_method_gives_every_method_the_same_budget() -> None:
    s = StudySearch(space=_space, metric="m", mode="max", per_method=("vanilla", "mu_target", "ogm_ge"), repeats=2,
                    sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    points = []
    for i in range(9):  # 9 configurations x 2 seeds
        for k in range(2):
            p = s.suggest(f"t{i}-{k}")
            if k == 0:
                points.append(p)
            s.on_trial_complete(f"t{i}-{k}", {"m": 0.9 if p["balance.method"] == "ogm_ge" else 0.1, "done_ok": 1})
    methods = [p["balance.method"] for p in points]
    assert sorted(methods) == sorted(["vanilla", "mu_target", "ogm_ge"] * 3)  # TPE alone would favour ogm_ge
    assert all(("balance.alpha" in p) == (p["balance.method"] == "ogm_ge") for p in points)
    assert all(("balance.target.eo" in p) == (p["balance.method"] == "mu_target") for p in points)
    assert [t.state for t in s._ot_study.trials].count(TrialState.COMPLETE) == 9



def test_constraints_reach_the_sampler_and_steer_it_from_the_infeasible_region() -> None:
    """Maximise x where only x <= 0.3 keeps final.val_accuracy = 1 - x >= 0.7: TPE given the constraint
    (the searcher sets each configuration's violation at the mean over its seeds with Trial.set_constraint)
    proposes fewer
    infeasible points than without it, seeded."""
    from raybal.config.constraint import Constraint

    cons = (Constraint.parse("final.val_accuracy >= 0.7"),)

    def infeasible(with_constraints: bool) -> int:
        sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=8)
        s = StudySearch(space={"x": tune.uniform(0.0, 1.0)}, metric="m", mode="max", repeats=2, sampler=sampler,
                        constraints=cons if with_constraints else ())
        bad = 0
        for i in range(40):
            pts = [s.suggest(f"t{i}r{k}") for k in range(2)]
            x = pts[0]["x"]
            bad += i >= 8 and x > 0.3
            for k in range(2):  # two seeds: accuracy 1 - x -/+ 0.02, the mean 1 - x
                s.on_trial_complete(f"t{i}r{k}", {"m": x, "final.val_accuracy": 1 - x + (0.02 if k else -0.02),
                                                  "done_ok": 1})
        if with_constraints:
            t = s._ot_study.trials[0]
            assert t.constraints == {"final.val_accuracy >= 0.7": pytest.approx(0.7 - (1 - t.params["x"]))}
        return bad

    assert infeasible(True) < infeasible(False) / 2


def test_every_sampler_is_seeded_and_nsga2_needs_two_objectives(tmp_path) -> None:  # noqa: ANN001
    from raybal.config import ConfigError
    from raybal.study.space import load_study

    base = '[data]\nn_train = 64\nn_val = 32\nn_test = 32\n[train]\nepochs = 1\n[study]\nnum_samples = 4\n'
    kinds = {"tpe": "TPESampler", "gp": "GPSampler", "random": "RandomSampler", "qmc": "QMCSampler"}
    for name, cls in kinds.items():
        p = tmp_path / f"{name}.toml"
        p.write_text(base + f'sampler = "{name}"\nconstraints = ["final.val_accuracy >= 0.5"]\n'
                     '[search]\n"train.lr" = {loguniform = [1e-4, 1e-2]}\n')
        study = load_study(p)
        a, b = study.sampler(), study.sampler()
        assert type(a).__name__ == cls
        pa = optuna.create_study(sampler=a).ask().suggest_float("lr", 1e-4, 1e-2, log=True)
        pb = optuna.create_study(sampler=b).ask().suggest_float("lr", 1e-4, 1e-2, log=True)
        assert pa == pb  # seeded by study.seed
    p = tmp_path / "nsga.toml"
    p.write_text(base + 'sampler = "nsga2"\n[search]\n"train.lr" = {loguniform = [1e-4, 1e-2]}\n')
    with pytest.raises(ConfigError, match=r"study\.sampler: \"nsga2\" is a multi-objective sampler"):
        load_study(p)
    p.write_text(base + 'sampler = "annealing"\n[search]\n"train.lr" = {loguniform = [1e-4, 1e-2]}\n')
    with pytest.raises(ConfigError, match=r"study\.sampler"):
        load_study(p)


def test_a_true_false_constraint_reaches_the_sampler_and_a_finished_trial_is_left_alone() -> None:
    from raybal.config.constraint import Constraint
    from raybal.study.driver import _numbers

    assert _numbers({"final.target_met": True, "final.val_accuracy": 0.9, "x": "text"}) == {
        "final.target_met": 1.0, "final.val_accuracy": 0.9}
    s = StudySearch(space={"x": tune.uniform(0.0, 1.0)}, metric="m", mode="max", sampler=optuna.samplers.RandomSampler(
        seed=0), constraints=(Constraint.parse("final.target_met == true"),))
    s.suggest("a")
    s.on_trial_complete("a", {"m": 0.5, "final.target_met": 1.0, "done_ok": 1})
    assert s._ot_study.trials[0].constraints == {"final.target_met == 1": 0.0}  # met: feasible
    s.suggest("b")
    s._ot_study.tell(s._ot_trials["b"], 0.4)  # a resumed study: the storage finished it already
    s.on_trial_complete("b", {"m": 0.4, "final.target_met": 0.0, "done_ok": 1})  # no UpdateFinishedTrialError
