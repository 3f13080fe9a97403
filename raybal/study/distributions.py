"""The distributions a study's ``[search]`` section draws from, as typed classes.

Each kind knows how to parse its TOML table, how an Optuna trial draws from it
(define-by-run), which config keys a draw sets and the corner points that the study loader
builds a run config at before Ray starts::

    "train.lr"          = {loguniform = [1e-4, 1e-2]}
    "balance.lambda_max" = {uniform = [1.0, 30.0]}
    "model.width"       = {int = [8, 32], log = true}
    "balance.method"    = {choice = ["vanilla", "mu_target"]}
    "balance.target"    = {simplex = ["eo", "sar", "ir"]}   # fractions that sum to 1
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from raybal.config import ConfigError


class Distribution(ABC):
    """One kind of ``[search]`` distribution."""

    kind: ClassVar[str]

    @classmethod
    @abstractmethod
    def parse(cls, arg: Any, spec: Mapping[str, Any], key: str, modalities: tuple[str, ...]) -> Distribution:
        """Validate ``{kind = arg, ...}`` of the parameter ``key`` (errors name ``key.kind``)."""

    @abstractmethod
    def sample(self, trial: Any, name: str, key: str) -> dict[str, Any]:
        """Draw with an Optuna trial under the parameter name ``name``; dotted config key -> value."""

    @abstractmethod
    def corner(self, key: str, high: bool) -> dict[str, Any]:
        """The low (``high = False``) or high corner, as the config values it sets."""

    def columns(self, key: str) -> list[str]:
        """The ``trials.parquet`` columns a draw sets."""
        return [key]


def _bounds(arg: Any, key: str, kind: str) -> tuple[float, float]:
    if (not isinstance(arg, list) or len(arg) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)):
        raise ConfigError(f"{key}.{kind}", "must be [low, high] (two numbers)")
    low, high = float(arg[0]), float(arg[1])
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"{key}.{kind}", "bounds must be finite")
    if low > high:
        raise ConfigError(f"{key}.{kind}", f"low {arg[0]} > high {arg[1]}")
    return low, high


@dataclass(frozen=True)
class Uniform(Distribution):
    low: float
    high: float
    kind: ClassVar[str] = "uniform"

    @classmethod
    def parse(cls, arg: Any, spec: Mapping[str, Any], key: str, modalities: tuple[str, ...]) -> Uniform:
        return cls(*_bounds(arg, key, cls.kind))

    def sample(self, trial: Any, name: str, key: str) -> dict[str, Any]:
        return {key: trial.suggest_float(name, self.low, self.high)}

    def corner(self, key: str, high: bool) -> dict[str, Any]:
        return {key: self.high if high else self.low}


@dataclass(frozen=True)
class LogUniform(Uniform):
    kind: ClassVar[str] = "loguniform"

    @classmethod
    def parse(cls, arg: Any, spec: Mapping[str, Any], key: str, modalities: tuple[str, ...]) -> LogUniform:
        low, high = _bounds(arg, key, cls.kind)
        if low <= 0:
            raise ConfigError(f"{key}.{cls.kind}", f"low must be > 0 for a log scale, got {arg[0]}")
        return cls(low, high)

    def sample(self, trial: Any, name: str, key: str) -> dict[str, Any]:
        return {key: trial.suggest_float(name, self.low, self.high, log=True)}


@dataclass(frozen=True)
class IntRange(Distribution):
    low: int
    high: int
    log: bool = False
    kind: ClassVar[str] = "int"

    @classmethod
    def parse(cls, arg: Any, spec: Mapping[str, Any], key: str, modalities: tuple[str, ...]) -> IntRange:
        _bounds(arg, key, cls.kind)
        if not all(isinstance(v, int) for v in arg):
            raise ConfigError(f"{key}.int", "bounds must be integers")
        log = spec.get("log", False)
        if log and arg[0] <= 0:
            raise ConfigError(f"{key}.int", "low must be > 0 with log = true")
        return cls(int(arg[0]), int(arg[1]), bool(log))

    def sample(self, trial: Any, name: str, key: str) -> dict[str, Any]:
        return {key: trial.suggest_int(name, self.low, self.high, log=self.log)}

    def corner(self, key: str, high: bool) -> dict[str, Any]:
        return {key: self.high if high else self.low}


@dataclass(frozen=True)
class Choice(Distribution):
    choices: tuple[Any, ...]
    kind: ClassVar[str] = "choice"

    @classmethod
    def parse(cls, arg: Any, spec: Mapping[str, Any], key: str, modalities: tuple[str, ...]) -> Choice:
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{key}.choice", "must be a non-empty list of values")
        return cls(tuple(arg))

    def sample(self, trial: Any, name: str, key: str) -> dict[str, Any]:
        return {key: trial.suggest_categorical(name, list(self.choices))}

    def corner(self, key: str, high: bool) -> dict[str, Any]:
        return {key: self.choices[-1] if high else self.choices[0]}


@dataclass(frozen=True)
class Simplex(Distribution):
    """Fractions over every modality that sum to 1, drawn uniformly on the simplex.

    Stick-breaking with Beta(1, K-1-i) marginals (z^(1/(K-1-i)) from a uniform z) is uniform on
    the simplex, and each draw is one Optuna float, so TPE models it like any other parameter.
    """

    modalities: tuple[str, ...]
    kind: ClassVar[str] = "simplex"

    @classmethod
    def parse(cls, arg: Any, spec: Mapping[str, Any], key: str, modalities: tuple[str, ...]) -> Simplex:
        if not isinstance(arg, list) or len(arg) < 2 or not all(isinstance(m, str) for m in arg):
            raise ConfigError(f"{key}.simplex", "must list at least two modality names")
        for i, m in enumerate(arg):
            if m not in modalities:
                raise ConfigError(f"{key}.simplex[{i}]",
                                  f"unknown modality {m!r} (data set has: {', '.join(modalities)})")
        if sorted(arg) != sorted(modalities):
            raise ConfigError(f"{key}.simplex", f"must list every modality once: {', '.join(modalities)}")
        return cls(tuple(arg))

    def sample(self, trial: Any, name: str, key: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        mods, rest = list(self.modalities), 1.0
        for i, m in enumerate(mods[:-1]):
            z = trial.suggest_float(f"_simplex.{key}.{i}", 0.0, 1.0)
            x = rest * (1.0 - z ** (1.0 / (len(mods) - 1 - i)))
            out[f"{key}.{m}"] = x
            rest -= x
        out[f"{key}.{mods[-1]}"] = max(rest, 0.0)
        return out

    def corner(self, key: str, high: bool) -> dict[str, Any]:
        return {f"{key}.{m}": 1.0 / len(self.modalities) for m in self.modalities}

    def columns(self, key: str) -> list[str]:
        return [f"{key}.{m}" for m in self.modalities]


KINDS: dict[str, type[Distribution]] = {c.kind: c for c in (Uniform, LogUniform, IntRange, Choice, Simplex)}


def parse_distribution(key: str, spec: Any, modalities: tuple[str, ...]) -> Distribution:
    """``spec`` (a TOML table with one distribution kind, optional ``when`` / ``log``) -> a Distribution."""
    k = f"search.{key}"
    if spec == "simplex":
        spec = {"simplex": list(modalities)}
    if not isinstance(spec, Mapping):
        raise ConfigError(k, f"expected a table such as {{uniform = [low, high]}}, got {spec!r}")
    unknown = [x for x in spec if x not in KINDS and x not in ("when", "log")]
    if unknown:
        raise ConfigError(f"{k}.{unknown[0]}", f"unknown distribution (use one of: {', '.join(KINDS)})")
    kinds = [d for d in KINDS if d in spec]
    if len(kinds) != 1:
        raise ConfigError(k, f"give exactly one distribution of: {', '.join(KINDS)}")
    if not isinstance(spec.get("log", False), bool):
        raise ConfigError(f"{k}.log", "must be true or false")
    return KINDS[kinds[0]].parse(spec[kinds[0]], spec, k, modalities)
