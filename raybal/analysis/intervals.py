"""Means and confidence intervals over replicate seeds (``raybal best``, the report's error bars).

A study configuration run with ``study.repeats = K`` seeds has K values of a metric. Its interval
is Student's t interval for the mean, ``mean ± t_{(1+level)/2, K-1} · s / sqrt(K)`` with ``s`` the
sample standard deviation (ddof = 1). Two configurations are compared *paired by seed*: replicate k
of every configuration (the baseline's included) trains with the same ``train.seed``, so the
difference of the two values per seed removes the seed's share of the noise, and the interval is
the t interval of those differences (a paired t interval). With fewer than two values there is no
interval: its bounds are NaN and :meth:`Interval.verdict` says so.

The interval of the best configuration on the metric it was *selected* by is optimistic (the
winner's curse); a test metric of the same runs is not selected on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
        half = (self.high - self.low) / 2
        return (f"{f.format(self.mean)} ± {half:.{digits}f} ({self.level:.0%} CI [{f.format(self.low)}, "
                f"{f.format(self.high)}], n = {self.n})")

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


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL) -> Interval:
    """The interval of ``a - b`` over the seeds both have (seed -> value)."""
    seeds = sorted(set(a) & set(b))
    return mean_interval([a[s] - b[s] for s in seeds], level)
