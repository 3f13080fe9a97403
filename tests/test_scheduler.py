"""Replicate-aware early stopping (issue 36): ASHA over configurations, the mean over their seeds at each
rung, never a decision on one seed's report; with one seed, exactly Ray's ASHA."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from raybal.study.scheduler import ReplicateASHA

STOP, CONTINUE = TrialScheduler.STOP, TrialScheduler.CONTINUE
KW = {"time_attr": "epoch", "metric": "val_accuracy", "mode": "max", "max_t": 9, "grace_period": 1,
      "reduction_factor": 3}


@dataclass
class FakeTrial:
    trial_id: str
    config: dict = field(default_factory=dict)


def _run(sched: AsyncHyperBandScheduler, trial: FakeTrial, epoch: int, value: float) -> str:
    return sched.on_trial_result(None, trial, {"epoch": epoch, "val_accuracy": value})


def test_with_one_seed_it_makes_ashas_decisions() -> None:
    rng = random.Random(0)
    ours, theirs = ReplicateASHA(repeats=1, **KW), AsyncHyperBandScheduler(brackets=1, **KW)
    trials = [FakeTrial(f"t{i}", {"train.lr": i, "train.seed": 0, "_replicate": 0, "_role": "search"})
              for i in range(30)]
    for t in trials:
        ours.on_trial_add(None, t)
        theirs.on_trial_add(None, t)
    alive = list(trials)
    decisions = stops = 0
    for epoch in range(1, 10):  # trials report in a shuffled order every epoch, some stopped on the way
        rng.shuffle(alive)
        for t in list(alive):
            value = rng.random()
            a, b = _run(ours, t, epoch, value), _run(theirs, t, epoch, value)
            assert a == b, (t.trial_id, epoch)
            decisions += 1
            if a == STOP:
                alive.remove(t)
                stops += 1
    assert decisions > 60 and 10 < stops  # the comparison saw both answers many times


def test_a_configuration_is_judged_by_the_mean_of_all_its_seeds() -> None:
    sched = ReplicateASHA(repeats=2, **{**KW, "reduction_factor": 2})

    def seeds(name: str) -> list[FakeTrial]:
        return [FakeTrial(f"{name}{k}", {"balance.method": name, "train.seed": k, "_replicate": k}) for k in (0, 1)]

    good, lucky, bad = seeds("good"), seeds("lucky"), seeds("bad")
    for t in good + lucky + bad:
        sched.on_trial_add(None, t)
    # rung 1: "good" sets the bar (mean 0.8)
    assert _run(sched, good[0], 1, 0.75) == CONTINUE and _run(sched, good[1], 1, 0.85) == CONTINUE
    # one seed of "lucky" far below the bar: no decision on it alone (Ray's ASHA, judging runs, stops it)
    assert _run(sched, lucky[0], 1, 0.10) == CONTINUE
    per_run = AsyncHyperBandScheduler(brackets=1, **{**KW, "reduction_factor": 2})
    for t in good + lucky:
        per_run.on_trial_add(None, t)
    assert [_run(per_run, t, 1, v) for t, v in ((good[0], 0.75), (good[1], 0.85), (lucky[0], 0.10))] == [
        CONTINUE, CONTINUE, STOP]
    assert _run(sched, lucky[0], 1, 0.10) == CONTINUE  # the same seed again: still waiting for the other
    # its other seed brings the mean (0.95) above the bar: it goes on
    assert _run(sched, lucky[1], 1, 1.80) == CONTINUE
    # "bad": both seeds below the median of the recorded means -> both stopped, the first at its next report
    assert _run(sched, bad[0], 1, 0.20) == CONTINUE
    assert _run(sched, bad[1], 1, 0.30) == STOP
    assert _run(sched, bad[0], 2, 0.90) == STOP
    rung = sched._brackets[0]._rungs[-1][1]  # the first rung holds configurations' means, not runs'
    assert len(rung) == 3 and sorted(rung.values()) == pytest.approx([0.25, 0.8, 0.95])


def test_a_configuration_with_a_seed_that_never_reports_is_not_stopped() -> None:
    sched = ReplicateASHA(repeats=3, **KW)
    runs = [FakeTrial(f"c{k}", {"x": 1, "train.seed": k}) for k in range(3)]
    others = [FakeTrial(f"o{k}", {"x": 2, "train.seed": k}) for k in range(3)]
    for t in runs + others:
        sched.on_trial_add(None, t)
    for t in others:
        assert _run(sched, t, 1, 0.9) == CONTINUE
    # two of three seeds far below the bar, the third failed before the rung: never stopped on two
    assert _run(sched, runs[0], 1, 0.0) == CONTINUE and _run(sched, runs[1], 1, 0.0) == CONTINUE
    assert _run(sched, runs[0], 2, 0.0) == CONTINUE and _run(sched, runs[1], 2, 0.0) == CONTINUE


def test_a_study_with_seeds_and_asha_gets_the_replicate_aware_scheduler() -> None:
    import tomllib

    from conftest import SMALL_STUDY

    from raybal.study.driver import scheduler_for
    from raybal.study.space import study_from_dict

    raw = tomllib.loads(SMALL_STUDY)
    raw["study"]["scheduler"] = "asha"
    sched = scheduler_for(study_from_dict(raw))
    assert isinstance(sched, ReplicateASHA) and sched._repeats == 2
    raw["study"]["repeats"] = 1
    one = scheduler_for(study_from_dict(raw))
    assert type(one) is AsyncHyperBandScheduler
