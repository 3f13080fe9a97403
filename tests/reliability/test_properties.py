"""Property tests: any input either loads into a valid config or fails with the documented
error (ConfigError, one line naming a key) -- never a traceback of another kind."""

from __future__ import annotations

import math
import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raybal.config import ConfigError, RunConfig, load_toml
from raybal.resolve import config_from_dict
from raybal.study.space import Study, study_from_dict

SECTIONS = ["data", "model", "balance", "train", "robustness", "study", "search", "junk"]
KEYS = ["name", "method", "target", "eo", "sar", "ir", "n_train", "image_size", "epochs", "lr", "batch_size",
        "workers", "width", "stages", "lambda_max", "alpha", "window", "modalities", "corruptions", "levels",
        "gaussian", "splits", "objective", "objectives", "num_samples", "scheduler", "constraints", "uniform",
        "loguniform", "int", "choice", "simplex", "when", "train.lr", "balance.target.eo", "balance.method",
        "informativeness", "task", "fuse_after", "select", "precision", "seed", "x"]
NAMES = ["synthetic_aerial", "colored_digits", "late", "mmtm", "sum", "unet", "vanilla", "mu_target",
         "ogm_ge", "greedy_guided", "gaussian", "blackout", "asha", "fifo", "segmentation", "eo", "sar",
         "final.val_accuracy", "robust.val_mean_accuracy", "final.test_accuracy", "max", "min", "", "??"]

