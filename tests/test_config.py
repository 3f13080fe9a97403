"""Config tree: validation names the key; immutability; overrides; round trip."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from raybal.config import ConfigError, parse_override
from raybal.resolve import config_from_dict, default_config, with_overrides


def err(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    return str(info.value)


def test_defaults_load_and_round_trip() -> None:
    cfg = default_config()
    assert cfg.modalities == ("eo", "sar")
    again = config_from_dict(cfg.to_dict())
    assert again == cfg and again.digest() == cfg.digest()
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_config_is_immutable() -> None:
    cfg = default_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.robustness.levels["gaussian"] = (1.0,)  # type: ignore[index]


@pytest.mark.parametrize("raw, key, words", [
    ({"train": {"lr": -0.1}}, "train.lr", "must be > 0"),
    ({"train": {"lr": "fast"}}, "train.lr", "expected a number"),
    ({"train": {"epochs": 2.5}}, "train.epochs", "expected an integer"),
    ({"train": {"use_gpu": "yes"}}, "train.use_gpu", "true or false"),
    ({"train": {"optimizer": "lion"}}, "train.optimizer", "must be one of"),
    ({"train": {"bogus": 1}}, "train.bogus", "unknown key"),
    ({"nonsense": {}}, "nonsense", "unknown section"),
    ({"study": {}}, "study", "study file"),
    ({"data": {"name": "imagenet"}}, "data.name", "unknown data set"),
    ({"model": {"name": "vit"}}, "model.name", "unknown model"),
    ({"balance": {"method": "magic"}}, "balance.method", "unknown balancing method"),
    ({"data": {"n_train": -5}}, "data.n_train", "must be >= 10"),
    ({"data": {"extra_modalities": ["lidar"]}}, "data.extra_modalities[0]", "unknown modality"),
    ({"robustness": {"corruptions": ["fog"]}}, "robustness.corruptions[0]", "unknown corruption"),
    ({"robustness": {"modalities": ["ir"]}}, "robustness.modalities[0]", "unknown modality"),
    ({"robustness": {"levels": {"gaussian": [-1.0]}}}, "robustness.levels.gaussian", "must be >= 0"),
    ({"model": {"name": "unet"}}, "model.name", "does not support"),
])
def test_bad_values_name_the_key(raw: dict, key: str, words: str) -> None:
    msg = err(raw)
    assert msg.startswith(key + ":"), msg
    assert words in msg
    assert "\n" not in msg


def test_overrides_parse_toml_values() -> None:
    assert parse_override("train.lr=0.003") == ("train.lr", 0.003)
    assert parse_override("data.extra_modalities=[\"ir\"]") == ("data.extra_modalities", ["ir"])
    assert parse_override("balance.method=vanilla") == ("balance.method", "vanilla")
    cfg = with_overrides(default_config(), {"train.lr": 0.01, "data.extra_modalities": ["ir"]})
    assert cfg.train.lr == 0.01 and cfg.modalities == ("eo", "sar", "ir")


def test_flatten_has_dotted_names() -> None:
    flat = default_config().flatten()
    assert flat["data.name"] == "synthetic_aerial"
    assert flat["train.lr"] == pytest.approx(2e-3)
    assert flat["balance.method"] == "vanilla"


def test_resource_knobs_do_not_change_the_digest() -> None:
    base = default_config()
    for key, value in [("train.workers", 2), ("train.use_gpu", True), ("train.cpus_per_worker", 4),
                       ("train.num_threads", 2), ("train.max_failures", 0), ("train.checkpoint_every", 3)]:
        cfg = with_overrides(base, {key: value})
        assert cfg.to_dict() != base.to_dict() and cfg.digest() == base.digest(), key
    assert with_overrides(base, {"train.lr": 0.01}).digest() != base.digest()
    assert with_overrides(base, {"train.precision": "bf16"}).digest() != base.digest()
