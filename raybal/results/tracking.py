"""Optional MLflow logging (the ``[mlflow]`` extra: ``pip install 'raybal[mlflow]'``).

Each raybal run becomes one MLflow run, logged when the run is recorded (by the study driver, or
by ``raybal train``) from its :class:`~raybal.results.schema.RunResult`: the flattened config as params,
every per-epoch value of ``epochs.parquet`` as a metric ``<split>_<column>`` with ``step = epoch``,
the numeric finals (``final.*``, ``robust.*``) as metrics, and tags ``raybal.trial_id``,
``raybal.config_id``, ``raybal.role``, ``raybal.replicate``, ``raybal.status``. A study logs into
the experiment named after it, ``raybal train`` into ``raybal-train``. Logging is idempotent (a run
whose trial id the experiment already holds is not logged twice, e.g. after a resume) and never
fails the study: a tracking server that goes away mid-study costs one warning line.

Any tracking URI MLflow takes: ``sqlite:///mlflow.db`` (a local file; MLflow's recommended
backend), ``http://host:5000``, or a ``file:`` store (MLflow 3 keeps it in maintenance mode; a
``file:`` URI given here opts in with ``MLFLOW_ALLOW_FILE_STORE``). The Parquet tables stay the
record; MLflow is a view for teams that already use it.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from raybal.config import ConfigError
from raybal.config.secrets import redact

if TYPE_CHECKING:
    from raybal.results.schema import RunResult

TRIAL_TAG = "raybal.trial_id"
_BATCH = 100  # MLflow's log_batch limit for params (1000 for metrics)


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the user asked for a file store
    return MlflowClient(tracking_uri=uri)


def check_uri(uri: str, key: str) -> None:
    """A usable tracking URI, or a :class:`ConfigError` naming ``key`` (MLflow missing, unreachable)."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError(key, "MLflow logging needs the mlflow extra: pip install 'raybal[mlflow]'") from None
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # an unreachable server: fail now, not in minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        _client(uri).search_experiments(max_results=1)
    except Exception as exc:  # MlflowException, connection errors, a bad URI scheme
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        text = f"cannot use MLflow tracking URI {uri!r} ({type(exc).__name__}: {msg})"
        raise ConfigError(key, redact(text)) from None


class Tracker:
    """Logs finished raybal runs to one MLflow experiment."""

    def __init__(self, uri: str, experiment: str, spec: str | None = None) -> None:
        """``spec``: the URI as the config gives it (``env:NAME`` or the URI itself), kept for a pickled
        tracker (Ray Tune saves the study's callbacks): it is pickled with its credentials masked, never the
        resolved URI, and opened again from the spec when unpickled."""
        self.uri, self.experiment, self.spec = uri, experiment, spec if spec is not None else uri
        self._client = _client(uri)
        found = self._client.get_experiment_by_name(experiment)
        self._exp = found.experiment_id if found else self._client.create_experiment(experiment)
        self._warned = False

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": redact(self.spec), "experiment": self.experiment}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from raybal.config.secrets import resolve_url

        try:
            self.__init__(resolve_url(state["spec"], "study.mlflow"), state["experiment"], state["spec"])
        except Exception as exc:  # a masked password or an unreachable server: the Parquet tables go on
            self.uri, self.experiment, self.spec = redact(state["spec"]), state["experiment"], state["spec"]
            self._warned = True
            print(f"raybal: warning: MLflow logging to {self.uri} stopped ({type(exc).__name__}: "
                  f"{redact(str(exc).strip())[:160]}); the Parquet tables are unaffected", file=sys.stderr)

    def log(self, result: RunResult) -> str | None:
        """Log one run; returns its MLflow run id (None when it was logged before or logging failed; after a
        failure the tracker stops trying, so a lost server does not cost each later run a timeout)."""
        if self._warned:
            return None
        try:
            return self._log(result)
        except Exception as exc:
            if not self._warned:
                print(f"raybal: warning: MLflow logging to {redact(self.uri)} failed ({type(exc).__name__}: "
                      f"{str(exc).strip()[:160]}); the Parquet tables are unaffected", file=sys.stderr)
                self._warned = True
            return None

    def _log(self, r: RunResult) -> str | None:
        from mlflow.entities import Metric, Param, RunTag

        c = self._client
        if c.search_runs([self._exp], filter_string=f"tags.`{TRIAL_TAG}` = '{r.trial_id}'", max_results=1):
            return None
        tags = {TRIAL_TAG: r.trial_id, "raybal.config_id": r.config.digest(seed=False), "raybal.role": r.role,
                "raybal.replicate": str(r.replicate), "raybal.status": r.status}
        if r.error:
            tags["raybal.error"] = r.error[:500]
        run = c.create_run(self._exp, run_name=r.trial_id, tags=tags)
        rid = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in r.config.flatten().items()]
        now = int(time.time() * 1000)
        metrics = []
        for row in r.epochs:
            for k, v in row.items():
                if k not in ("trial_id", "epoch", "split") and _number(v):
                    metrics.append(Metric(f"{row['split']}_{k}", float(v), now, int(row["epoch"])))
        metrics += [Metric(k, float(v), now, 0) for k, v in r.final.items() if _number(v)]
        for i in range(0, len(params), _BATCH):
            c.log_batch(rid, params=params[i:i + _BATCH])
        for i in range(0, len(metrics), 1000):
            c.log_batch(rid, metrics=metrics[i:i + 1000])
        c.log_batch(rid, tags=[RunTag("raybal.wall_s", f"{r.wall_s:.1f}")])
        c.set_terminated(rid, status={"ok": "FINISHED", "stopped": "KILLED"}.get(r.status, "FAILED"))
        return rid


def _number(v: Any) -> bool:
    if isinstance(v, bool):
        return True
    return isinstance(v, (int, float)) and math.isfinite(float(v))
