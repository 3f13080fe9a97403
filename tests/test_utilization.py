"""Measurements on constructed models whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from raybal.data.base import Split
from raybal.measure.utilization import (
    LearningSpeedTracker,
    learning_speed,
    mean_ablation_utilization,
    mean_features,
    measure,
)
from raybal.models.base import FusionModel, ModelOutput


class Oracle(FusionModel):
    """Reads the label from the modalities in ``uses`` (each holds a one-hot copy of it)."""

    def __init__(self, uses: dict[str, float]) -> None:
        super().__init__(("a", "b"))
        self.uses = uses
        self.dummy = nn.Parameter(torch.ones(1))

    def encode(self, x):
        return {m: x[m] for m in self.modalities}

    def fuse(self, f):
        logits = sum(w * 8.0 * f[m] for m, w in self.uses.items()) * self.dummy
        if not self.uses:
            logits = torch.zeros_like(f["a"]) * self.dummy
        return ModelOutput(logits, f, None)

    def branch_parameters(self, modality):
        return []


def onehot_split(n: int = 400, classes: int = 5) -> Split:
    y = torch.arange(n) % classes
    oh = torch.nn.functional.one_hot(y, classes).float()
    return Split({"a": oh.clone(), "b": oh.clone()}, y)


def test_model_reading_only_a_has_mu_a_one() -> None:
    res = measure(Oracle({"a": 1.0}), onehot_split(), num_classes=5, task="classification", n_repeats=3)
    assert res.metric == 1.0
    assert res.shares["a"] == pytest.approx(1.0)
    assert res.shares["b"] == pytest.approx(0.0)
    assert res.raw["b"] == 0.0 and res.raw["a"] > 1.0
    assert not res.degenerate


def test_equal_use_gives_equal_shares() -> None:
    res = measure(Oracle({"a": 0.5, "b": 0.5}), onehot_split(), num_classes=5, task="classification", n_repeats=3)
    assert res.shares["a"] == pytest.approx(0.5, abs=0.05)
    assert sum(res.shares.values()) == pytest.approx(1.0)


def test_model_ignoring_inputs_is_flagged_not_divided_by_zero() -> None:
    res = measure(Oracle({}), onehot_split(), num_classes=5, task="classification")
    assert res.degenerate
    assert res.shares == {"a": 0.5, "b": 0.5}


def test_no_modalities_measures_the_metric_alone_with_no_shuffled_passes() -> None:
    model = Oracle({"a": 1.0})
    calls = 0
    real = model.fuse

    def counted(f):  # noqa: ANN001, ANN202
        nonlocal calls
        calls += 1
        return real(f)

    model.fuse = counted
    res = measure(model, onehot_split(400), num_classes=5, task="classification", n_repeats=3, batch_size=100,
                  modalities=())
    assert calls == 4 and res.shares == {} and res.metric == 1.0  # one pass per batch, none shuffled
    calls = 0
    measure(model, onehot_split(400), num_classes=5, task="classification", n_repeats=3, batch_size=100)
    assert calls == 4 * (1 + 2 * 3)  # None: every modality, 3 shuffles each


def test_mu_is_seeded() -> None:
    model, sp = Oracle({"a": 0.7, "b": 0.3}), onehot_split()
    r1 = measure(model, sp, num_classes=5, task="classification", seed=3)
    r2 = measure(model, sp, num_classes=5, task="classification", seed=3)
    assert r1.raw == r2.raw


def test_mean_ablation_utilization_of_a_one_modality_model() -> None:
    model, sp = Oracle({"a": 1.0}), onehot_split()
    cond = mean_ablation_utilization(model, sp, mean_features(model, sp), num_classes=5, task="classification")
    # Replacing a by its mean leaves chance accuracy (ties -> class 0: 1/5); replacing b changes nothing.
    assert cond["b"] == pytest.approx(0.0)
    assert cond["a"] == pytest.approx(0.8)


def test_learning_speed_is_grad_over_weight_norm() -> None:
    p = nn.Parameter(torch.full((4,), 2.0))
    p.grad = torch.full((4,), 0.5)
    assert learning_speed([p]) == pytest.approx((4 * 0.25) / (4 * 4.0))
    tr = LearningSpeedTracker(("a", "b"))
    tr.update({"a": 1.0, "b": 1.0}, {"a": 0.1, "b": 1.0})
    assert tr.speeds()["a"] == pytest.approx(1.0) and tr.speeds()["b"] == pytest.approx(0.0)
    assert tr.imbalance() == pytest.approx(1.0)
    assert math.isnan(LearningSpeedTracker(("a", "b")).speeds()["a"])


@pytest.mark.parametrize("name", ["late", "unet"])
def test_chunked_encoding_is_the_whole_batch_encoding(name: str) -> None:
    from raybal.data import load_data
    from raybal.measure.utilization import encode_chunked
    from raybal.resolve import default_config
    from raybal.training.loop import build_for

    over = {"model.name": name, "model.width": 4, "data.n_train": 40, "data.n_val": 10, "data.n_test": 10,
            "data.image_size": 16}
    if name == "unet":
        over["data.task"] = "segmentation"
    cfg = default_config(**over)
    data = load_data(cfg.data)
    model = build_for(cfg, data).eval()
    xb, _ = next(data.train.batches(40))
    with torch.no_grad():
        whole, parts = model.encode(xb), encode_chunked(model, xb, chunk=7)  # 6 chunks, the last one short
    for m in data.modalities:
        a = whole[m] if isinstance(whole[m], tuple) else (whole[m],)
        b = parts[m] if isinstance(parts[m], tuple) else (parts[m],)
        assert len(a) == len(b) and all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a, b))


def test_shapley_of_a_one_modality_model_and_any_m_against_all_orderings() -> None:
    """BalanceBenchmark's Shapley contribution: the oracle reading only a earns a's whole gain over the
    blank model and b nothing; a real 3-modality net's values equal the average marginal gain over all
    3! join orders, each v(S) from a forward pass with the absent inputs zeroed."""
    import itertools

    from raybal.data import load_data
    from raybal.measure.metrics import finish_metric, task_metric
    from raybal.measure.utilization import shapley_utilization
    from raybal.resolve import default_config
    from raybal.training.loop import build_for

    model, sp = Oracle({"a": 1.0}), onehot_split()
    phi = shapley_utilization(model, sp, num_classes=5, task="classification")
    assert phi["b"] == pytest.approx(0.0) and phi["a"] == pytest.approx(1.0 - 0.2)  # blank: ties -> class 0

    cfg = default_config(**{"data.extra_modalities": ["ir"], "model.width": 4, "data.n_train": 40,
                            "data.n_val": 10, "data.n_test": 60, "data.image_size": 16})
    data = load_data(cfg.data)
    torch.manual_seed(1)
    net = build_for(cfg, data).eval()
    mods = data.modalities

    def v(present: frozenset) -> float:  # the metric with the other modalities' inputs zeroed
        stat = total = None
        for xb, yb in data.test.batches(32):
            with torch.no_grad():
                logits = net({m: t if m in present else torch.zeros_like(t) for m, t in xb.items()}).logits
            st, tot = task_metric(logits, yb, data.num_classes, "classification")
            stat, total = (st, tot) if stat is None else (stat + st, total + tot)
        return finish_metric(stat, total, "classification")

    orders = list(itertools.permutations(mods))
    expect = {m: 0.0 for m in mods}
    for order in orders:
        for i, m in enumerate(order):
            expect[m] += (v(frozenset(order[:i + 1])) - v(frozenset(order[:i]))) / len(orders)
    got = shapley_utilization(net, data.test, num_classes=data.num_classes, task="classification")
    assert got == pytest.approx(expect, abs=1e-9)
    assert sum(got.values()) == pytest.approx(v(frozenset(mods)) - v(frozenset()), abs=1e-9)


@pytest.mark.parametrize("corruption, level", [("gaussian", 0.5), ("missing", 0.3), ("clouds", 3)])
def test_a_corrupted_metric_and_its_resamples_do_not_depend_on_the_batch_size(corruption: str, level: float) -> None:
    from raybal.measure.bootstrap import Bootstrap
    from raybal.noise import corrupter

    g = torch.Generator().manual_seed(0)
    y = torch.randint(3, (90,), generator=g)
    x = {"a": torch.rand(90, 3, 8, 8, generator=g) + y.view(-1, 1, 1, 1) * 0.5,
         "b": torch.rand(90, 3, 8, 8, generator=g)}
    split = Split(x, y)
    model = Pooled()
    out = []
    for batch_size in (7, 90):
        boot = Bootstrap.for_split(90, 50, seed=1, task="classification", num_classes=3)
        res = measure(model, split, num_classes=3, task="classification", batch_size=batch_size, modalities=(),
                      corrupt=corrupter("a", corruption, level, seed=2, n=90), boot=boot)
        out.append((res.metric, boot.metrics(), res.loss))
    assert out[0][0] == out[1][0] and out[0][1] == pytest.approx(out[1][1], abs=1e-12)
    assert out[0][2] == pytest.approx(out[1][2], abs=1e-9)
    clean = measure(model, split, num_classes=3, task="classification", modalities=())
    assert abs(out[0][2] - clean.loss) > 1e-4  # the corruption acted


class Pooled(FusionModel):
    """Class scores from each modality's per-channel means (a fixed linear read-out)."""

    def __init__(self) -> None:
        super().__init__(("a", "b"))
        self.dummy = nn.Parameter(torch.ones(1))

    def encode(self, x):  # noqa: ANN001, ANN201
        return {m: x[m].mean(dim=(2, 3)) for m in self.modalities}

    def fuse(self, f):  # noqa: ANN001, ANN201
        return ModelOutput((f["a"].sum(1, keepdim=True) * torch.tensor([[-1.0, 0.0, 1.0]]) + torch.tensor(
            [[1.5, 0.0, -1.5]]) * 1.5) * self.dummy, f, None)

    def branch_parameters(self, modality):  # noqa: ANN001, ANN201
        return []
