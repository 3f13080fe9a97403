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
    """(resamples, n) float32: how often each resample drew each of the split's n samples (rows sum to n)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + n) % (2 ** 63))
    out = torch.zeros(resamples, n, dtype=torch.float32)
    for b in range(resamples if n else 0):  # one row at a time: memory B x n, not 3 B x n int64 / float64
        out[b] = torch.bincount(torch.randint(n, (n,), generator=g), minlength=n).float()
    return out


def resamples_key(n: int, resamples: int, seed: int) -> str:
    """What the resamples of :func:`resample_counts` are drawn from: two runs' bootstrap values pair only
    under the same key."""
    return f"{resamples}x{n}@{seed}"


class Bootstrap:
    """The task statistics of B resamples of one split, added batch by batch (:meth:`add`) on the model's
    device and read once (:meth:`metrics`)."""

    def __init__(self, counts: Tensor, task: str, num_classes: int, key: str = "") -> None:
        self.counts, self.task, self.num_classes, self.key = counts, task, num_classes, key
        self.stat: Tensor | None = None  # resample b's statistics, flattened: (B, K); multilabel (K, B)
        self.total = torch.zeros(len(counts), dtype=torch.float64, device=counts.device)

    @classmethod
    def for_split(cls, n: int, resamples: int, seed: int, task: str, num_classes: int,
                  device: torch.device | None = None) -> Bootstrap:
        counts = resample_counts(n, resamples, seed)
        return cls(counts.to(device) if device is not None else counts, task, num_classes,
                   resamples_key(n, resamples, seed))

    def fresh(self) -> Bootstrap:
        """An empty accumulator over the same resamples (the next grid point's)."""
        return Bootstrap(self.counts, self.task, self.num_classes, self.key)

    def add(self, logits: Tensor, y: Tensor, idx: Tensor) -> None:
        """Add a batch: its ``logits``, labels ``y`` and its samples' indices ``idx`` in the split."""
        dev = self.counts.device
        w = self.counts[:, idx.to(dev)].double()  # (B, batch): each resample's weight on each of its samples
        logits, y = logits.to(dev), y.to(dev)
        c = self.num_classes
        if self.task == "multilabel":  # each sample adds to one bin per class: scattered into (K, B) rows
            keys = multilabel_keys(logits, y)
            if self.stat is None:
                self.stat = torch.zeros(c * 2 * MULTILABEL_BINS, len(w), dtype=torch.float64, device=dev)
            self.stat.index_add_(0, keys.flatten(), w.t().repeat_interleave(keys.shape[1], dim=0))
        else:
            if self.task == "classification":
                stat = w @ (logits.max(1).indices == y).double()[:, None]
            else:  # segmentation: each sample's confusion matrix over its labelled pixels
                pred, y = logits.max(1).indices.flatten(1), y.flatten(1)
                n = len(y)
                keys = (torch.arange(n, device=dev)[:, None] * c + y) * c + pred
                conf = torch.bincount(keys[y != IGNORE_INDEX], minlength=n * c * c).view(n, c * c).double()
                stat = w @ conf
            self.stat = stat if self.stat is None else self.stat.add_(stat)
        self.total += w.sum(1)

    def metrics(self) -> list[float]:
        """Each resample's metric (the one read of the device)."""
        if self.stat is None:
            return []
        stat, total = self.stat.cpu(), self.total.cpu()
        if self.task == "classification":
            return (stat[:, 0] / total.clamp_min(1.0)).tolist()
        if self.task == "multilabel":
            return [finish_metric(s.view(self.num_classes, 2, -1), t, self.task) for s, t in zip(stat.t(), total)]
        return [finish_metric(s.view(self.num_classes, self.num_classes), t, self.task) for s, t in zip(stat, total)]


def interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap ``values`` (NaNs left out); (NaN, NaN) when there are none."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if not len(v):
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(v, [tail, 100 - tail])
    return float(lo), float(hi)
