"""The one record schema: the rows of the four Parquet tables (DESIGN.md §4) and their columns.

Every row of ``trials``, ``epochs``, ``utilization`` and ``robustness`` is built here, from
what a run measured; :mod:`raybal.results.tables` only writes and reads the files. The required
columns of each table live here too, so a reader can rely on them even when no row fills them.

* :class:`RunResult`: everything one run produced, as plain records;
* :func:`epoch_row`, :func:`utilization_rows`, :func:`robustness_rows`, :func:`trial_row`: rows;
* :func:`frame` / :func:`tables_of`: the tables as pandas frames, key and required columns first.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from raybal._version import __version__
from raybal.config import RunConfig
from raybal.config.tasks import metric_name
from raybal.measure.metrics import metric_details

if TYPE_CHECKING:
    from raybal.measure.robustness import Point
    from raybal.measure.utilization import MUResult

TABLES = ("trials", "epochs", "utilization", "robustness")
KEYS = {
    "trials": ["trial_id"],
    "epochs": ["trial_id", "epoch", "split"],
    "utilization": ["trial_id", "epoch", "split", "modality"],
    "robustness": ["trial_id", "split", "modality", "corruption", "level"],
}
# Columns every table has even when no row fills them (nullable), so readers can rely on them.
REQUIRED = {
    "trials": ["trial_id", "status", "error", "config_id", "replicate", "role", "config_json", "wall_s",
               "raybal_version"],
    "epochs": ["trial_id", "epoch", "split", "loss", "lambda_mu"],
    "utilization": ["trial_id", "epoch", "split", "modality", "mu", "cond_util", "ablation_util", "shapley",
                    "learning_speed"],
    "robustness": ["trial_id", "split", "modality", "corruption", "level"],
}
STATUSES = ("ok", "failed", "stopped")
# A method with a utilization target names its knob `target` (a fractions table), so its trials
# carry one `balance.target.<modality>` column per modality; best / plots read the target there.
TARGET_PREFIX = "balance.target."


@dataclass(frozen=True)
class RunResult:
    """Everything one run produced, as plain records ready for the Parquet tables; built once, never edited
    (:func:`dataclasses.replace` makes a changed copy)."""

    trial_id: str
    config: RunConfig
    status: str = "ok"
    error: str | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)
    utilization: list[dict[str, Any]] = field(default_factory=list)
    robustness: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    checkpoint: str | None = None
    replicate: int = 0  # the seed index among a study configuration's `study.repeats` runs
    role: str = "run"  # "run" (raybal train), "search" (a study's proposal) or "baseline" (study.baseline)


def one_line(exc: BaseException) -> str:
    """An exception as one line: ``Type: first line of the message``."""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}".strip().rstrip(":")


def failed_result(config: RunConfig, trial_id: str, exc: BaseException, wall_s: float) -> RunResult:
    """A record for a run that raised: status ``failed`` and the error as one line."""
    return RunResult(trial_id=trial_id, config=config, status="failed", error=one_line(exc), wall_s=wall_s,
                     final={"error_traceback": "".join(traceback.format_exception(exc))[-4000:]})


def epoch_row(trial_id: str, epoch: int, split: str, task: str, loss: float, value: float,
              method_log: Mapping[str, float], details: Mapping[str, float | None] | None = None) -> dict[str, Any]:
    """One ``epochs.parquet`` row: the split's loss and task metric, the task's secondary metrics
    (segmentation: ``pixel_accuracy``, ``iou.<class>``), plus the method's per-epoch scalars."""
    return {"trial_id": trial_id, "epoch": epoch, "split": split, "loss": loss, metric_name(task): value,
            **(details or {}), **method_log}


