"""One typed, validated, immutable config tree (DESIGN.md §4, §5.2).

A run file (TOML) has the sections ``[data]``, ``[model]``, ``[balance]``, ``[train]`` and
``[robustness]``. ``[data]``, ``[model]`` and ``[balance]`` select a registry entry
(``name`` / ``method``); their other keys are validated against that entry's params
dataclass. Every failure is a :class:`ConfigError` that names the dotted key, raised before
any work starts. The tree is made of frozen dataclasses and :class:`FrozenMap`, so a config
can be hashed, pickled to Ray workers and stored with every result row and checkpoint.

The bottom layer (DESIGN.md §5.9): it knows no registry. Resolving a run file against them (which
data set / model / method a name means, checks across sections) is :mod:`raybal.resolve`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

RUN_SECTIONS = ("data", "model", "balance", "train", "robustness")


class ConfigError(ValueError):
    """A bad config value; ``str()`` is one line that names the dotted key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)


class FrozenMap(Mapping[str, Any]):
    """An immutable, hashable, picklable str-keyed mapping (insertion ordered)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_items", tuple((items or {}).items()))

    def __getitem__(self, key: str) -> Any:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self) == dict(other)

    def __repr__(self) -> str:
        return f"FrozenMap({dict(self._items)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (dict(self._items),))


def knob(default: Any, *, ge: float | None = None, gt: float | None = None,
         le: float | None = None, lt: float | None = None, doc: str = "", resource: bool = False,
         fractions: bool = False) -> Any:
    """A dataclass field with a numeric range checked on load.

    ``resource = True`` marks a knob that says *where* a run executes (workers, GPUs, threads),
    not *what* it computes: it is left out of :meth:`RunConfig.digest`, so the same run with more
    workers is the same run. ``fractions = True`` marks a table modality -> fraction that sums to
    1 (a utilization target): studies search it on the simplex and keep the sum at 1.
    """
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc, "resource": resource, "fractions": fractions}
    if isinstance(default, (dict, list, tuple, FrozenMap)):
        value = default
        return field(default_factory=lambda: _freeze(value), metadata=meta)
    return field(default=default, metadata=meta)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenMap({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: thaw(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    if tp is FrozenMap or origin in (Mapping, dict):
        return "table"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return the frozen value."""
    origin = get_origin(tp)
    if tp is Any:
        return _freeze(value)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(key, f"must be one of {_type_name(tp)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
        inner = get_args(tp)[0]
        return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is FrozenMap or origin in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a table, got {value!r}")
        args = get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return FrozenMap({str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()})
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(key, f"must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")


def _check_range(value: Any, meta: Mapping[str, Any], key: str) -> None:
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if meta.get("ge") is not None and v < meta["ge"]:
            raise ConfigError(key, f"must be >= {meta['ge']}, got {v}")
        if meta.get("gt") is not None and v <= meta["gt"]:
            raise ConfigError(key, f"must be > {meta['gt']}, got {v}")
        if meta.get("le") is not None and v > meta["le"]:
            raise ConfigError(key, f"must be <= {meta['le']}, got {v}")
        if meta.get("lt") is not None and v >= meta["lt"]:
            raise ConfigError(key, f"must be < {meta['lt']}, got {v}")


def build(cls: type, raw: Mapping[str, Any], prefix: str) -> Any:
    """Build the frozen dataclass ``cls`` from ``raw``, naming ``prefix.key`` on error.

    A class with a ``PROFILES`` table (name -> knob values) and the knob that names one (``profile``, or
    the class's ``PROFILE_KNOB``, e.g. a method's ``recipe``) takes the named profile's values for every
    knob ``raw`` does not set: a profile is a named set of defaults, and a value written in the file
    always wins."""
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix, f"expected a table, got {raw!r}")
    profiles = getattr(cls, "PROFILES", None)
    chooser = getattr(cls, "PROFILE_KNOB", "profile")
    if profiles is not None and chooser in raw:
        name = raw[chooser]
        if not isinstance(name, str) or name not in profiles:
            raise ConfigError(f"{prefix}.{chooser}", f"unknown {chooser} {name!r} (known: {', '.join(profiles)})")
        raw = {**profiles[name], **raw}
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.init}
    for key in raw:
        if key not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise ConfigError(f"{prefix}.{key}", f"unknown key (allowed: {allowed})")
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        key = f"{prefix}.{name}"
        if name not in raw:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, raw[name], key)
            continue
        value = _coerce(raw[name], tp, key)
        _check_range(value, f.metadata, key)
        if isinstance(value, FrozenMap):
            for k, v in value.items():
                _check_range(v, f.metadata, f"{key}.{k}")
        kwargs[name] = value
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(prefix)
    return obj


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: ``name`` selects a data set; the other keys are its knobs."""

    name: str = "synthetic_aerial"
    cache_dir: str | None = None
    params: Any = None

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.params.modality_names())


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: ``name`` selects an architecture; the other keys are its knobs."""

    name: str = "late"
    params: Any = None


@dataclass(frozen=True)
class BalanceConfig:
    """``[balance]``: ``method`` selects a balancing strategy; the other keys are its knobs."""

    method: str = "vanilla"
    params: Any = None


