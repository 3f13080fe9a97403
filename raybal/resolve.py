"""Resolving a run file against the registries: names -> entries, params validated, cross-checks.

:mod:`raybal.config` defines the tree and validates values; this module, which sits above the
data set, model, method and corruption registries (DESIGN.md §5.9), fills a tree from a parsed
TOML file: ``[data] name`` / ``[model] name`` / ``[balance] method`` select an entry whose
params dataclass validates the section's other keys, then the checks that span sections run
(modality names, task / model fit, each method's own :meth:`check_config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raybal.balancing.base import METHODS
from raybal.config import (
    RUN_SECTIONS,
    BalanceConfig,
    ConfigError,
    DataConfig,
    ModelConfig,
    RobustnessConfig,
    RunConfig,
    TrainConfig,
    build,
    load_toml,
    set_dotted,
)
from raybal.config.registry import Registry
from raybal.data import DATASETS
from raybal.models import MODELS
from raybal.noise import CORRUPTIONS, is_severity
from raybal.noise.base import SEVERITIES


def _build_selected(section: str, selector: str, default: str, raw: Mapping[str, Any],
                    registry: Registry[Any], cls: type) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(section, f"expected a table, got {raw!r}")
    raw = dict(raw)
    name = raw.pop(selector, default)
    key = f"{section}.{selector}"
    if not isinstance(name, str):
        raise ConfigError(key, f"expected a string, got {name!r}")
    if name not in registry:
        raise ConfigError(key, f"unknown {registry.kind} {name!r} (known: {', '.join(registry.names())})")
    extra: dict[str, Any] = {}
    if section == "data" and "cache_dir" in raw:
        cache_dir = raw.pop("cache_dir")
        if not isinstance(cache_dir, str):
            raise ConfigError("data.cache_dir", f"expected a string, got {cache_dir!r}")
        extra["cache_dir"] = cache_dir
    entry = registry.get(name)
    if entry.params is None:
        if raw:
            raise ConfigError(f"{section}.{next(iter(raw))}", f"unknown key ({registry.kind} {name!r} takes no knobs)")
        params = None
    else:
        params = build(entry.params, raw, section)
    return cls(**{selector: name, "params": params, **extra})


def config_from_dict(raw: Mapping[str, Any], *, allow: tuple[str, ...] = ()) -> RunConfig:
    """Validate a nested dict (a parsed run file) into a :class:`RunConfig`.

    ``allow`` names extra top-level sections the caller handles itself (a study's
    ``[study]`` and ``[search]``); they are ignored here.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError("", "a run file must be a TOML table")
    for section in raw:
        if section not in RUN_SECTIONS and section not in allow:
            hint = " (it belongs in a study file: use `raybal study run`)" if section in ("study", "search") else ""
            raise ConfigError(section, f"unknown section{hint} (allowed: {', '.join(RUN_SECTIONS)})")
    data = _build_selected("data", "name", "synthetic_aerial", raw.get("data", {}), DATASETS, DataConfig)
    model = _build_selected("model", "name", "late", raw.get("model", {}), MODELS, ModelConfig)
    balance = _build_selected("balance", "method", "vanilla", raw.get("balance", {}), METHODS, BalanceConfig)
    train = build(TrainConfig, raw.get("train", {}), "train")
    rob_raw = raw.get("robustness")
    if rob_raw is not None and isinstance(rob_raw, Mapping) and "enabled" not in rob_raw:
        rob_raw = {**rob_raw, "enabled": True}
    robustness = build(RobustnessConfig, rob_raw or {}, "robustness")
    cfg = RunConfig(data, model, balance, train, robustness)
    _cross_validate(cfg)
    return cfg


