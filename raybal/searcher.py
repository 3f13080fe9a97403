"""Ray Tune's Optuna searcher, told the truth about trials that did not finish (issue 16).

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
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.search.optuna import OptunaSearch


class StudySearch(OptunaSearch):
    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        # A resumed study restores this searcher from Tune's last snapshot while a persistent storage
        # (study.storage) is newer: a trial the snapshot thought running may be finished there already.
        # Its reports are then history, not news (optuna refuses them: UpdateFinishedTrialError).
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            pass

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if error:
            result = None  # a trial that raised after some reports: failed (Ray would tell its last value)
        elif result:
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            values = [result.get(m) for m in metrics]
            if not result.get("done_ok"):
                result = None  # stopped early (or skipped): OptunaSearch tells it as pruned
            elif any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
                result, error = None, True  # finished without a finite objective: failed
        super().on_trial_complete(trial_id, result=result, error=error)
