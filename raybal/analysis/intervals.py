"""Means and confidence intervals over replicate seeds (``raybal best``, the report's error bars).

A study configuration run with ``study.repeats = K`` seeds has K values of a metric. Its interval
is Student's t interval for the mean, ``mean ± t_{(1+level)/2, K-1} · s / sqrt(K)`` with ``s`` the
sample standard deviation (ddof = 1). Two configurations are compared *paired by seed*: replicate k
of every configuration (the baseline's included) trains with the same ``train.seed``, so the
difference of the two values per seed removes the seed's share of the noise, and the interval is
the t interval of those differences (a paired t interval). With fewer than two values there is no
interval: its bounds are NaN and :meth:`Interval.verdict` says so.

A metric bounded to [0, 1] (accuracy, mIoU, F1, an MU share) gets its interval on the logit scale
(:func:`bounded_interval`): the t interval of logit(x), mapped back. It stays inside [0, 1] where the
plain t interval of a few seeds spread far apart does not (three accuracies 0.75, 0.77, 0.94 give
[0.56, 1.12]); for values close together the two agree.

The interval of the best configuration on the metric it was *selected* by is optimistic (the
winner's curse); a test metric of the same runs is not selected on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int
    level: float = LEVEL

    @property
    def defined(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    def format(self, digits: int = 4, signed: bool = False) -> str:
        f = f"{{:{'+' if signed else ''}.{digits}f}}"
        if not self.defined:
            return f"{f.format(self.mean)} (n = {self.n}, no interval)"
        ci = f"{self.level:.0%} CI [{f.format(self.low)}, {f.format(self.high)}], n = {self.n}"
        half = (self.high - self.low) / 2
        if abs((self.mean - self.low) - (self.high - self.mean)) > 1e-9 * max(1.0, half):
            return f"{f.format(self.mean)} ({ci})"  # asymmetric (a logit-scale interval): no ± half-width
        return f"{f.format(self.mean)} ± {half:.{digits}f} ({ci})"

    def to_json(self) -> dict[str, float | int | None]:
        def num(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        return {"mean": num(self.mean), "low": num(self.low), "high": num(self.high), "n": self.n,
                "level": self.level}

    def verdict(self, mode: str) -> str:
        """'better', 'worse' or 'indistinguishable' (a difference interval covering 0), or 'unknown' (n < 2)."""
        if not self.defined:
            return "unknown"
        if self.low > 0 or self.high < 0:
            return "better" if (self.low > 0) == (mode == "max") else "worse"
        return "indistinguishable"


def t_quantile(p: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, df))


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Student's t interval for the mean of ``values`` (NaN bounds for fewer than 2 values)."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, level)
    mean = sum(xs) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, level)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, level)


# Values at a bound (an accuracy of exactly 1) have no logit: they are moved this far inside.
_EDGE = 1e-4
# Column names of metrics that live in [0, 1]; anything else (losses, times, counts) is unbounded.
_BOUNDED = ("accuracy", "miou", "iou.", "f1", "map", "mu.", "target_error", "target_met")


def is_bounded(metric: str) -> bool:
    """Whether a results column holds a [0, 1] metric (by its name: ``final.val_accuracy``, ``robust.*_miou``)."""
    name = metric.lower()
    return "loss" not in name and any(k in name for k in _BOUNDED)


def bounded_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """The t interval of logit(x) for values in [0, 1], mapped back: inside (0, 1) by construction.

    The point is the plain mean (what tables report); the interval is widened to hold it when the
    mapped-back logit mean sits beside it (skewed values)."""
    xs = [float(v) for v in values]
    n = len(xs)
    plain = mean_interval(xs, level)
    if n < 2:
        return plain
    z = [math.log(p / (1 - p)) for p in (min(max(x, _EDGE), 1 - _EDGE) for x in xs)]
    zi = mean_interval(z, level)

    def sigmoid(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    return Interval(plain.mean, min(sigmoid(zi.low), plain.mean), max(sigmoid(zi.high), plain.mean), n, level)


def metric_interval(values: Sequence[float], metric: str, level: float = LEVEL) -> Interval:
    """:func:`bounded_interval` for a [0, 1] metric (:func:`is_bounded`) whose values all lie in [0, 1],
    else :func:`mean_interval`."""
    inside = all(0.0 <= float(v) <= 1.0 for v in values)
    return bounded_interval(values, level) if is_bounded(metric) and inside else mean_interval(values, level)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL) -> Interval:
    """The interval of ``a - b`` over the seeds both have (seed -> value)."""
    seeds = sorted(set(a) & set(b))
    return mean_interval([a[s] - b[s] for s in seeds], level)


@dataclass
class Comparison:
    """The best configuration minus another one, paired by seed
    (:func:`raybal.analysis.intervals.paired_difference`)."""

    what: str  # "the runner-up" | "the baseline (vanilla)"
    config_id: str
    diff: Interval
    verdict: str  # better | worse | indistinguishable | unknown

    def sentence(self, metric: str) -> str:
        d = self.diff.format(signed=True)
        if self.verdict == "unknown":
            return (f"vs {self.what}: {metric} difference {d}; one seed per configuration gives no interval "
                    "(set study.repeats >= 2 to tell them apart)")
        if self.verdict == "indistinguishable":
            return f"NOT distinguishable from {self.what} ({self.config_id}): difference {d} includes 0"
        return f"{self.verdict} than {self.what} ({self.config_id}): difference {d}"

    def to_json(self, metric: str) -> dict[str, Any]:
        return {"config_id": self.config_id, "difference": self.diff.to_json(), "verdict": self.verdict,
                "sentence": self.sentence(metric)}
