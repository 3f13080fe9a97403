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

The distributions are typed classes (:mod:`raybal.study.distributions`); a fractions knob (one declared
with ``knob(fractions=True)``, such as a method's ``target``) is searched as a simplex or as M-1
free fractions whose complement keeps the sum at 1. Everything is checked when the file is loaded,
before Ray starts: distribution bounds, that each searched key exists for the method it applies to,
and that the lowest and highest value of every parameter give a valid run config (the run config's
own error, prefixed with ``search.``). Objectives must be validation metrics: test numbers are
reported, never optimised.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raybal.balancing import METHODS
from raybal.config import (
    BalanceConfig,
    ConfigError,
    FrozenMap,
    RunConfig,
    build,
    flatten_dict,
    fraction_fields,
    load_toml,
    set_dotted,
)
from raybal.config.constraint import Constraint
from raybal.resolve import config_from_dict
from raybal.study.distributions import KINDS, Choice, Distribution, LogUniform, Simplex, Uniform, parse_distribution
from raybal.study.objectives import Objective, StudySettings, resolve_objectives

INTERNAL_PREFIX = "_"  # Optuna-only names (simplex draws, alternatives): not config keys
STORED_CONFIG = "_config_json"  # a confirmation run's values: the stored config it re-trains (with its seed)
CONFIRM_RUN = "_confirm"  # a confirmation trial's Tune config: {CONFIRM_RUN: that run's values}


def trial_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """A Tune trial's values: what the searcher drew, or a confirmation run's (held under ``CONFIRM_RUN``)."""
    inner = params.get(CONFIRM_RUN)
    return dict(inner) if isinstance(inner, Mapping) else dict(params)


@dataclass(frozen=True)
class Param:
    """One searched parameter: a config key, its distribution and the condition it applies under."""

    key: str
    dist: Distribution
    when: FrozenMap = field(default_factory=FrozenMap)
    name: str = ""  # the Optuna parameter name (differs from key for the 2nd+ alternative of one key)

    @property
    def optuna_name(self) -> str:
        return self.name or self.key


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    complement: FrozenMap = field(default_factory=FrozenMap)  # fractions key -> the modality set to 1 - the rest
    modalities: tuple[str, ...] = ()

    def sample(self, trial: Any, base: Mapping[str, Any]) -> dict[str, Any]:
        """Draw one point with an Optuna trial (define-by-run): returns dotted key -> value."""
        values: dict[str, Any] = {}
        for p in self._ordered():
            if self._applies(p, values, base):
                values.update(p.dist.sample(trial, p.optuna_name, p.key))
        return values

    def columns(self) -> list[str]:
        """The ``trials.parquet`` columns the search sets (a fractions table's complement included)."""
        out = [c for p in self.params for c in p.dist.columns(p.key)]
        out += [f"{key}.{last}" for key, last in self.complement.items()]
        return list(dict.fromkeys(out))

    def method_choice(self) -> tuple[str, ...]:
        """The methods of the unconditional ``balance.method`` choice, each once (``study.per_method``)."""
        return tuple(dict.fromkeys(m for p in self.params if p.key == "balance.method" and not p.when
                                   and isinstance(p.dist, Choice) for m in p.dist.choices))

    def methods(self) -> tuple[str, ...]:
        """Balancing methods the search may choose (``balance.method`` choices)."""
        return tuple(m for p in self.params if p.key == "balance.method" and isinstance(p.dist, Choice)
                     for m in p.dist.choices)

    def _ordered(self) -> list[Param]:
        return [p for p in self.params if not p.when] + [p for p in self.params if p.when]

    @staticmethod
    def _applies(p: Param, values: Mapping[str, Any], base: Mapping[str, Any]) -> bool:
        return all(values.get(k, base.get(k)) == v for k, v in p.when.items())

    def apply(self, base_raw: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
        """The run file (nested dict) of one trial: the base with the sampled values set."""
        raw = copy.deepcopy(dict(base_raw))
        values = {k: v for k, v in values.items() if not k.startswith(INTERNAL_PREFIX)}
        method = values.get("balance.method")
        if method is not None and method != raw.get("balance", {}).get("method", BalanceConfig.method):
            known = set()
            if method in METHODS:
                params_cls = METHODS.get(method).params
                known = {f for f in getattr(params_cls, "__dataclass_fields__", {})}
            raw["balance"] = {k: v for k, v in raw.get("balance", {}).items() if k in known}
            raw["balance"]["method"] = method
        for key, value in values.items():
            if key != "balance.method":
                set_dotted(raw, key, value)
        for fkey, last in self.complement.items():
            section, name = fkey.split(".", 1)
            table = raw.get(section, {}).get(name)
            if isinstance(table, dict) and any(f"{fkey}.{m}" in values for m in table if m != last):
                others = [v for m, v in table.items() if m != last]
                # the complement of the free fractions keeps the sum exactly 1 (else the config check
                # names the bad value)
                if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in others):
                    table[last] = max(0.0, 1.0 - sum(others))
        return raw

    def trial_config(self, base_raw: Mapping[str, Any], values: Mapping[str, Any]) -> RunConfig:
        return config_from_dict(self.apply(base_raw, values))


def violation(c: Constraint, value: Any) -> float:
    """Optuna's constraint value of ``c`` at ``value``: <= 0 when it holds, the amount it misses by when
    not; 1 for a missing or non-numeric value (infeasible)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return 1.0
    if v != v:
        return 1.0
    gap = {">=": c.value - v, ">": c.value - v, "<=": v - c.value, "<": v - c.value, "==": abs(v - c.value)}[c.op]
    return gap if c.holds(v) or gap > 0 else 1e-9  # a strict bound met with equality misses by a hair


@dataclass(frozen=True)
class Study:
    """A parsed, validated study file."""

    settings: StudySettings
    base_raw: dict[str, Any]
    base: RunConfig
    space: SearchSpace
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...]
    source: str = ""  # the study file's text as the user wrote it
    resolved: dict[str, Any] = field(default_factory=dict)  # the whole file after --set overrides: what ran
    overrides: dict[str, Any] = field(default_factory=dict)  # the --set overrides, for the record

    def run_config(self, values: Mapping[str, Any]) -> RunConfig:
        """One trial's run config: the base run with the values the search drew, or for a confirmation run
        (``raybal confirm``) the config a search run stored, with the run's own ``train.seed``."""
        if STORED_CONFIG in values:
            from raybal.resolve import config_from_json, with_overrides

            return with_overrides(config_from_json(values[STORED_CONFIG]), {"train.seed": values["train.seed"]})
        return self.space.trial_config(self.base_raw, values)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to Ray workers, into Ray Tune's state in the results folder) with the credentials of
        its URLs masked (:mod:`raybal.config.secrets`): only the driver that parsed it connects."""
        from raybal.config.secrets import redact, redacted

        state = dict(self.__dict__)
        s = self.settings
        state.update(source=redact(self.source), resolved=redacted(self.resolved),
                     overrides=redacted(self.overrides),
                     settings=dataclasses.replace(s, storage=redact(s.storage), mlflow=redact(s.mlflow)))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def sampler(self) -> Any:
        """The study's Optuna sampler (``study.sampler``), seeded. TPE and GP draw ``startup_trials`` random
        points before they model the results. TPE, GP and NSGA-II read each finished trial's constraint
        values (the searcher sets them with ``Trial.set_constraint``, Optuna 5's interface), so they
        sample infeasible regions less; random and QMC ignore them."""
        import warnings

        import optuna

        s = self.settings
        startup = s.startup_trials or min(10, max(2, s.num_samples // 3))
        if s.sampler == "gp":
            return optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=startup)
        if s.sampler == "random":
            return optuna.samplers.RandomSampler(seed=s.seed)
        if s.sampler == "qmc":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.samplers.QMCSampler(seed=s.seed, scramble=True)
        if s.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=s.seed)
        return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=startup)

    @property
    def configurations(self) -> int:
        """The configurations the search proposes: num_samples, per method with ``study.per_method``."""
        s = self.settings
        return s.num_samples * (len(self.space.method_choice()) if s.per_method else 1)

    @property
    def runs(self) -> int:
        """The runs (Tune trials) the study makes: (the configurations + the baseline) x repeats."""
        s = self.settings
        return (self.configurations + (s.baseline != "none")) * s.repeats

    @property
    def base_flat(self) -> dict[str, Any]:
        return flatten_dict(self.base.to_dict())


def _leaves(node: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Flatten ``[search]``: quoted dotted keys and nested tables both reach a distribution table
    (or a list of alternative tables, each with its own ``when``)."""
    out: list[tuple[str, Any]] = []
    for k, v in node.items():
        key = f"{prefix}{k}"
        nested = isinstance(v, Mapping) and v and all(
            isinstance(x, Mapping) or (isinstance(x, list) and x and all(isinstance(y, Mapping) for y in x))
            for x in v.values())
        if nested and not any(d in v for d in KINDS) and "when" not in v:
            out.extend(_leaves(v, f"{key}."))
        else:
            out.append((key, v))
    return out


def _fraction_keys(base: RunConfig, methods: tuple[str, ...]) -> set[str]:
    """``balance.<knob>`` for every fractions knob (``knob(fractions=True)``) of the methods in play."""
    names = {base.balance.method, *methods}
    return {f"balance.{f}" for m in names if m in METHODS for f in fraction_fields(METHODS.get(m).params)}


def parse_space(raw_search: Any, base: RunConfig) -> SearchSpace:
    if not isinstance(raw_search, Mapping) or not raw_search:
        raise ConfigError("search", "must be a table with at least one parameter, e.g. "
                          "\"train.lr\" = {loguniform = [1e-4, 1e-2]}")
    mods = base.modalities
    plist: list[Param] = []
    for k, v in _leaves(raw_search):
        specs = v if isinstance(v, list) else [v]
        if isinstance(v, list) and not v:
            raise ConfigError(f"search.{k}", "an empty list of alternatives")
        for i, spec in enumerate(specs):
            dist = parse_distribution(k, spec, mods)
            when = spec.get("when", {}) if isinstance(spec, Mapping) else {}
            if not isinstance(when, Mapping):
                raise ConfigError(f"search.{k}.when", "must be a table of dotted key -> value")
            if isinstance(v, list) and not when:  # alternatives for one key, each under its own condition
                raise ConfigError(f"search.{k}[{i}]", "each alternative needs its own `when` condition")
            if k in when:
                raise ConfigError(f"search.{k}.when", "a parameter cannot depend on itself")
            plist.append(Param(k, dist, FrozenMap(when), name=k if i == 0 else f"_alt{i}.{k}"))
    space = SearchSpace(tuple(plist), FrozenMap(), mods)
    keys = {p.key for p in plist}
    for k in ("train.workers", "train.use_gpu", "train.cpus_per_worker"):
        if k in keys:
            raise ConfigError(f"search.{k}", "cannot be searched: a study plans its resources from the base file")
    # Fractions knobs (a utilization target): searched as a simplex, or as M-1 free fractions whose
    # complement keeps the sum at 1.
    fkeys = _fraction_keys(base, space.methods())
    free: dict[str, list[Param]] = {}
    for p in plist:
        head = p.key.rpartition(".")[0]
        if isinstance(p.dist, Simplex) and p.key not in fkeys:
            raise ConfigError(f"search.{p.key}", "a simplex is for a fractions knob such as "
                              + (", ".join(sorted(fkeys)) or "balance.target (with a method that has a target)"))
        if head in fkeys and isinstance(p.dist, (Uniform, LogUniform)):
            free.setdefault(head, []).append(p)
    complement: dict[str, str] = {}
    for head, ps in free.items():
        if head in keys:
            raise ConfigError(f"search.{head}", "search the target either as a simplex or as free fractions")
        names = [p.key.rpartition(".")[2] for p in ps]
        for p, m in zip(ps, names, strict=True):
            if m not in mods:
                raise ConfigError(f"search.{p.key}", f"unknown modality {m!r} (data set has: {', '.join(mods)})")
        rest = [m for m in mods if m not in names]
        if len(rest) != 1:
            raise ConfigError(f"search.{ps[0].key}", f"search M-1 = {len(mods) - 1} fractions (the last is "
                              "1 - the others) or the whole table as {simplex = [...]}")
        high_sum = sum(p.dist.high for p in ps)  # type: ignore[attr-defined]
        if high_sum > 1.0 + 1e-9:
            raise ConfigError(f"search.{ps[0].key}", f"the free fractions' highs sum to {high_sum:g} > 1; "
                              "narrow them or search the table as a simplex")
        complement[head] = rest[0]
    return dataclasses.replace(space, complement=FrozenMap(complement))


def stored_study(meta_path: Path) -> Study:
    """The study a results directory ran, exactly: its ``study.json``'s resolved file with the ``--set``
    overrides it was started with (resume and confirmation both re-build it so)."""
    from raybal.results.tables import ResultsError, read_meta

    meta = read_meta(meta_path)
    if meta.get("kind") != "study":
        raise ResultsError(f"{meta_path}: not a raybal study record")
    try:
        return study_from_dict(meta["study_resolved"], source=meta["study_file"], overrides=meta["overrides"])
    except (ConfigError, KeyError) as exc:
        raise ResultsError(f"{meta_path}: the stored study file is not valid ({exc})") from None


def study_from_dict(raw: Mapping[str, Any], source: str = "", overrides: Mapping[str, Any] | None = None) -> Study:
    """Validate a parsed study file (``overrides`` already applied to ``raw``, kept for the record);
    every problem is a :class:`ConfigError` naming its key."""
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
    objectives = resolve_objectives(settings, base, space.methods())
    constraints = tuple(Constraint.parse(c, f"study.constraints[{i}]") for i, c in enumerate(settings.constraints))
    _probe(space, base_raw, base)
    if settings.per_method and not any(p.key == "balance.method" and not p.when for p in space.params
                                       if isinstance(p.dist, Choice)):
        raise ConfigError("study.per_method",
                          "needs an unconditional \"balance.method\" = {choice = [...]} in [search]")
    if settings.repeats > 1 and "train.seed" in {p.key for p in space.params}:
        raise ConfigError("search.train.seed", "cannot be searched with study.repeats > 1 (the replicates' seeds "
                          "are train.seed, train.seed + 1, ...)")
    if settings.baseline != "none":
        try:
            space.trial_config(base_raw, {"balance.method": settings.baseline})
        except ConfigError as exc:
            raise ConfigError("study.baseline", f"{settings.baseline!r} cannot run on this base file: "
                              f"{exc.key}: {exc.message}") from None
    return Study(settings, dict(base_raw), base, space, objectives, constraints, source,
                 copy.deepcopy(dict(raw)), dict(overrides or {}))


def corner_points(space: SearchSpace, base: RunConfig) -> Iterator[dict[str, Any]]:
    """The search points at the low and the high corner of every parameter, per combination of the
    unconditional choices (e.g. each method of a ``balance.method`` choice)."""
    base_flat = flatten_dict(base.to_dict())
    choice_sets: list[dict[str, Any]] = [{}]
    for p in space.params:
        if isinstance(p.dist, Choice) and not p.when:
            choice_sets = [{**c, p.key: v} for c in choice_sets for v in p.dist.choices][:64]
    for fixed in choice_sets:
        for high in (False, True):
            values = dict(fixed)
            for p in space._ordered():
                if p.key in values or not SearchSpace._applies(p, values, base_flat):
                    continue
                values.update(p.dist.corner(p.key, high))
            yield values


def _probe(space: SearchSpace, base_raw: Mapping[str, Any], base: RunConfig) -> None:
    """Build the run config at every corner point (:func:`corner_points`): a bad one fails the study file."""
    for values in corner_points(space, base):
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
    return study_from_dict(raw, source=p.read_text(), overrides=overrides)
