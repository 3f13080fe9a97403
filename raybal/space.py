"""Study files: the ``[study]`` settings and the ``[search]`` space (DESIGN.md §4).

A study file is a run file plus two sections::

    [study]
    name = "aerial_noise"
    objective = "robust.val_mean_accuracy"      # or: objectives = {"robust.val_mean_accuracy" = "max", ...}
    num_samples = 12
    scheduler = "asha"                           # or "fifo"
    constraints = ["final.val_accuracy >= 0.9"]

    [search]
    "balance.target.eo" = {uniform = [0.5, 0.95]}      # M-1 free fractions; the last one is 1 - the rest
    "balance.lambda_max" = {loguniform = [1.0, 30.0]}
    "balance.alpha" = [{uniform = [0.1, 1.0], when = {"balance.method" = "ogm_ge"}},
                       {loguniform = [0.001, 0.1], when = {"balance.method" = "greedy_guided"}}]
    # "balance.target" = {simplex = ["eo", "sar", "ir"]}  # a target drawn uniformly on the simplex

Everything is checked when the file is loaded, before Ray starts: distribution bounds, that
each searched key exists for the method it applies to, and that the lowest and highest
value of every parameter give a valid run config (the run config's own error, prefixed
with ``search.``). Objectives must be validation metrics: test numbers are reported, never
optimised.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raybal.config import (
    ConfigError,
    FrozenMap,
    RunConfig,
    build,
    config_from_dict,
    flatten_dict,
    load_toml,
    set_dotted,
)
from raybal.objectives import Constraint, Objective, StudySettings, resolve_objectives

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice", "simplex")
INTERNAL_PREFIX = "_"  # Optuna-only names (simplex draws, alternatives): not config keys

@dataclass(frozen=True)
class Param:
    """One searched parameter."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    log: bool = False
    when: FrozenMap = field(default_factory=FrozenMap)
    name: str = ""  # the Optuna parameter name (differs from key for the 2nd+ alternative of one key)

    @property
    def optuna_name(self) -> str:
        return self.name or self.key

    def corners(self) -> list[Any]:
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "simplex":
            return [0.0, 1.0]
        return [self.low, self.high]


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    complement: FrozenMap = field(default_factory=FrozenMap)  # target key -> the modality set to 1 - the rest
    modalities: tuple[str, ...] = ()

    def sample(self, trial: Any, base: Mapping[str, Any]) -> dict[str, Any]:
        """Draw one point with an Optuna trial (define-by-run): returns dotted key -> value."""
        values: dict[str, Any] = {}
        for p in self._ordered():
            if not self._applies(p, values, base):
                continue
            n = p.optuna_name
            if p.kind == "uniform":
                values[p.key] = trial.suggest_float(n, p.low, p.high)
            elif p.kind == "loguniform":
                values[p.key] = trial.suggest_float(n, p.low, p.high, log=True)
            elif p.kind == "int":
                values[p.key] = trial.suggest_int(n, int(p.low), int(p.high), log=p.log)
            elif p.kind == "choice":
                values[p.key] = trial.suggest_categorical(n, list(p.choices))
            else:  # simplex: stick-breaking with Beta(1, K-1) marginals = uniform on the simplex
                mods, rest = list(p.choices), 1.0
                for i, m in enumerate(mods[:-1]):
                    z = trial.suggest_float(f"_simplex.{p.key}.{i}", 0.0, 1.0)
                    x = rest * (1.0 - z ** (1.0 / (len(mods) - 1 - i)))
                    values[f"{p.key}.{m}"] = x
                    rest -= x
                values[f"{p.key}.{mods[-1]}"] = max(rest, 0.0)
        return values

    def columns(self) -> list[str]:
        """The ``trials.parquet`` columns the search sets (a target's complement included)."""
        out: list[str] = []
        for p in self.params:
            if p.kind == "simplex":
                out += [f"{p.key}.{m}" for m in p.choices]
            else:
                out.append(p.key)
        for tkey, last in self.complement.items():
            out.append(f"{tkey}.{last}")
        return out

    def _ordered(self) -> list[Param]:
        return [p for p in self.params if not p.when] + [p for p in self.params if p.when]

    @staticmethod
    def _applies(p: Param, values: Mapping[str, Any], base: Mapping[str, Any]) -> bool:
        return all(values.get(k, base.get(k)) == v for k, v in p.when.items())

    def apply(self, base_raw: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
        """The run file (nested dict) of one trial: the base with the sampled values set."""
        import copy

        from raybal.balancing import METHODS

        raw = copy.deepcopy(dict(base_raw))
        values = {k: v for k, v in values.items() if not k.startswith(INTERNAL_PREFIX)}
        method = values.get("balance.method")
        if method is not None and method != raw.get("balance", {}).get("method", "vanilla"):
            known = set()
            if method in METHODS:
                params_cls = METHODS.get(method).params
                known = {f for f in getattr(params_cls, "__dataclass_fields__", {})}
            raw["balance"] = {k: v for k, v in raw.get("balance", {}).items() if k in known}
            raw["balance"]["method"] = method
        for key, value in values.items():
            if key != "balance.method":
                set_dotted(raw, key, value)
        for tkey, last in self.complement.items():
            section, name = tkey.split(".", 1)
            target = raw.get(section, {}).get(name)
            if isinstance(target, dict) and any(f"{tkey}.{m}" in values for m in target if m != last):
                others = [v for m, v in target.items() if m != last]
                if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in others):
                    target[last] = max(0.0, 1.0 - sum(others))  # else the config check names the bad value
                # the complement of the free fractions keeps the sum exactly 1
        return raw

    def trial_config(self, base_raw: Mapping[str, Any], values: Mapping[str, Any]) -> RunConfig:
        return config_from_dict(self.apply(base_raw, values))