@dataclass(frozen=True)
class TrainConfig:
    """``[train]``: the optimisation loop shared by every method."""

    epochs: int = knob(8, ge=1)
    batch_size: int = knob(64, ge=2, doc="the global batch: each of train.workers ranks takes batch_size / workers")
    lr: float = knob(2e-3, gt=0.0)
    weight_decay: float = knob(1e-4, ge=0.0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    seed: int = knob(0, ge=0)
    workers: int = knob(1, ge=1, resource=True, doc="data-parallel workers on Ray Train (1 = plain fit(), no Ray)")
    use_gpu: bool = knob(False, resource=True)
    max_failures: int = knob(2, ge=0, resource=True,
                             doc="Ray Train: worker-group restarts (from the last epoch checkpoint)")
    cpus_per_worker: int = knob(1, ge=1, resource=True, doc="Ray Train: CPUs (torch threads) per worker")
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = knob(False, resource=True, doc="torch.compile the training forward (pays off on long runs)")
    memory_format: Literal["auto", "contiguous", "channels_last"] = knob(
        "auto", resource=True, doc="image tensors' layout; auto = channels_last on CUDA for conv models")
    select: Literal["auto", "target", "best_val", "last"] = "auto"
    mu_repeats: int = knob(3, ge=1, doc="shuffles averaged per permutation-MU estimate")
    mu_every: int = knob(1, ge=1, doc="measure val MU every N epochs (and always at the end)")
    test_every: int = knob(1, ge=0, doc="test rows in epochs.parquet every N epochs and the last; 0: none (unread)")
    num_threads: int = knob(0, ge=0, resource=True, doc="torch CPU threads; 0 = torch's default")
    checkpoint_every: int = knob(1, ge=1, resource=True)


@dataclass(frozen=True)
class RobustnessConfig:
    """``[robustness]``: the noise sweep run after training (DESIGN.md §2)."""

    enabled: bool = False
    modalities: tuple[str, ...] = ()
    corruptions: tuple[str, ...] = ("gaussian", "blackout")
    levels: FrozenMap = knob({}, ge=0.0, doc="corruption -> levels; missing ones use the corruption's registered "
                             "default levels")
    joint: FrozenMap = knob({}, doc="name -> {modality = corruption}: several modalities corrupted at once; step k "
                            "applies each corruption's k-th non-zero level (rows: modality \"eo+sar\", "
                            "corruption = the name, level = k)")
    bands: FrozenMap = knob({}, doc="name -> {modality = [band indices]}: named band failures, the listed bands "
                            "zeroed in every sample (rows: the modalities joined by \"+\", corruption = the name, "
                            "level = 1)")
    splits: tuple[Literal["val", "test"], ...] = ("val", "test")
    measure_mu: bool = True
    seed: int = knob(0, ge=0)
    bootstrap: int = knob(200, ge=0, le=10_000, doc="resamples of each split's samples for the summary's 95 % "
                          "intervals (robustness_summary.parquet *_lo / *_hi); 0: no intervals")


@dataclass(frozen=True)
class RunConfig:
    """The whole tree. Construct it with :func:`raybal.resolve.load_config` / ``config_from_dict``."""

    data: DataConfig
    model: ModelConfig
    balance: BalanceConfig
    train: TrainConfig
    robustness: RobustnessConfig

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.data.modalities

    def to_dict(self) -> dict[str, Any]:
        """The config as plain TOML-able nested dicts (the file that would recreate it)."""
        out: dict[str, Any] = {}
        for section, selector in (("data", "name"), ("model", "name"), ("balance", "method")):
            sec = getattr(self, section)
            d = {selector: getattr(sec, selector)}
            if section == "data" and sec.cache_dir is not None:
                d["cache_dir"] = sec.cache_dir
            d.update(thaw(sec.params) if sec.params is not None else {})
            out[section] = d
        out["train"] = thaw(self.train)
        out["robustness"] = thaw(self.robustness)
        return _drop_none(out)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def flatten(self) -> dict[str, Any]:
        """Dotted names -> scalar values (lists as JSON), for ``trials.parquet`` columns."""
        return flatten_dict(self.to_dict())

    def digest(self, *, seed: bool = True) -> str:
        """A hash of what the run computes, resource knobs (``knob(resource=True)``) left out; with
        ``seed=False`` also ``train.seed``: the *configuration* its replicate seeds share (``config_id``)."""
        d = self.to_dict()
        d["train"] = {k: v for k, v in d["train"].items() if k not in RESOURCE_KEYS and (seed or k != "seed")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


RESOURCE_KEYS = frozenset(f.name for f in fields(TrainConfig) if f.metadata.get("resource"))


def fraction_fields(params_cls: type | None) -> tuple[str, ...]:
    """The knobs of a params dataclass declared with ``knob(fractions=True)``."""
    if params_cls is None or not dataclasses.is_dataclass(params_cls):
        return ()
    return tuple(f.name for f in fields(params_cls) if f.metadata.get("fractions"))


def _drop_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d


def flatten_dict(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_dict(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(list(v))
        else:
            out[key] = v
    return out


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(key, "an override must be section.key=value")
    node = raw
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(key, f"{p} is a value, not a table")
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=0.003"`` -> ``("train.lr", 0.003)``; the value is read as TOML, else a string."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like section.key=value")
    key, _, value = text.partition("=")
    key = key.strip()
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key, parsed


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("", f"config file not found: {p}")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{p}: malformed TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError("", f"{p}: not a text file") from None
