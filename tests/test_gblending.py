"""``gblending`` (Wang et al. 2020): Eq. 7's weights, the blended loss, the held-out slice, a run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, tiny_method

from raybal.balancing.gblending import GBlending
from raybal.data import load_data
from raybal.training.loop import fit


def test_weights_are_generalisation_over_squared_overfitting() -> None:
    # rows: L^T, L^V; heads: fused, eo, sar
    before = torch.tensor([[1.0, 1.0, 1.0], [1.2, 1.2, 1.2]], dtype=torch.float64)
    now = torch.tensor([[0.5, 0.6, 0.4], [0.9, 1.0, 1.3]], dtype=torch.float64)
    w = GBlending.blend(before, now, torch.full((3,), 1 / 3, dtype=torch.float64))
    gain = torch.tensor([0.3, 0.2, -0.1], dtype=torch.float64)  # L^V before - now
    over = torch.tensor([0.4 - 0.2, 0.4 - 0.2, 0.9 - 0.2], dtype=torch.float64)  # O now - O before
    expect = gain.clamp_min(0) / over ** 2
    assert torch.allclose(w, expect / expect.sum()) and w[2] == 0  # sar only overfit: no weight
    assert w.sum() == pytest.approx(1.0) and w[0] > w[1]  # the same widening gap, more gain
    stuck = GBlending.blend(before, before + 0.1, w)  # no head gained: the weights are kept
    assert torch.equal(stuck, w)


def test_the_loss_is_the_weighted_sum_of_the_heads_losses() -> None:
    cfg = tiny_config(**{"balance.method": "gblending", "model.name": "sum"})
    method, model, data = tiny_method(cfg)
    method.weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    method.on_epoch_start(1)
    xb, yb = next(iter(data.train.batches(32)))
    out = model(xb)
    expect = (0.5 * F.cross_entropy(out.logits, yb) + 0.3 * F.cross_entropy(out.modality_logits["eo"], yb)
              + 0.2 * F.cross_entropy(out.modality_logits["sar"], yb))
    assert float(method.task_loss(out, yb).detach()) == pytest.approx(float(expect.detach()), rel=1e-6)


def test_the_held_out_slice_is_disjoint_fixed_and_kept_out_of_training() -> None:
    data = load_data(tiny_config().data)
    n = len(data.train)
    kept, v = data.hold_out(0.2, seed=0)
    assert len(v) == round(0.2 * n) and len(kept.train) + len(v) == n
    again, v2 = data.hold_out(0.2, seed=0)
    assert torch.equal(v.y, v2.y) and torch.equal(kept.train.y, again.train.y)
    rows = {m: torch.cat([kept.train.x[m], v.x[m]]).flatten(1) for m in data.modalities}
    whole = {m: data.train.x[m].flatten(1) for m in data.modalities}
    for m in data.modalities:  # a partition of the training split: every sample once
        a = rows[m].sum(1).sort().values
        assert torch.allclose(a, whole[m].sum(1).sort().values)


def test_a_run_measures_weights_after_one_super_epoch() -> None:
    r = fit(tiny_config(**{"balance.method": "gblending", "train.epochs": 4}))
    assert r.status == "ok" and r.final["final.test_accuracy"] > 0.2  # chance: 0.1
    train = [e for e in r.epochs if e["split"] == "train"]
    heads = ("gblend_weight.fused", "gblend_weight.eo", "gblend_weight.sar")
    assert all(sum(e[h] for h in heads) == pytest.approx(1.0) for e in train)
    assert [train[0][h] for h in heads] == pytest.approx([1 / 3] * 3)  # the first super-epoch: uniform
    assert [train[1][h] for h in heads] != pytest.approx([1 / 3] * 3)  # measured at epoch 2's start


def test_the_training_losses_are_measured_without_augmentation(monkeypatch) -> None:  # noqa: ANN001
    """L^T is compared with L^V (held-out, never augmented): the training batches it reads are not augmented
    either, even with noise augmentation on."""
    seen = []
    original = GBlending.head_losses

    def spy(self, model, batches):  # noqa: ANN001, ANN202
        batches = list(batches)
        seen.extend(xb["eo"].detach().clone() for xb, _ in batches)
        return original(self, model, iter(batches))

    monkeypatch.setattr(GBlending, "head_losses", spy)
    cfg = tiny_config(**{"balance.method": "gblending", "train.epochs": 1, "data.augment.noise": {"eo": 1.0}})
    fit(cfg)
    clean = torch.cat([xb["eo"] for xb, _ in load_data(cfg.data).train.batches(256)])
    lo, hi = float(clean.min()), float(clean.max())
    assert seen and all(lo - 1e-6 <= float(x.min()) and float(x.max()) <= hi + 1e-6 for x in seen)