def _cross_validate(cfg: RunConfig) -> None:
    """Checks that span sections: modality names, task/model fit, method/model fit."""
    mods = cfg.modalities
    for i, m in enumerate(cfg.robustness.modalities):
        if m not in mods:
            raise ConfigError(f"robustness.modalities[{i}]",
                              f"unknown modality {m!r} (data set has: {', '.join(mods)})")
    for i, c in enumerate(cfg.robustness.corruptions):
        if c not in CORRUPTIONS:
            raise ConfigError(f"robustness.corruptions[{i}]",
                              f"unknown corruption {c!r} (known: {', '.join(CORRUPTIONS.names())})")
    for c, levels in cfg.robustness.levels.items():
        if c not in CORRUPTIONS:
            raise ConfigError(f"robustness.levels.{c}",
                              f"unknown corruption {c!r} (known: {', '.join(CORRUPTIONS.names())})")
        bounds = CORRUPTIONS.get(c).meta.get("level_range")
        for i, v in enumerate(levels if isinstance(levels, (list, tuple)) else [levels]):
            if is_severity(c) and (isinstance(v, bool) or v not in SEVERITIES):
                raise ConfigError(f"robustness.levels.{c}[{i}]", f"a severity, one of 1-5, got {v!r}")
            if bounds is not None and not bounds[0] <= v <= bounds[1]:
                raise ConfigError(f"robustness.levels.{c}[{i}]",
                                  f"must be in [{bounds[0]:g}, {bounds[1]:g}], got {v!r}")
    for name, parts in cfg.robustness.joint.items():
        key = f"robustness.joint.{name}"
        if name in CORRUPTIONS:
            raise ConfigError(key, f"{name!r} is a corruption's name; give the joint corruption its own")
        if not isinstance(parts, Mapping) or len(parts) < 2:
            raise ConfigError(key, f"a table of at least two modality = corruption pairs, e.g. "
                              f"{{eo = \"clouds\", sar = \"speckle\"}}, got {parts!r}")
        for m, c in parts.items():
            if m not in mods:
                raise ConfigError(f"{key}.{m}", f"unknown modality {m!r} (data set has: {', '.join(mods)})")
            if not isinstance(c, str) or c not in CORRUPTIONS:
                raise ConfigError(f"{key}.{m}", f"unknown corruption {c!r} (known: {', '.join(CORRUPTIONS.names())})")
    for name, parts in cfg.robustness.bands.items():
        key = f"robustness.bands.{name}"
        if name in CORRUPTIONS or name in cfg.robustness.joint:
            raise ConfigError(key, f"{name!r} is a corruption's name; give the band failure its own")
        if not isinstance(parts, Mapping) or not parts:
            raise ConfigError(key, f"a table of modality = [band indices], e.g. {{eo = [3]}}, got {parts!r}")
        for m, bands in parts.items():
            if m not in mods:
                raise ConfigError(f"{key}.{m}", f"unknown modality {m!r} (data set has: {', '.join(mods)})")
            if (not isinstance(bands, (list, tuple)) or not bands
                    or any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in bands)):
                raise ConfigError(f"{key}.{m}", f"a list of band indices (integers from 0), got {bands!r}")
    augment = getattr(cfg.data.params, "augment", None)
    for m, v in augment.noise.items() if augment is not None else ():
        if m not in mods:
            raise ConfigError(f"data.augment.noise.{m}", f"unknown modality {m!r} (data set has: {', '.join(mods)})")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"data.augment.noise.{m}", f"expected a variance (a number), got {v!r}")
    for m, table in augment.corruptions.items() if augment is not None else ():
        if m not in mods:
            raise ConfigError(f"data.augment.corruptions.{m}",
                              f"unknown modality {m!r} (data set has: {', '.join(mods)})")
        if not isinstance(table, Mapping):
            raise ConfigError(f"data.augment.corruptions.{m}", f"expected a table corruption -> probability, "
                              f"e.g. {{clouds = 0.3}}, got {table!r}")
        for c, p in table.items():
            if c not in CORRUPTIONS:
                raise ConfigError(f"data.augment.corruptions.{m}.{c}",
                                  f"unknown corruption {c!r} (known: {', '.join(CORRUPTIONS.names())})")
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
                raise ConfigError(f"data.augment.corruptions.{m}.{c}", f"a probability in [0, 1], got {p!r}")
    for m in getattr(cfg.model.params, "pretrained", None) or {}:
        if m not in mods:
            raise ConfigError(f"model.pretrained.{m}", f"unknown modality {m!r} (data set has: {', '.join(mods)})")
    model_cls = MODELS.get(cfg.model.name).obj
    task = cfg.data.params.task
    if task not in model_cls.tasks:
        raise ConfigError("model.name", f"model {cfg.model.name!r} does not support the {task} task "
                          f"of data set {cfg.data.name!r}")
    METHODS.get(cfg.balance.method).obj.check_config(cfg, model_cls)
    tc = cfg.train
    if tc.batch_size % tc.workers:
        raise ConfigError("train.batch_size", f"the global batch {tc.batch_size} must be divisible by "
                          f"train.workers = {tc.workers}")


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Load a run file and apply dotted overrides; raises :class:`ConfigError`."""
    raw = load_toml(path)
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return config_from_dict(raw)


def default_config(**overrides: Any) -> RunConfig:
    """The embedded default (synthetic_aerial, late fusion, vanilla), with dotted overrides."""
    raw: dict[str, Any] = {}
    for k, v in overrides.items():
        set_dotted(raw, k.replace("__", "."), v)
    return config_from_dict(raw)


def with_overrides(cfg: RunConfig, overrides: Mapping[str, Any]) -> RunConfig:
    """A new validated config: ``cfg`` with dotted overrides applied."""
    raw = cfg.to_dict()
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    return config_from_dict(raw)


def config_from_json(text: str) -> RunConfig:
    """The config stored with a checkpoint or a Ray worker's loop config (``RunConfig.to_json``)."""
    import json

    return config_from_dict(json.loads(text))
