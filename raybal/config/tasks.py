"""What each task reports: the one place that maps a task to its metric's name.

Classification reports ``accuracy``; segmentation reports ``miou`` (mean intersection over
union); multilabel (several classes per sample, multi-hot labels: BigEarthNet) reports ``map`` (mean
average precision over classes; ``micro_f1`` / ``macro_f1`` beside it). Table columns, progress
lines, study objectives and figures all derive their names from :func:`metric_name`, so a new task
is added here once.
"""

from __future__ import annotations

from typing import Literal

Task = Literal["classification", "segmentation", "multilabel"]
# A label pixel that counts nowhere (unlabelled, or no valid sensor there): cross-entropy skips it
# (PyTorch's default ignore_index) and so do the metrics, MU and the methods' per-pixel scores.
IGNORE_INDEX = -100
METRICS: dict[str, str] = {"classification": "accuracy", "segmentation": "miou", "multilabel": "map"}


def metric_name(task: str) -> str:
    """``accuracy`` for classification, ``miou`` for segmentation, ``map`` for multilabel."""
    try:
        return METRICS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(METRICS)})") from None


def metric_of_columns(columns: object) -> str:
    """The task metric a table uses, read from its column names (``final.val_miou`` / ``miou`` -> miou)."""
    cols = [str(c) for c in columns]  # type: ignore[attr-defined]
    for name in METRICS.values():
        if name in cols or f"final.val_{name}" in cols or f"val_{name}" in cols:
            return name
    return METRICS["classification"]
