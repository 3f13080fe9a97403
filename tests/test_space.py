"""Study files: [study] and [search] parsing, sampling, and the Optuna sampler (no Ray)."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from raybal.config import ConfigError
from raybal.study.space import Constraint, load_study, study_from_dict

BASE = {
    "data": {"n_train": 256, "n_val": 128, "n_test": 128, "image_size": 16},
    "model": {"width": 8, "stages": 3},
    "balance": {"method": "mu_target", "target": {"eo": 0.75, "sar": 0.25}},
    "train": {"epochs": 2},
    "robustness": {"modalities": ["eo"], "corruptions": ["gaussian"], "splits": ["val"]},
}


def study(search: dict, **settings) -> object:
    head = {} if "objectives" in settings else {"objective": "robust.val_mean_accuracy"}
    return study_from_dict({**BASE, "study": {**head, **settings}, "search": search})


def draw(s, seed: int, n: int, results: list[float] | None = None) -> list[dict]:
    """n points from the study's own sampler; ``results`` are told back after each ask."""
    opt = optuna.create_study(sampler=s.sampler(), direction="maximize")
    pts = []
    for i in range(n):
        t = opt.ask()
        v = s.space.sample(t, s.base_flat)
        pts.append(v)
        opt.tell(t, results[i] if results else v.get("balance.target.eo", 0.0))
    return pts


def test_free_fraction_and_its_complement_sum_to_one() -> None:
    s = study({"balance.target.eo": {"uniform": [0.5, 0.95]}, "balance.lambda_max": {"loguniform": [1.0, 30.0]}})
    for v in draw(s, 0, 5):
        cfg = s.space.trial_config(s.base_raw, v)
        t = cfg.balance.params.target
        assert 0.5 <= t["eo"] <= 0.95 and math.isclose(t["eo"] + t["sar"], 1.0, abs_tol=1e-9)
        assert 1.0 <= cfg.balance.params.lambda_max <= 30.0


def test_simplex_over_three_modalities() -> None:
    raw = {**BASE, "data": {**BASE["data"], "extra_modalities": ["ir"]},
           "balance": {"method": "mu_target", "target": {"eo": 0.5, "sar": 0.3, "ir": 0.2}},
           "study": {"objective": "final.val_accuracy", "num_samples": 20},
           "search": {"balance.target": {"simplex": ["eo", "sar", "ir"]}}}
    s = study_from_dict(raw)
    seen = []
    for v in draw(s, 0, 20, results=[0.0] * 20):
        t = s.space.trial_config(s.base_raw, v).balance.params.target
        assert math.isclose(sum(t.values()), 1.0, abs_tol=1e-9) and min(t.values()) >= 0
        seen.append(t["ir"])
    assert max(seen) - min(seen) > 0.3  # the whole simplex is explored, not one corner


def test_conditional_parameter_only_for_its_method() -> None:
    s = study({"balance.method": {"choice": ["vanilla", "ogm_ge", "mu_target"]},
               "balance.alpha": {"uniform": [0.1, 1.0], "when": {"balance.method": "ogm_ge"}}},
              objective="final.val_accuracy", num_samples=30)
    seen = set()
    for v in draw(s, 0, 30, results=[0.5] * 30):
        cfg = s.space.trial_config(s.base_raw, v)
        seen.add(cfg.balance.method)
        assert ("balance.alpha" in v) == (cfg.balance.method == "ogm_ge")
        if cfg.balance.method == "ogm_ge":
            assert cfg.balance.params.alpha == v["balance.alpha"]
    assert seen == {"vanilla", "ogm_ge", "mu_target"}


def test_sampler_is_seeded_and_uses_results() -> None:
    s = study({"balance.target.eo": {"uniform": [0.5, 0.95]}}, num_samples=12, startup_trials=4)
    a = draw(s, 0, 12, results=[0.0] * 12)
    b = draw(s, 0, 12, results=[0.0] * 12)
    assert a == b  # same seed, same results -> same points
    s2 = study({"balance.target.eo": {"uniform": [0.5, 0.95]}}, num_samples=12, startup_trials=4, seed=1)
    assert draw(s2, 1, 4, results=[0.0] * 4) != a[:4]
    # After the random start-up, TPE follows the results: reward a high EO target and it proposes high ones.
    up = draw(s, 0, 12, results=None)  # result = the target itself
    assert sum(p["balance.target.eo"] for p in up[6:]) / 6 > sum(p["balance.target.eo"] for p in a[6:]) / 6