scalars = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.sampled_from(NAMES), st.text(string.printable, max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)), max_leaves=12)
sections = st.dictionaries(st.sampled_from(KEYS), values, max_size=6)
documents = st.dictionaries(st.sampled_from(SECTIONS), st.one_of(sections, scalars), max_size=6)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Valid documents first, then mutated: most generated inputs reach the deep checks (ranges, cross-section
# rules, search spaces) instead of failing at the first unknown section.
MODEL_FOR = {  # the model a method needs (resolve's cross-section rules); every other method takes the default
    "greedy_guided": {"name": "mmtm", "fuse_after": [2, 3]},
    "greedy_random": {"name": "mmtm", "fuse_after": [2, 3]},
    "mla": {"name": "sum", "shared_head": True, "fusion": "entropy"},
    "reconboost": {"name": "sum"},
}


@st.composite
def valid_runs(draw: st.DrawFn) -> dict:
    from raybal.balancing import METHODS
    from raybal.resolve import default_config

    method = draw(st.sampled_from(METHODS.names()))
    data = draw(st.sampled_from([{"name": "colored_digits"}, {"name": "digit_views"},
                                 {"name": "synthetic_aerial", "n_train": draw(st.integers(64, 4000))}]))
    mods = default_config(**{"data.name": data["name"]}).data.params.modality_names()
    weights = [draw(st.floats(0.05, 1.0)) for _ in mods]
    target = {m: w / sum(weights) for m, w in zip(mods, weights)}
    balance: dict = {"method": method, **({"target": target} if method == "mu_target" else {})}
    return {
        "data": {**data, "seed": draw(st.integers(0, 2**31 - 1))},
        "model": {**MODEL_FOR.get(method, {}), "width": draw(st.sampled_from([8, 16, 32]))},
        "balance": balance,
        "train": {"epochs": draw(st.integers(1, 50)), "batch_size": draw(st.integers(2, 256)),
                  "lr": draw(st.floats(1e-5, 1.0)), "optimizer": draw(st.sampled_from(["adam", "adamw", "sgd"])),
                  "seed": draw(st.integers(0, 2**31 - 1)), "precision": draw(st.sampled_from(["fp32", "bf16"]))},
        "robustness": {"enabled": draw(st.booleans())},
    }


@st.composite
def valid_studies(draw: st.DrawFn) -> dict:
    run = draw(valid_runs())
    low = draw(st.floats(1e-5, 0.01))
    search: dict = {"train.lr": {"loguniform": [low, low * draw(st.floats(1.5, 100.0))]},
                    "train.epochs": {"int": [1, draw(st.integers(2, 20))]}}
    if run["balance"]["method"] == "mu_target":
        search["balance.target"] = {"simplex": list(run["balance"]["target"])}
    study = {"objective": draw(st.sampled_from(["final.val_accuracy", "final.val_loss"])),
             "num_samples": draw(st.integers(1, 64)), "scheduler": draw(st.sampled_from(["asha", "fifo"])),
             "seed": draw(st.integers(0, 1000))}
    return {**run, "study": study, "search": search}


def _paths(doc: dict) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for k, v in doc.items():
        out.append((k,))
        if isinstance(v, dict):
            out += [(k, *p) for p in _paths(v)]
    return out


@st.composite
def mutated(draw: st.DrawFn, docs: st.SearchStrategy[dict]) -> dict:
    """A valid document with 1-3 mutations: a value replaced by any value, a key removed, an unknown key added."""
    import copy

    doc = copy.deepcopy(draw(docs))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        op = draw(st.sampled_from(["replace", "remove", "add"]))
        if op == "replace":
            parent[path[-1]] = draw(values)
        elif op == "remove":
            del parent[path[-1]]
        else:
            parent[draw(st.sampled_from(KEYS + SECTIONS))] = draw(values)
        if not doc:
            break
    return doc


def _one_line(exc: ConfigError) -> None:
    text = str(exc)
    assert "\n" not in text and text.strip()


@FAST
@given(valid_runs())
def test_a_valid_run_file_loads_and_round_trips(raw: dict) -> None:
    cfg = config_from_dict(raw)
    assert cfg.balance.method == raw["balance"]["method"] and cfg.train.epochs == raw["train"]["epochs"]
    assert config_from_dict(cfg.to_dict()) == cfg


@FAST
@given(valid_studies())
def test_a_valid_study_file_parses(raw: dict) -> None:
    study = study_from_dict(raw)
    assert {p.key for p in study.space.params} >= {"train.lr", "train.epochs"}


@FAST
@given(mutated(valid_runs()))
def test_config_loader_never_tracebacks(raw: dict) -> None:
    try:
        cfg = config_from_dict(raw)
    except ConfigError as exc:
        _one_line(exc)
        return
    assert isinstance(cfg, RunConfig)
    assert config_from_dict(cfg.to_dict()) == cfg  # a loaded config round-trips


@FAST
@given(mutated(valid_studies()))
def test_study_parser_never_tracebacks(raw: dict) -> None:
    try:
        study = study_from_dict(raw)
    except ConfigError as exc:
        _one_line(exc)
        return
    assert isinstance(study, Study) and study.space.params


@FAST
@given(documents)
def test_any_document_loads_or_names_its_error(raw: dict) -> None:
    """Documents of any shape (mostly refused at the first check): the loader's outer layer."""
    try:
        cfg = config_from_dict(raw)
    except ConfigError as exc:
        _one_line(exc)
        return
    assert config_from_dict(cfg.to_dict()) == cfg


bounds = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.text(max_size=3))


@FAST
@given(st.sampled_from(["uniform", "loguniform", "int", "choice", "simplex", "normal"]),
       st.lists(bounds, max_size=3), st.sampled_from(["train.lr", "balance.lambda_max", "balance.target.eo",
                                                       "train.epochs", "balance.target", "model.width"]))
def test_search_distributions_never_traceback(kind: str, args: list, key: str) -> None:
    base = {"data": {"n_train": 64}, "balance": {"method": "mu_target", "target": {"eo": 0.5, "sar": 0.5}},
            "study": {"objective": "final.val_accuracy"}, "search": {key: {kind: args}}}
    try:
        study = study_from_dict(base)
    except ConfigError as exc:
        _one_line(exc)
        return
    p = study.space.params[0]
    if p.dist.kind in ("uniform", "loguniform", "int"):
        assert math.isfinite(p.dist.low) and p.dist.low <= p.dist.high


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_toml_file_of_any_bytes(tmp_path_factory, data: bytes) -> None:  # noqa: ANN001
    path = Path(tmp_path_factory.mktemp("toml")) / "f.toml"
    path.write_bytes(data)
    try:
        raw = load_toml(path)
        config_from_dict(raw)
    except ConfigError as exc:
        _one_line(exc)