def utilization_rows(trial_id: str, epoch: int, split: str, mu: MUResult, *, final: bool,
                     cond_util: Mapping[str, float | None] | None = None,
                     ablation_util: Mapping[str, float] | None = None,
                     shapley: Mapping[str, float] | None = None,
                     modality_log: Mapping[str, Mapping[str, float]] | None = None) -> list[dict[str, Any]]:
    """``utilization.parquet`` rows, one per modality: MU share (sums to 1), raw MU and the nullable
    measures (Wu et al.'s ``cond_util`` of the modality's own branch, the mean-ablation utilization
    ``ablation_util``, the Shapley contribution ``shapley``, the method's per-modality log such as
    ``learning_speed``)."""
    rows = []
    for m in mu.shares:
        row: dict[str, Any] = {
            "trial_id": trial_id, "epoch": epoch, "split": split, "modality": m, "mu": mu.shares[m],
            "mu_raw": mu.raw[m], "cond_util": (cond_util or {}).get(m),
            "ablation_util": (ablation_util or {}).get(m), "shapley": (shapley or {}).get(m), "learning_speed": None,
            "degenerate": mu.degenerate, "final": final}
        row.update((modality_log or {}).get(m, {}))
        rows.append(row)
    return rows


def with_final(rows: list[dict[str, Any]], final: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (per-epoch utilization) with the selected epoch's ``final`` rows in: a final row replaces the
    per-epoch row of its (epoch, split, modality), the same measurement with the end-of-run measures added,
    so the table keeps one row per key (``KEYS["utilization"]``)."""
    def key(r: Mapping[str, Any]) -> tuple[Any, ...]:
        return r["epoch"], r["split"], r["modality"]

    def merge(epoch_row: dict[str, Any], final_row: dict[str, Any]) -> dict[str, Any]:
        # the final row's measures added; what it leaves empty (a per-epoch log, learning_speed) is kept
        return {**epoch_row, **{k: v for k, v in final_row.items() if v is not None or k not in epoch_row}}

    finals = {key(r): r for r in final}
    merged = [merge(r, finals.pop(key(r))) if key(r) in finals else r for r in rows]
    return merged + list(finals.values())


def robustness_rows(trial_id: str, points: Iterable[Point], task: str, measure_mu: bool) -> list[dict[str, Any]]:
    """The ``robustness.parquet`` rows of a sweep's points (:func:`raybal.measure.robustness.sweep`)."""
    return [robustness_row(trial_id, p.split, p.modality, p.corruption, p.level, task, p.result, measure_mu,
                           p.boot, p.clean_boot, p.resamples) for p in points]


def robustness_row(trial_id: str, split: str, modality: str, corruption: str, level: float, task: str,
                   mu: MUResult, measure_mu: bool, boot: Sequence[float] = (),
                   clean_boot: Sequence[float] = (), resamples: str = "") -> dict[str, Any]:
    """One ``robustness.parquet`` row: the metric under one corruption, and the MU under it; ``boot`` and
    ``clean_boot`` the metric and the clean metric on each bootstrap resample (None when none was drawn),
    ``resamples`` what those were drawn from (B x n @ seed)."""
    row: dict[str, Any] = {"trial_id": trial_id, "split": split, "modality": modality, "corruption": corruption,
                           "level": level, metric_name(task): mu.metric, "loss": mu.loss,
                           "boot": [round(v, 6) for v in boot] or None,
                           "clean_boot": [round(v, 6) for v in clean_boot] or None, "resamples": resamples or None}
    details = metric_details(mu.stat, mu.total, task)
    for k in ("pixel_accuracy", "micro_f1", "macro_f1"):  # the secondary metrics that are one number
        if k in details:
            row[k] = details[k]
    if measure_mu:
        for m in mu.shares:
            row[f"mu.{m}"] = mu.shares[m]
            row[f"mu_raw.{m}"] = mu.raw[m]
    return row


def robustness_summary(rows: Iterable[Mapping[str, Any]], task: str,
                       clean: Mapping[str, float] | None = None) -> dict[str, float]:
    """``robust.<split>_mean_<metric>`` (the mean over the grid on each split), one column per grid point,
    ``robust.<split>_<metric>.<modality>.<corruption>.<level>``, and with the clean metric per split
    (``final.<split>_<metric>``) ``robust.<split>_mra`` and ``robust.<split>_rel_robustness``
    (:mod:`raybal.results.robust_summary`). A study objective can name any of them."""
    from raybal.results.robust_summary import run_columns

    metric = metric_name(task)
    rows = list(rows)
    out: dict[str, float] = run_columns(rows, metric, clean) if clean else {}
    for r in rows:
        out[f"robust.{r['split']}_{metric}.{r['modality']}.{r['corruption']}.{r['level']:g}"] = r[metric]
    for split in sorted({r["split"] for r in rows}):
        vals = [r[metric] for r in rows if r["split"] == split]
        out[f"robust.{split}_mean_{metric}"] = sum(vals) / len(vals)
    return out


def final_metrics(task: str, best_epoch: int, val: MUResult, test: MUResult,
                  measures: Mapping[str, Mapping[str, Mapping[str, float | None]]],
                  method_metrics: Mapping[str, Mapping[str, Any]], class_names: tuple[str, ...] = ()) -> dict[str, Any]:
    """The ``final.*`` columns of a trial: selected epoch, metrics (with the task's secondary ones, e.g.
    ``final.test_pixel_accuracy``, ``final.test_iou.<class>``), MU per split, the per-modality
    ``measures`` (split -> measure name -> modality -> value, e.g. ``final.val_cond_util.<m>``) and the
    method's own."""
    metric = metric_name(task)
    final: dict[str, Any] = {
        "final.best_epoch": best_epoch,
        f"final.val_{metric}": val.metric, f"final.test_{metric}": test.metric,
        "final.val_loss": val.loss, "final.test_loss": test.loss,
        "final.mu_degenerate": test.degenerate,
    }
    for split, mu in (("val", val), ("test", test)):
        for k, v in metric_details(mu.stat, mu.total, task, class_names).items():
            final[f"final.{split}_{k}"] = v
    for m in test.shares:
        final[f"final.mu.{m}"] = test.shares[m]
        final[f"final.mu_raw.{m}"] = test.raw[m]
        final[f"final.val_mu.{m}"] = val.shares[m]
    for split, by_name in measures.items():
        for name, values in by_name.items():
            for m, v in values.items():
                final[f"final.{split}_{name}.{m}"] = v
    for split, values in method_metrics.items():
        for k, v in values.items():
            final[f"final.{split}_{k}"] = v
    return final


def target_met_columns(test_error: float | None, tolerance: float | None) -> dict[str, Any]:
    """``final.target_error`` (the method's target error on the test split) and ``final.target_met``
    (that error within the method's tolerance) of a method with a utilization target."""
    met = test_error is not None and tolerance is not None and test_error <= tolerance
    return {"final.target_error": test_error, "final.target_met": bool(met)}


def trial_row(r: RunResult) -> dict[str, Any]:
    """One ``trials.parquet`` row: status, every config value flattened, the config as JSON, finals."""
    row: dict[str, Any] = {"trial_id": r.trial_id, "status": r.status, "error": r.error}
    row.update(r.config.flatten())
    row["config_json"] = r.config.to_json()
    row["config_digest"] = r.config.digest()
    # the configuration without its seed: the replicates of one study configuration share it
    row["config_id"] = r.config.digest(seed=False)
    row["replicate"], row["role"] = r.replicate, r.role
    row.update(r.final)
    row["wall_s"] = r.wall_s
    row["raybal_version"] = __version__
    row["checkpoint"] = r.checkpoint
    return row


def frame(rows: list[dict[str, Any]], table: str) -> pd.DataFrame:
    """Rows as a table: key and required columns first (present even when empty), the rest after."""
    df = pd.DataFrame(rows)
    for col in REQUIRED[table]:
        if col not in df.columns:
            df[col] = None
    first = [c for c in KEYS[table] + REQUIRED[table] if c in df.columns]
    ordered = list(dict.fromkeys(first + [c for c in df.columns if c not in first]))
    return df[ordered]


def tables_of(results: Iterable[RunResult]) -> dict[str, pd.DataFrame]:
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in TABLES}
    for r in results:
        rows["trials"].append(trial_row(r))
        rows["epochs"].extend(r.epochs)
        rows["utilization"].extend(r.utilization)
        rows["robustness"].extend(r.robustness)
    return {t: frame(v, t) for t, v in rows.items()}


def target_columns(columns: Iterable[str]) -> dict[str, str]:
    """modality -> the trials column holding its target fraction (empty when no method had one)."""
    return {c[len(TARGET_PREFIX):]: c for c in columns if str(c).startswith(TARGET_PREFIX)}
