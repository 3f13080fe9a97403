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


def _one_line(exc: ConfigError) -> None:
    text = str(exc)
    assert "\n" not in text and text.strip()


@FAST
@given(documents)
def test_config_loader_never_tracebacks(raw: dict) -> None:
    try:
        cfg = config_from_dict(raw)
    except ConfigError as exc:
        _one_line(exc)
        return
    assert isinstance(cfg, RunConfig)
    assert config_from_dict(cfg.to_dict()) == cfg  # a loaded config round-trips


@FAST
@given(documents)
def test_study_parser_never_tracebacks(raw: dict) -> None:
    raw = {**raw, "study": raw.get("study", {}), "search": raw.get("search", {})}
    try:
        study = study_from_dict(raw)
    except ConfigError as exc:
        _one_line(exc)
        return
    assert isinstance(study, Study) and study.space.params


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