@dataclass(frozen=True)
class Study:
    """A parsed, validated study file."""

    settings: StudySettings
    base_raw: dict[str, Any]
    base: RunConfig
    space: SearchSpace
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...]
    source: str = ""

    def sampler(self) -> Any:
        """Optuna's TPE (single- and multi-objective), seeded; after ``startup_trials`` random
        points it draws from a model of the results so far."""
        import optuna

        s = self.settings
        startup = s.startup_trials or min(10, max(2, s.num_samples // 3))
        return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=startup)

    @property
    def base_flat(self) -> dict[str, Any]:
        return flatten_dict(self.base.to_dict())


def _parse_dist(key: str, spec: Any, modalities: tuple[str, ...]) -> Param:
    k = f"search.{key}"
    if spec == "simplex":
        spec = {"simplex": list(modalities)}
    if not isinstance(spec, Mapping):
        raise ConfigError(k, f"expected a table such as {{uniform = [low, high]}}, got {spec!r}")
    kinds = [d for d in DISTRIBUTIONS if d in spec]
    unknown = [x for x in spec if x not in DISTRIBUTIONS and x not in ("when", "log")]
    if unknown:
        raise ConfigError(f"{k}.{unknown[0]}", f"unknown distribution (use one of: {', '.join(DISTRIBUTIONS)})")
    if len(kinds) != 1:
        raise ConfigError(k, f"give exactly one distribution of: {', '.join(DISTRIBUTIONS)}")
    kind = kinds[0]
    arg = spec[kind]
    when = spec.get("when", {})
    if not isinstance(when, Mapping):
        raise ConfigError(f"{k}.when", "must be a table of dotted key -> value")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{k}.log", "must be true or false")
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{k}.choice", "must be a non-empty list of values")
        return Param(key, kind, choices=tuple(arg), when=FrozenMap(when))
    if kind == "simplex":
        if not isinstance(arg, list) or len(arg) < 2 or not all(isinstance(m, str) for m in arg):
            raise ConfigError(f"{k}.simplex", "must list at least two modality names")
        for i, m in enumerate(arg):
            if m not in modalities:
                raise ConfigError(f"{k}.simplex[{i}]", f"unknown modality {m!r} (data set has: {', '.join(modalities)})")
        if sorted(arg) != sorted(modalities):
            raise ConfigError(f"{k}.simplex", f"must list every modality once: {', '.join(modalities)}")
        return Param(key, kind, choices=tuple(arg), when=FrozenMap(when))
    if (not isinstance(arg, list) or len(arg) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)):
        raise ConfigError(f"{k}.{kind}", "must be [low, high] (two numbers)")
    low, high = float(arg[0]), float(arg[1])
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"{k}.{kind}", "bounds must be finite")
    if low > high:
        raise ConfigError(f"{k}.{kind}", f"low {arg[0]} > high {arg[1]}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{k}.{kind}", f"low must be > 0 for a log scale, got {arg[0]}")
    if kind == "int":
        if not all(isinstance(v, int) for v in arg):
            raise ConfigError(f"{k}.int", "bounds must be integers")
        if log and low <= 0:
            raise ConfigError(f"{k}.int", "low must be > 0 with log = true")
    return Param(key, kind, low, high, log=log, when=FrozenMap(when))


