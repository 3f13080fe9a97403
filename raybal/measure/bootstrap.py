"""Bootstrap intervals over test samples: how far a metric would move on another draw of the test set.

A split of n samples gets B resamples with replacement (Efron & Tibshirani 1993), drawn from (seed, n)
alone: every run measured on the same split with the same ``robustness.seed`` sees the same resamples, so
the intervals of what compares two runs (CE and effective robustness against the baseline) are paired,
resample by resample. Resample b's metric is the task's metric over its multiset of samples: each sample's
statistics (correct or not; its confusion matrix; its multi-label histogram entries) weighted by how often
b drew it, so accuracy, mIoU and mAP all get one. An interval is the percentile interval: the 2.5th and
97.5th percentiles of the B values (:func:`interval`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from raybal.config.tasks import IGNORE_INDEX
from raybal.measure.metrics import MULTILABEL_BINS, finish_metric, multilabel_keys


def resample_counts(n: int, resamples: int, seed: int) -> Tensor:
    """(resamples, n) float64: how often each resample drew each of the split's n samples (rows sum to n)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + n) % (2 ** 63))
    draws = torch.randint(n, (resamples, n), generator=g)
    return torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(resamples, n, dtype=torch.float64))


class Bootstrap:
    """The task statistics of B resamples of one split, added batch by batch (:meth:`add`)."""

    def __init__(self, counts: Tensor, task: str, num_classes: int) -> None:
        self.counts, self.task, self.num_classes = counts, task, num_classes
        self.stat: Tensor | None = None  # (B, K): resample b's statistics, flattened
        self.total = torch.zeros(len(counts), dtype=torch.float64)

    @classmethod
    def for_split(cls, n: int, resamples: int, seed: int, task: str, num_classes: int) -> Bootstrap:
        return cls(resample_counts(n, resamples, seed), task, num_classes)

    def fresh(self) -> Bootstrap:
        """An empty accumulator over the same resamples (the next grid point's)."""
        return Bootstrap(self.counts, self.task, self.num_classes)

    def add(self, logits: Tensor, y: Tensor, idx: Tensor) -> None:
        """Add a batch: its ``logits``, labels ``y`` and its samples' indices ``idx`` in the split."""
        w = self.counts[:, idx.cpu()]  # (B, n): each resample's weight on each of the batch's samples
        c = self.num_classes
        if self.task == "multilabel":  # each sample adds 1 to one bin per class: scattered, never dense
            keys = multilabel_keys(logits, y).cpu()
            stat = torch.zeros(len(w), c * 2 * MULTILABEL_BINS, dtype=torch.float64)
            stat.index_add_(1, keys.flatten(), w.repeat_interleave(keys.shape[1], dim=1))
        elif self.task == "classification":
            stat = w @ (logits.max(1).indices.cpu() == y.cpu()).double()[:, None]
        else:  # segmentation: each sample's confusion matrix over its labelled pixels
            pred, y = logits.max(1).indices.cpu().flatten(1), y.cpu().flatten(1)
            n = len(y)
            keys = (torch.arange(n)[:, None] * c + y) * c + pred
            conf = torch.bincount(keys[y != IGNORE_INDEX], minlength=n * c * c).view(n, c * c).double()
            stat = w @ conf
        self.stat = stat if self.stat is None else self.stat + stat
        self.total += w.sum(1)

    def metrics(self) -> list[float]:
        """Each resample's metric."""
        if self.stat is None:
            return []
        if self.task == "classification":
            return (self.stat[:, 0] / self.total.clamp_min(1.0)).tolist()
        shape = (self.num_classes, 2, -1) if self.task == "multilabel" else (self.num_classes, self.num_classes)
        return [finish_metric(s.view(*shape), t, self.task) for s, t in zip(self.stat, self.total)]


def interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap ``values`` (NaNs left out); (NaN, NaN) when there are none."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if not len(v):
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(v, [tail, 100 - tail])
    return float(lo), float(hi)
