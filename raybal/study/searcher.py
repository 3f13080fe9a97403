"""Ray Tune's Optuna searcher, told the truth about trials that did not finish.

Tune reports a trial's *last* result to the searcher whether the trial finished or ASHA stopped
it. A stopped trial's last result is a per-epoch report, whose objectives that only exist at the
end (robust accuracy, target error on test, ...) are NaN: Ray's ``OptunaSearch`` passes the NaN
to ``Study.tell``, Optuna refuses it ("The value nan is not acceptable") and the Optuna trial is
left running forever. Here a trial whose last report is not its final one (no ``done_ok``) is
told as **pruned**, a final report with a non-finite objective and a trial that raised as
**failed** (Ray would tell the last value of a trial that raised after reporting as complete), so
Optuna's sampler and any dashboard see what happened. Reports to a trial that the persistent storage
already holds as finished (a resumed study; Tune's snapshot is older than the database) are
ignored. Imported lazily (Ray only at the edges).

Replicates and the baseline (``study.repeats``, ``study.baseline``): the first ``repeats`` trials
this searcher hands out are the baseline's (no Optuna trial: the baseline is the reference, not a
proposal); after them every configuration Optuna proposes is handed out ``repeats`` times, once per
seed, one after the other so they run side by side. With ``study.per_method`` the methods of the
``balance.method`` choice take turns (the method is fixed with ``enqueue_trial``, Optuna samples
its knobs), so every method gets ``num_samples`` configurations. Optuna is told once per
configuration, when its last replicate ends: the mean of the objectives when every replicate
finished, *failed* when one failed, *pruned* when one was stopped. Per-epoch reports reach Optuna
from the first replicate only.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

from ray.tune.search.optuna import OptunaSearch


def replicate(values: dict[str, Any], k: int, role: str, base_seed: int) -> dict[str, Any]:
    """Search point ``values`` as its ``k``-th replicate: seed ``base_seed + k`` (replicate k of every
    configuration shares its seed with the baseline's, so differences pair by seed). ``_replicate`` and
    ``_role`` are for the trial (not config keys)."""
    seeded = {"train.seed": base_seed + k} if "train.seed" not in values else {}
    return {**values, **seeded, "_replicate": k, "_role": role}


class _TrialRef:
    """An Optuna trial in the searcher's pickled state: its storage id only (the trial holds its study)."""

    def __init__(self, trial_id: int) -> None:
        self.trial_id = trial_id


class StudySearch(OptunaSearch):
    """``storage_spec``: the Optuna storage as the study file gives it (an RDB URL, ``env:NAME``, or the
    SQLite file's URL); None for Optuna's in-memory storage. Ray Tune pickles its searcher into the
    results folder (``tune/``); an RDB storage is never pickled with it (its URL may carry a password):
    it is dropped from the state and opened again from the spec when the searcher is restored."""

    def __init__(self, *args: Any, repeats: int = 1, baseline: str | None = None, base_seed: int = 0,
                 per_method: tuple[str, ...] = (), storage_spec: str | None = None,
                 constraints: tuple[Any, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._constraints = tuple(constraints)  # study.constraints: their violations reach the sampler
        self._storage_spec = storage_spec
        self._repeats, self._baseline, self._base_seed = repeats, baseline, base_seed
        self._per_method, self._proposed = per_method, 0
        self._baseline_left = repeats if baseline else 0
        self._queue: list[tuple[str, dict[str, Any], int]] = []  # (leader, values, replicate) still to hand out
        self._leader: dict[str, str] = {}  # Tune trial id -> the id of its configuration's first replicate
        self._outcomes: dict[str, dict[str, tuple[dict[str, Any] | None, bool]]] = {}  # leader -> tid -> told

    def _portable_state(self) -> dict[str, Any]:
        from raybal.config.secrets import redact

        state = self.__dict__.copy()
        if self._storage_spec is not None:  # reopened from the spec: the storage (and its URL) stays out
            state["_storage"] = state["_ot_study"] = None
            # an Optuna trial holds its study, and so the storage: kept as its id, rebuilt on reopen
            state["_ot_trials"] = {tid: _TrialRef(t._trial_id) for tid, t in self._ot_trials.items()}
            state["_storage_spec"] = redact(self._storage_spec)  # an inline password: resume needs env:NAME
        return state

    def _reopen(self) -> None:
        if self._storage_spec is None or self._ot_study is not None:
            return
        import optuna

        from raybal.config.secrets import resolve_url

        self._storage = optuna.storages.RDBStorage(resolve_url(self._storage_spec, "study.storage"))
        self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage,
                                           sampler=self._sampler, pruner=optuna.pruners.NopPruner())
        self._ot_trials = {tid: optuna.trial.Trial(self._ot_study, t.trial_id) if isinstance(t, _TrialRef) else t
                           for tid, t in self._ot_trials.items()}

    def __getstate__(self) -> dict[str, Any]:
        return self._portable_state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reopen()

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self._portable_state(), fh)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._reopen()

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        k, seed = self._repeats, self._base_seed
        if self._baseline_left:
            self._baseline_left -= 1
            return replicate({"balance.method": self._baseline}, k - 1 - self._baseline_left, "baseline", seed)
        if self._queue:
            leader, values, rep = self._queue.pop(0)
            self._leader[trial_id] = leader
            return replicate(values, rep, "search", seed)
        if self._per_method and trial_id not in self._ot_trials:
            # the same budget for every method: they take turns; Optuna samples the method's own knobs
            self._ot_study.enqueue_trial({"balance.method": self._per_method[self._proposed % len(self._per_method)]})
            self._proposed += 1
        values = super().suggest(trial_id)
        if values is None:
            return None
        self._leader[trial_id] = trial_id
        self._outcomes[trial_id] = {}
        self._queue.extend((trial_id, dict(values), rep) for rep in range(1, k))
        return replicate(values, 0, "search", seed)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        # A resumed study restores this searcher from Tune's last snapshot while a persistent storage
        # (study.storage) is newer: a trial the snapshot thought running may be finished there already.
        # Its reports are then history, not news (optuna refuses them: UpdateFinishedTrialError).
        from optuna.exceptions import UpdateFinishedTrialError

        if self._leader.get(trial_id) != trial_id:
            return  # the baseline, or a later replicate
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            pass

    def _told(self, result: dict[str, Any] | None, error: bool) -> tuple[dict[str, Any] | None, bool]:
        """What Optuna should hear about one run: (result, error); (None, False) is pruned."""
        if error:
            return None, True  # a trial that raised after some reports: failed (Ray would tell its last value)
        if not result or not result.get("done_ok"):
            return None, False  # stopped early (or skipped): pruned
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [result.get(m) for m in metrics]
        if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
            return None, True  # finished without a finite objective: failed
        return result, False

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        leader = self._leader.get(trial_id)
        if leader is None or leader not in self._outcomes:
            return  # the baseline (or a configuration already told)
        runs = self._outcomes[leader]
        runs[trial_id] = self._told(result, error)
        if len(runs) < self._repeats:
            return
        del self._outcomes[leader]
        told = list(runs.values())
        if any(err for _, err in told):
            super().on_trial_complete(leader, result=None, error=True)
        elif any(r is None for r, _ in told):
            super().on_trial_complete(leader, result=None, error=False)
        else:
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            mean = {m: sum(float(r[m]) for r, _ in told) / len(told) for m in metrics}  # type: ignore[index]
            if self._constraints and leader in self._ot_trials:
                self._tell_constraints(leader, [r for r, _ in told])  # type: ignore[misc]
            super().on_trial_complete(leader, result=mean, error=False)

    def _tell_constraints(self, leader: str, results: list[dict[str, Any]]) -> None:
        """The constraints' violations at the means over the replicates, set on the Optuna trial before it
        is told (``Trial.set_constraint``: TPE, GP and NSGA-II read them; <= 0 is feasible)."""
        from raybal.study.space import violation

        def mean(metric: str) -> float:  # a replicate without the metric: unknown, so infeasible
            vals = [r.get(metric) for r in results]
            if any(not isinstance(v, (int, float)) for v in vals):
                return math.nan
            return sum(float(v) for v in vals) / len(vals)

        from optuna.exceptions import UpdateFinishedTrialError

        self._reopen()
        trial = self._ot_trials[leader]
        try:
            for c in self._constraints:
                trial.set_constraint(str(c), violation(c, mean(c.metric)))
        except UpdateFinishedTrialError:
            pass  # a resumed study: the persistent storage finished this trial already (see on_trial_result)