def _leaves(node: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Flatten ``[search]``: quoted dotted keys and nested tables both reach a distribution table
    (or a list of alternative tables, each with its own ``when``)."""
    out: list[tuple[str, Any]] = []
    for k, v in node.items():
        key = f"{prefix}{k}"
        nested = isinstance(v, Mapping) and v and all(
            isinstance(x, Mapping) or (isinstance(x, list) and x and all(isinstance(y, Mapping) for y in x))
            for x in v.values())
        if nested and not any(d in v for d in DISTRIBUTIONS) and "when" not in v:
            out.extend(_leaves(v, f"{key}."))
        else:
            out.append((key, v))
    return out


def parse_space(raw_search: Any, base: RunConfig) -> SearchSpace:
    if not isinstance(raw_search, Mapping) or not raw_search:
        raise ConfigError("search", "must be a table with at least one parameter, e.g. "
                          "\"train.lr\" = {loguniform = [1e-4, 1e-2]}")
    mods = base.modalities
    plist: list[Param] = []
    for k, v in _leaves(raw_search):
        if isinstance(v, list):  # alternatives for one key, each under its own condition
            if not v:
                raise ConfigError(f"search.{k}", "an empty list of alternatives")
            for i, spec in enumerate(v):
                p = _parse_dist(k, spec, mods)
                if not p.when:
                    raise ConfigError(f"search.{k}[{i}]", "each alternative needs its own `when` condition")
                plist.append(dataclasses.replace(p, name=k if i == 0 else f"_alt{i}.{k}"))
        else:
            plist.append(_parse_dist(k, v, mods))
    params = tuple(plist)
    keys = {p.key for p in params}
    for k in ("train.workers", "train.use_gpu", "train.cpus_per_worker"):
        if k in keys:
            raise ConfigError(f"search.{k}", "cannot be searched: a study plans its resources from the base file")
    for p in params:
        for wk in p.when:
            if wk == p.key:
                raise ConfigError(f"search.{p.key}.when", "a parameter cannot depend on itself")
    # Free target fractions: M-1 modalities searched, the last one is the complement.
    complement: dict[str, str] = {}
    by_target: dict[str, list[Param]] = {}
    for p in params:
        head, _, mod = p.key.rpartition(".")
        if head.endswith("balance.target") and p.kind in ("uniform", "loguniform") and head == "balance.target":
            by_target.setdefault(head, []).append(p)
        elif p.kind == "simplex" and p.key != "balance.target":
            raise ConfigError(f"search.{p.key}", "a simplex is for balance.target")
    for head, ps in by_target.items():
        if f"{head}" in keys:
            raise ConfigError(f"search.{head}", "search the target either as a simplex or as free fractions")
        free = [p.key.rpartition(".")[2] for p in ps]
        for p, m in zip(ps, free, strict=True):
            if m not in mods:
                raise ConfigError(f"search.{p.key}", f"unknown modality {m!r} (data set has: {', '.join(mods)})")
        rest = [m for m in mods if m not in free]
        if len(rest) != 1:
            raise ConfigError(f"search.{ps[0].key}", f"search M-1 = {len(mods) - 1} target fractions (the last is "
                              "1 - the others) or the whole target as {simplex = [...]}")
        high_sum = sum(p.high or 0.0 for p in ps)
        if high_sum > 1.0 + 1e-9:
            raise ConfigError(f"search.{ps[0].key}", f"the free fractions' highs sum to {high_sum:g} > 1; "
                              "narrow them or search the target as a simplex")
        complement[head] = rest[0]
    return SearchSpace(params, FrozenMap(complement), mods)


def study_from_dict(raw: Mapping[str, Any], source: str = "") -> Study:
    """Validate a parsed study file; every problem is a :class:`ConfigError` naming its key."""
    if not isinstance(raw, Mapping):
        raise ConfigError("", "a study file must be a TOML table")
    if "study" not in raw:
        raise ConfigError("study", "missing section: a study file needs [study] and [search] "
                          "(a file without them is a run file: use `raybal train`)")
    if "search" not in raw:
        raise ConfigError("search", "missing section: list the parameters to search")
    base_raw = {k: v for k, v in raw.items() if k not in ("study", "search")}
    base = config_from_dict(base_raw)
    if not isinstance(raw["study"], Mapping):
        raise ConfigError("study", "must be a table")
    settings = build(StudySettings, raw["study"], "study")
    space = parse_space(raw["search"], base)
    objectives = resolve_objectives(settings, base)
    constraints = tuple(Constraint.parse(c, f"study.constraints[{i}]") for i, c in enumerate(settings.constraints))
    _probe(space, base_raw, base)
    return Study(settings, dict(base_raw), base, space, objectives, constraints, source)


def _probe(space: SearchSpace, base_raw: Mapping[str, Any], base: RunConfig) -> None:
    """Build the run config at the low and the high corner of every parameter (per method choice)."""
    base_flat = flatten_dict(base.to_dict())
    choice_sets: list[dict[str, Any]] = [{}]
    for p in space.params:
        if p.kind == "choice" and not p.when:
            choice_sets = [{**c, p.key: v} for c in choice_sets for v in p.choices][:64]
    for fixed in choice_sets:
        for corner in (0, 1):
            values = dict(fixed)
            for p in space._ordered():
                if p.key in values or not SearchSpace._applies(p, values, base_flat):
                    continue
                if p.kind == "simplex":
                    n = len(p.choices)
                    for m in p.choices:
                        values[f"{p.key}.{m}"] = 1.0 / n
                    continue
                c = p.corners()
                values[p.key] = c[0] if corner == 0 or len(c) == 1 else c[-1]
                if p.kind == "int":
                    values[p.key] = int(values[p.key])
            try:
                space.trial_config(base_raw, values)
            except ConfigError as exc:
                shown = ", ".join(f"{k} = {v!r}" for k, v in values.items())
                raise ConfigError(f"search.{exc.key}" if exc.key else "search",
                                  f"{exc.message} (at the search point {shown})") from None


def load_study(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Study:
    p = Path(path)
    raw = load_toml(p)
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return study_from_dict(raw, source=p.read_text())
