"""Every balancing method on tiny data: finite loss, and each knob changes what it should."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config

from raybal.balancing import METHODS
from raybal.balancing.base import MethodContext
from raybal.config import ConfigError
from raybal.data import load_data
from raybal.resolve import config_from_dict, with_overrides
from raybal.training.loop import build_for, fit

METHOD_OVERRIDES = {
    "vanilla": {},
    "mu_target": {"balance.target": {"eo": 0.6, "sar": 0.4}, "balance.lambda_0": 1.0},
    "greedy_guided": {"model.name": "mmtm", "model.fuse_after": [2], "balance.start_epoch": 1},
    "greedy_random": {"model.name": "mmtm", "model.fuse_after": [2], "balance.start_epoch": 1},
    "ogm_ge": {"balance.alpha": 1.0},
    "modality_dropout": {"balance.p": 0.3},
    "pmr": {"balance.alpha": 1.0},
    "mmpareto": {"balance.gamma": 1.5},
    "agm": {"balance.alpha": 1.0},
    "inforeg": {"balance.beta": 0.95},
    "mla": {"model.name": "sum", "model.shared_head": True, "model.fusion": "entropy"},
    "gblending": {"balance.holdout": 0.2},
    "reconboost": {"model.name": "sum"},
    "dgl": {"balance.alpha": 2.0},
}


def test_every_registered_method_is_covered() -> None:
    assert set(METHODS) == set(METHOD_OVERRIDES)


@pytest.mark.parametrize("method", sorted(METHOD_OVERRIDES))
def test_method_trains_with_finite_loss(method: str) -> None:
    cfg = tiny_config(**{"balance.method": method, **METHOD_OVERRIDES[method]})
    res = fit(cfg)
    losses = [r["loss"] for r in res.epochs if r["split"] == "train"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert sum(res.final[f"final.mu.{m}"] for m in cfg.modalities) == pytest.approx(1.0)


def test_method_knobs_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"^balance.alpha: must be >= 0"):
        config_from_dict({"balance": {"method": "ogm_ge", "alpha": -1}})
    with pytest.raises(ConfigError, match=r"^balance.window: must be >= 1"):
        config_from_dict({"balance": {"method": "greedy_guided", "window": 0}, "model": {"name": "mmtm"}})
    with pytest.raises(ConfigError, match=r"^model.name: .*needs a model with cross-modal gates"):
        config_from_dict({"balance": {"method": "greedy_guided"}})
    with pytest.raises(ConfigError, match=r"^balance.end_epoch: must be >= start_epoch"):
        config_from_dict({"balance": {"method": "ogm_ge", "start_epoch": 3, "end_epoch": 2}})


def _method(cfg):
    data = load_data(cfg.data)
    model = build_for(cfg, data)
    ctx = MethodContext(model=model, modalities=data.modalities, epochs=2, steps_per_epoch=4, seed=0)
    return METHODS.get(cfg.balance.method).obj(cfg.balance.params, ctx), model, data


def test_mu_target_penalty_pulls_toward_target() -> None:
    """After vanilla steps the net leans on EO; penalty steps move the batch estimate toward 20/80."""
    cfg = tiny_config(**{"balance.method": "mu_target", "balance.target": {"eo": 0.2, "sar": 0.8}})
    m, model, data = _method(cfg)
    torch.manual_seed(0)
    xb, yb = next(data.train.batches(128))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    ce = torch.nn.functional.cross_entropy
    for _ in range(40):
        loss = ce(model(xb).logits, yb)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def eo_share() -> float:
        model.eval()
        with torch.no_grad():
            out = model(xb)
            m.gen.manual_seed(0)
            _, u = m.batch_utilization(out, yb, ce(out.logits, yb))
        model.train()
        return float(u[0])

    start = eo_share()
    assert start > 0.5
    m.on_epoch_start(50)  # lambda at its maximum
    for _ in range(30):
        out = model(xb)
        loss = ce(out.logits, yb)
        pen = m.extra_loss(xb, out, yb, loss)
        opt.zero_grad()
        (loss + pen if pen is not None else loss).backward()
        opt.step()
    assert eo_share() < start - 0.15


def test_mu_target_feature_and_input_shuffle_agree() -> None:
    """Shuffling features equals shuffling inputs (per-modality branches, eval-mode BN)."""
    cfg = tiny_config(**{"balance.method": "mu_target", "balance.target": {"eo": 0.5, "sar": 0.5}})
    m, model, data = _method(cfg)
    model.eval()
    xb, yb = next(data.train.batches(64))
    out = model(xb)
    loss = torch.nn.functional.cross_entropy(out.logits, yb)
    m.gen.manual_seed(1)
    d_feat, _ = m.batch_utilization(out, yb, loss)
    object.__setattr__(m.params, "shuffle", "inputs")
    m.gen.manual_seed(1)
    d_in, _ = m.batch_utilization(out, yb, loss, xb)
    assert torch.allclose(d_feat, d_in, atol=1e-5)


def test_ogm_coefficient_drops_for_the_dominant_modality() -> None:
    cfg = tiny_config(**{"balance.method": "ogm_ge", "balance.alpha": 1.0})
    m, model, data = _method(cfg)
    xb, yb = next(data.train.batches(64))
    out = model(xb)
    # Make eo dominant: its own logits put all mass on the true class.
    out.modality_logits["eo"] = torch.nn.functional.one_hot(yb, 10).float() * 20
    out.modality_logits["sar"] = torch.zeros_like(out.modality_logits["sar"])
    coef = m.coefficients(out, yb)
    assert coef["sar"] == 1.0 and coef["eo"] < 0.01
    m.params = m.params.__class__(alpha=0.01)
    assert 0.9 < m.coefficients(out, yb)["eo"] < 1.0


def test_ogm_scales_encoder_gradients() -> None:
    cfg = tiny_config(**{"balance.method": "ogm_ge", "balance.alpha": 1.0, "balance.ge": False})
    m, model, data = _method(cfg)
    m.on_epoch_start(1)
    xb, yb = next(data.train.batches(64))
    out = model(xb)
    out.modality_logits["eo"] = torch.nn.functional.one_hot(yb, 10).float() * 20
    out.modality_logits["sar"] = torch.zeros_like(out.modality_logits["sar"])
    torch.nn.functional.cross_entropy(out.logits, yb).backward()
    before = {k: [p.grad.clone() for p in model.branch_parameters(k)] for k in ("eo", "sar")}
    m.after_backward(out, yb)
    k_eo = m.coefficients(out, yb)["eo"]
    assert k_eo < 1.0
    # Only the encoder's weight tensors are modulated (as the reference's conv kernels); BatchNorm
    # parameters and biases keep their gradients.
    for g0, p in zip(before["eo"], model.branch_parameters("eo")):
        assert torch.allclose(p.grad, g0 * k_eo if p.dim() >= 2 else g0)
    for g0, p in zip(before["sar"], model.branch_parameters("sar")):
        assert torch.equal(p.grad, g0)


def test_greedy_guided_enters_rebalancing_when_imbalanced() -> None:
    cfg = tiny_config(**{"balance.method": "greedy_guided", "model.name": "mmtm", "model.fuse_after": [2],
                         "balance.alpha": 0.01, "balance.window": 3, "balance.start_epoch": 1})
    m, model, _ = _method(cfg)
    m.on_epoch_start(1)
    m.tracker.update({"eo": 1.0, "sar": 1.0}, {"eo": 0.01, "sar": 1.0})  # s_eo = 2, s_sar = 0: d = 2
    m.before_step()
    assert m.override is None
    m.after_step()  # a normal step with |d| > alpha: enter re-balancing on eo for Q steps
    seen = []
    for _ in range(4):
        m.before_step()
        seen.append(m.override)
        gate_unit = model.mmtm[0]
        seen.append(gate_unit.override)
        m.after_step()
    assert seen[:6] == ["eo", "eo", "eo", "eo", "eo", "eo"]
    assert m.n_rebalance == 3
    # Below the threshold nothing happens.
    m2, _, _ = _method(with_overrides(cfg, {"balance.alpha": 5.0}))
    m2.on_epoch_start(1)
    m2.tracker.update({"eo": 1.0, "sar": 1.0}, {"eo": 0.01, "sar": 1.0})
    m2.before_step()
    m2.after_step()
    m2.before_step()
    assert m2.override is None


def test_mmtm_running_gates_are_buffers_that_move_only_in_training() -> None:
    cfg = tiny_config(**{"model.name": "mmtm", "model.fuse_after": [2]})
    data = load_data(cfg.data)
    model = build_for(cfg, data)
    names = dict(model.named_buffers())
    assert any("running_gate_eo" in n for n in names) and any("running_gate_sar" in n for n in names)
    xb, _ = next(data.train.batches(32))
    unit = model.mmtm[0]
    model.eval()
    before = unit.running_gate_eo.clone()
    model(xb)
    assert torch.equal(unit.running_gate_eo, before)
    model.train()
    before_sar = unit.running_gate_sar.clone()
    model(xb)
    assert not torch.equal(unit.running_gate_eo, before)
    assert not torch.equal(unit.running_gate_sar, before_sar)


def test_mmtm_gate_and_running_average_as_wu_et_al_reference() -> None:
    """``gate = "sigmoid"``, ``running = "mean"``: Wu et al.'s reference (balanced_mmtm.py) gates by sigmoid
    and keeps the mean of every training batch's gate; the defaults are Joze et al.'s 2 sigmoid and an EMA."""
    from raybal.models.fusion import MMTMUnit

    torch.manual_seed(0)
    xs = [{"eo": torch.randn(4, 8, 5, 5), "sar": torch.randn(4, 8, 5, 5)} for _ in range(3)]

    def batch_gates(unit: MMTMUnit, x: dict) -> torch.Tensor:
        sq = torch.cat([x[m].mean(dim=(2, 3)) for m in ("eo", "sar")], dim=1)
        return torch.sigmoid(unit.excite["eo"](torch.relu(unit.squeeze(sq)))).mean(0)

    wu = MMTMUnit({"eo": 8, "sar": 8}, 4, 0.1, gate="sigmoid", running="mean").train()
    joze = MMTMUnit({"eo": 8, "sar": 8}, 4, 0.1).train()
    joze.load_state_dict(wu.state_dict(), strict=False)  # the same weights; Joze's has no counts
    with torch.no_grad():
        out = wu(xs[0])
        assert torch.allclose(out["eo"], xs[0]["eo"] * torch.sigmoid(
            wu.excite["eo"](torch.relu(wu.squeeze(torch.cat([xs[0][m].mean(dim=(2, 3)) for m in ("eo", "sar")], 1)))
                            ))[:, :, None, None], atol=1e-6)
        for x in xs[1:]:
            wu(x)
        mean = torch.stack([batch_gates(wu, x) for x in xs]).mean(0)
        assert torch.allclose(wu.running_gate_eo, mean, atol=1e-6) and float(wu.running_count_eo) == 3
        ema = torch.ones(8)
        for x in xs:
            joze(x)
            ema = 0.9 * ema + 0.1 * 2 * batch_gates(joze, x)
        assert torch.allclose(joze.running_gate_eo, ema, atol=1e-6)
        before = wu.running_gate_eo.clone()
        wu.momentum = 0.0  # FusionModel.frozen_running_stats: no average moves
        wu(xs[0])
        assert torch.equal(wu.running_gate_eo, before) and float(wu.running_count_eo) == 3