@pytest.mark.parametrize("search, key, text", [
    ({"train.lr": {"uniform": [0.1, 0.01]}}, "search.train.lr.uniform", "low 0.1 > high 0.01"),
    ({"train.lr": {"loguniform": [0.0, 0.01]}}, "search.train.lr.loguniform", "low must be > 0"),
    ({"train.lr": {"normal": [0, 1]}}, "search.train.lr.normal", "unknown distribution"),
    ({"train.lr": {"uniform": [0.1]}}, "search.train.lr.uniform", "[low, high]"),
    ({"train.epochs": {"int": [1.5, 3]}}, "search.train.epochs.int", "integers"),
    ({"train.lrr": {"uniform": [0.1, 0.2]}}, "search.train.lrr", "unknown key"),
    ({"train.lr": {"uniform": [-1.0, 0.2]}}, "search.train.lr", "must be > 0"),
    ({"balance.target.eo": {"uniform": [0.5, 1.2]}}, "search.balance.target.eo", "sum to 1.2 > 1"),
    ({"balance.target.nir": {"uniform": [0.1, 0.2]}}, "search.balance.target.nir", "unknown modality"),
    ({"balance.method": {"choice": []}}, "search.balance.method.choice", "non-empty"),
    ({"balance.method": {"choice": ["vanilla", "magic"]}}, "search.balance.method", "unknown"),
    ({}, "search", "at least one parameter"),
])
def test_bad_search_space_names_the_key(search: dict, key: str, text: str) -> None:
    with pytest.raises(ConfigError) as err:
        study(search)
    assert err.value.key == key, str(err.value)
    assert text in str(err.value)


@pytest.mark.parametrize("settings, key, text", [
    ({"objective": "final.test_accuracy"}, "study.objective", "never optimised"),
    ({"objective": "final.val_acc"}, "study.objective", "unknown objective"),
    ({"num_samples": 0}, "study.num_samples", ">= 1"),
    ({"scheduler": "hyperband"}, "study.scheduler", "'asha'"),
    ({"constraints": ["final.val_accuracy >> 3"]}, "study.constraints[0]", "cannot parse"),
    ({"objectives": {"final.val_accuracy": "up"}}, "study.objectives.final.val_accuracy", "mode"),
    ({"colour": 1}, "study.colour", "unknown key"),
])
def test_bad_study_settings_name_the_key(settings: dict, key: str, text: str) -> None:
    with pytest.raises(ConfigError) as err:
        study({"train.lr": {"loguniform": [1e-4, 1e-2]}}, **settings)
    assert err.value.key == key, str(err.value)
    assert text in str(err.value)


def test_missing_sections_and_run_file_sections() -> None:
    with pytest.raises(ConfigError, match="search: missing section"):
        study_from_dict({**BASE, "study": {}})
    with pytest.raises(ConfigError, match="study: missing section"):
        study_from_dict(BASE)


def test_constraint_parse_and_hold() -> None:
    c = Constraint.parse("final.val_accuracy >= 0.9")
    assert c.holds(0.9) and not c.holds(0.89) and not c.holds(float("nan")) and not c.holds(None)


def test_shipped_studies_load(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1] / "studies"
    names = sorted(p.name for p in root.glob("*.toml") if "[study]" in p.read_text())
    assert {"quickstart.toml", "aerial_noise.toml", "greedy_digits.toml", "methods_compare.toml",
            "segmentation.toml"} <= set(names)
    for n in names:
        s = load_study(root / n)
        assert s.objectives and s.space.params


def _with(search: dict, epochs: int = 8, grace: int = 1, **balance) -> object:
    bal = {"method": "vanilla"} if balance.get("method") == "vanilla" else {**BASE["balance"], **balance}
    raw = {**BASE, "train": {"epochs": epochs}, "balance": bal,
           "study": {"objective": "robust.val_mean_accuracy", "scheduler": "asha", "grace_period": grace},
           "search": search}
    return study_from_dict(raw)


def test_each_method_says_when_it_has_acted() -> None:
    from raybal.balancing import METHODS

    def acting(**over):  # noqa: ANN003, ANN202
        from conftest import tiny_config
        cfg = tiny_config(**{"train.epochs": 8, **over})
        return METHODS.get(cfg.balance.method).obj.acting_epoch(cfg)

    mu = {"balance.method": "mu_target", "balance.target": {"eo": 0.75, "sar": 0.25}}
    assert acting() == 1  # vanilla
    assert acting(**mu) == 4  # the default warm-up: half of 8 epochs
    assert acting(**mu, **{"balance.pretrain_epochs": 2, "balance.warmup": 0.5}) == 5  # 2 + half of 6
    assert acting(**mu, **{"balance.warmup": 0.25}) == 2  # a quarter of 8
    assert acting(**mu, **{"balance.schedule": "epochs", "balance.weight": "warmup", "balance.growth": 1.0}) == 6
    assert acting(**{"balance.method": "ogm_ge", "balance.start_epoch": 3}) == 3
    assert acting(**{"balance.method": "greedy_guided", "model.name": "mmtm", "balance.start_epoch": 12}) == 8


def test_asha_never_judges_a_trial_before_its_method_has_acted() -> None:
    from raybal.study.driver import grace_period

    lam = {"balance.lambda_max": {"loguniform": [2.0, 20.0]}}
    assert grace_period(_with(lam)) == 4  # mu_target's default warm-up ends in epoch 4 of 8
    assert grace_period(_with(lam, grace=5)) == 5  # a longer study grace stays
    searched = {**lam, "balance.warmup": {"uniform": [0.25, 0.75]}}
    assert grace_period(_with(searched)) == 6  # the slowest warm-up it may draw: 0.75 of 8 epochs
    methods = {"balance.method": {"choice": ["vanilla", "ogm_ge"]},
               "balance.start_epoch": {"int": [2, 5], "when": {"balance.method": "ogm_ge"}}}
    assert grace_period(_with(methods, method="vanilla")) == 5
    assert grace_period(_with(lam, epochs=3, grace=9)) == 3  # never beyond the run
