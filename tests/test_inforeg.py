"""``inforeg`` (Huang et al. 2025): the learning window, the leader's proximal pull, Fisher traces, a run."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config, tiny_method

from raybal.balancing.inforeg import InfoReg
from raybal.models.base import ModelOutput
from raybal.training.loop import fit


def test_the_window_is_the_relative_growth_of_the_trace_moving_average() -> None:
    assert InfoReg.window_growth([0.0] * 10, 10) == 1.0  # no trace yet: open
    assert InfoReg.window_growth([0.0] * 9 + [5.0, 5.0], 10) == pytest.approx(0.5)  # MA 0.5 -> 1.0
    flat = [2.0] * 12
    assert InfoReg.window_growth(flat, 10) == 0.0  # no growth: closed for any threshold > 0
    assert InfoReg.window_growth([1.0, 2.0, 3.0], 2) == pytest.approx((2.5 - 1.5) / 2.5)


def _method(**kw):  # noqa: ANN003, ANN202
    cfg = tiny_config(**{"balance.method": "inforeg", "model.name": "sum", **kw})
    return tiny_method(cfg, epochs=3)


def test_only_the_leading_modality_with_an_open_window_is_pulled_back() -> None:
    m, model, _ = _method(**{"balance.beta": 0.95})
    m.on_epoch_start(1)
    beta = m.coefficients(torch.tensor([10.0, 4.0], dtype=torch.float64))
    assert beta[0] == pytest.approx(0.95 * math.exp(math.tanh(6.0))) and beta[1] == 0
    tie = m.coefficients(torch.tensor([3.0, 3.0], dtype=torch.float64))
    assert (tie > 0).sum() == 1
    m.open = torch.tensor([False, True])  # eo's information no longer grows fast: no regulation at all
    assert torch.equal(m.coefficients(torch.tensor([10.0, 4.0], dtype=torch.float64)),
                       torch.zeros(2, dtype=torch.float64))


def test_beta_0_is_per_modality_as_the_reference() -> None:
    """The reference (InfoReg_CVPR2025 main.py, 939b2ed) pulls audio, its first modality, with 0.95 and
    visual with 0.1: the second modality leading gets its own, smaller beta_0 (one 0.95 for either fails)."""
    m, _, _ = _method()
    m.on_epoch_start(1)
    first = m.coefficients(torch.tensor([10.0, 4.0], dtype=torch.float64))
    second = m.coefficients(torch.tensor([4.0, 10.0], dtype=torch.float64))
    assert first[0] == pytest.approx(0.95 * math.exp(math.tanh(6.0))) and first[1] == 0
    assert second[1] == pytest.approx(0.1 * math.exp(math.tanh(6.0))) and second[0] == 0
    three, _, _ = tiny_method(tiny_config(**{"balance.method": "inforeg", "model.name": "sum",
                                             "balance.beta_others": 0.3}), epochs=3)
    three.on_epoch_start(1)
    assert three.coefficients(torch.tensor([1.0, 5.0], dtype=torch.float64))[1] == pytest.approx(
        0.3 * math.exp(math.tanh(4.0)))


def test_the_window_closes_below_the_reference_threshold() -> None:
    """threshold 0.05 (the reference's): a trace growing 4.5 % per epoch no longer opens the window."""
    m, _, _ = _method()
    w = m.params.window
    trace = [1.0] * (w + 1)
    trace[-1] = 1.0 + 0.045 * w / (1 - 0.045)  # relative growth of the w-epoch average: 0.045
    assert InfoReg.window_growth(trace, w) == pytest.approx(0.045)
    m.traces = {"eo": list(trace), "sar": list(trace)}
    m.on_epoch_start(2)
    assert not m.open.any()


def test_the_proximal_gradient_and_the_fisher_sums() -> None:
    m, model, data = _method()
    m.on_epoch_start(1)
    eo, sar = m._encoder("eo"), m._encoder("sar")
    with torch.no_grad():
        for p in eo + sar:
            p.add_(0.5)  # every weight moved 0.5 away from the epoch-start anchor
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    n = 8
    y = torch.zeros(n, dtype=torch.long)
    logits = {"eo": torch.full((n, 2), -5.0), "sar": torch.zeros(n, 2)}
    logits["eo"][:, 0] = 5.0  # eo is sure of the true class: it leads
    m.after_backward(ModelOutput(torch.zeros(n, 2), {}, logits), y)
    s_eo, s_sar = n * torch.softmax(torch.tensor([5.0, -5.0]), 0)[0].item(), n * 0.5
    beta = 0.95 * math.exp(math.tanh(s_eo - s_sar))
    assert all(torch.allclose(p.grad, torch.full_like(p, 0.5 * beta)) for p in eo)
    assert all(torch.all(p.grad == 0) for p in sar)
    assert all(torch.allclose(f, torch.full_like(f, (0.5 * beta) ** 2)) for f in m.fisher["eo"])
    m.on_epoch_end(1)
    assert m.traces["eo"][-1] == pytest.approx(len(m.fisher["eo"]) * (0.5 * beta) ** 2, rel=1e-5)
    assert m.traces["sar"][-1] == 0.0


def test_trains_end_to_end_and_its_traces_survive_a_checkpoint() -> None:
    r = fit(tiny_config(**{"balance.method": "inforeg", "train.epochs": 3}))
    assert r.status == "ok" and r.final["final.test_accuracy"] > 0.2
    train = [e for e in r.epochs if e["split"] == "train"]
    assert all(e["inforeg_trace.eo"] > 0 and e["inforeg_trace.sar"] > 0 for e in train)
    assert train[0]["inforeg_growth.eo"] == 1.0  # the first epoch: the window is open
    assert any(e["inforeg_beta.eo"] + e["inforeg_beta.sar"] > 0 for e in train)
    m, *_ = _method()
    m.traces["eo"].append(3.0)
    other, *_ = _method()
    other.load_state_dict(m.state_dict())
    assert other.traces == m.traces
