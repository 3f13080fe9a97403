"""Replicate-aware early stopping: ASHA that judges a configuration by the mean over its seeds.

With ``study.repeats > 1`` every configuration runs once per seed (:mod:`raybal.study.searcher`), and
Ray Tune's ASHA would judge each run alone: a configuration is stopped when one seed looks bad at a
rung, although the study compares configurations by their mean over seeds. :class:`ReplicateASHA`
is Li et al.'s asynchronous successive halving (ASHA, MLSys 2020; Ray's ``AsyncHyperBandScheduler``
with one bracket: rungs at ``grace_period * reduction_factor ** k``, a configuration continues past a
rung when its value is in the top ``1 / reduction_factor`` of the values recorded there) with the
configuration, not the run, as the unit:

- at a rung, each seed's report is held until **every** seed of the configuration has reported there;
  only then is the mean over the seeds compared with the rung's cutoff and recorded;
- a configuration stopped at a rung stops all its seeds (each at its next report);
- a configuration one of whose seeds never reaches a rung (it failed) is never stopped there.

With one seed per configuration it makes exactly ASHA's decisions (``tests/test_scheduler.py``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from raybal.study.space import trial_values

REPLICATE_KEYS = ("train.seed", "_replicate", "_role")


def config_key(trial: Any) -> str:
    """The configuration a Tune trial runs, whatever its seed: its values without the replicate's own."""
    values = {k: v for k, v in trial_values(trial.config).items() if k not in REPLICATE_KEYS}
    return json.dumps(values, sort_keys=True, default=str)


class ReplicateASHA(AsyncHyperBandScheduler):
    """ASHA over configurations (the mean over ``repeats`` seeds at each rung); see the module docstring."""

    def __init__(self, *, repeats: int, time_attr: str, metric: str, mode: str, max_t: int, grace_period: int,
                 reduction_factor: float) -> None:
        super().__init__(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor, brackets=1)
        self._repeats = repeats
        self._held: dict[tuple[str, float], dict[str, float]] = {}  # (configuration, rung) -> run -> value
        self._stopped: set[str] = set()  # configurations stopped at a rung

    def _observe(self, trial: Any, result: dict[str, Any]) -> str:
        key = config_key(trial)
        if key in self._stopped:
            return TrialScheduler.STOP
        now, value = result[self._time_attr], result[self._metric]
        if now >= self._max_t and self._stop_last_trials:
            return TrialScheduler.STOP
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return TrialScheduler.CONTINUE
        bracket = self._brackets[0]
        for milestone, recorded in bracket._rungs:  # the highest rung reached, as ASHA
            if now < milestone:
                continue
            held = self._held.setdefault((key, milestone), {})
            if key in recorded or trial.trial_id in held:
                break  # decided for this configuration here, or this seed waits for the others
            held[trial.trial_id] = self._metric_op * float(value)
            if len(held) < self._repeats:
                break  # never a decision on fewer than every seed's report
            mean = sum(held.values()) / len(held)
            cutoff = bracket.cutoff(recorded)
            recorded[key] = mean
            if cutoff is not None and mean < cutoff:
                self._stopped.add(key)
                self._num_stopped += 1
                return TrialScheduler.STOP
            break
        return TrialScheduler.CONTINUE

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        return self._observe(trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        if result and self._time_attr in result and self._metric in result:
            self._observe(trial, result)
        self._trial_info.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._trial_info.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        return f"Using replicate-aware ASHA ({self._repeats} seeds): {len(self._stopped)} configurations stopped"
