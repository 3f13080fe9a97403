"""Bootstrap intervals over test samples (issue 34): each resample's metric is the metric of the resampled
split, the resamples are shared by every run of a split (paired), and the 95 % interval covers the truth
about 95 % of the time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raybal.config.tasks import IGNORE_INDEX
from raybal.measure.bootstrap import Bootstrap, interval, resample_counts
from raybal.measure.metrics import finish_metric, task_metric


def _logits_and_labels(task: str, n: int, c: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if task == "classification":
        return torch.randn(n, c, generator=g), torch.randint(c, (n,), generator=g)
    if task == "segmentation":
        y = torch.randint(c, (n, 6, 6), generator=g)
        y[0, 0, :3] = IGNORE_INDEX  # ignored pixels count nowhere
        return torch.randn(n, c, 6, 6, generator=g), y
    return torch.randn(n, c, generator=g), (torch.rand(n, c, generator=g) < 0.4).float()


@pytest.mark.parametrize("task", ["classification", "segmentation", "multilabel"])
def test_each_resamples_metric_is_the_metric_of_the_resampled_split(task: str) -> None:
    n, c = 13, 4
    logits, y = _logits_and_labels(task, n, c)
    boot = Bootstrap.for_split(n, 5, seed=3, task=task, num_classes=c)
    for start in range(0, n, 4):  # in batches, as a sweep adds them
        idx = torch.arange(start, min(start + 4, n))
        boot.add(logits[idx], y[idx], idx)
    got = boot.metrics()
    assert len(got) == 5
    for b, counts in enumerate(boot.counts):
        rows = torch.repeat_interleave(torch.arange(n), counts.long())  # sample i, counts[b, i] times
        stat, total = task_metric(logits[rows], y[rows], c, task)
        assert got[b] == pytest.approx(finish_metric(stat, total, task), abs=1e-12), (task, b)


def test_the_resamples_depend_on_the_seed_and_the_split_size_only() -> None:
    a = resample_counts(50, 20, seed=1)
    assert torch.equal(a, resample_counts(50, 20, seed=1))  # every run of the split: paired
    assert bool((a.sum(1) == 50).all()) and not torch.equal(a, resample_counts(50, 20, seed=2))
    assert a.shape == (20, 50) and float(a.std()) > 0


def test_the_95_percent_interval_covers_a_known_accuracy_about_95_percent_of_the_time() -> None:
    p, n, reps = 0.7, 300, 300
    g = torch.Generator().manual_seed(0)
    covered, widths = 0, []
    for r in range(reps):
        correct = torch.rand(n, generator=g) < p
        y = torch.zeros(n, dtype=torch.long)
        logits = torch.stack([correct.float(), (~correct).float()], dim=1)  # class 0 predicted iff correct
        boot = Bootstrap.for_split(n, 200, seed=r, task="classification", num_classes=2)
        boot.add(logits, y, torch.arange(n))
        lo, hi = interval(boot.metrics())
        covered += lo <= p <= hi
        widths.append(hi - lo)
    # the binomial standard error sqrt(p (1 - p) / n) = 0.026: a 95 % interval is ~4 of them wide
    assert 0.90 <= covered / reps <= 0.99, covered / reps
    assert np.mean(widths) == pytest.approx(2 * 1.96 * (p * (1 - p) / n) ** 0.5, rel=0.1)


def test_an_interval_is_the_2_5th_and_97_5th_percentiles() -> None:
    vals = np.arange(201, dtype=float)  # percentiles 2.5 and 97.5 of 0..200: 5 and 195
    assert interval(vals) == pytest.approx((5.0, 195.0))
    assert interval([np.nan, 1.0, 1.0]) == (1.0, 1.0)
    assert all(np.isnan(interval([])))
