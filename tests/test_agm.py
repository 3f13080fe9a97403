"""``agm`` (Li et al. 2023): Shapley responses, the modulation coefficients, clipping, a run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, tiny_method

from raybal.training.loop import fit


def _setup(extra=(), **kw):  # noqa: ANN001, ANN202, ANN003
    cfg = tiny_config(**{"balance.method": "agm", "data.extra_modalities": list(extra), **kw})
    method, model, data = tiny_method(cfg, epochs=2)
    xb, yb = next(iter(data.train.batches(32, shuffle=False)))
    return method, model, xb, yb


@pytest.mark.parametrize("extra", [(), ("ir",)])
def test_responses_sum_to_the_fused_logits_and_match_the_reference_for_two(extra) -> None:  # noqa: ANN001
    method, model, x, _ = _setup(extra)
    model.eval()
    with torch.no_grad():
        full = model(x).logits
        resp = method.responses(x, full)
        assert torch.allclose(sum(resp.values()), full, atol=1e-5)  # efficiency: sum_m m_m = T
        if not extra:
            zero = {m: torch.zeros_like(t) for m, t in x.items()}
            f_eo = model({**zero, "eo": x["eo"]}).logits
            f_sar = model({**zero, "sar": x["sar"]}).logits
            assert torch.allclose(resp["eo"], (full - f_sar + f_eo) / 2, atol=1e-5)  # the reference's m_a


def test_coefficients_slow_the_modality_ahead_of_its_history() -> None:
    method, *_ = _setup(**{"balance.alpha": 1.0})
    method.on_epoch_start(1)
    s = torch.tensor([1.0, 2.0], dtype=torch.float64)  # eo's loss is lower: eo leads
    k = method.coefficients(s)
    assert k[0] == pytest.approx(math.exp(1 - math.e)) and k[1] == pytest.approx(math.exp(1 - math.exp(-1)))
    assert torch.allclose(method.running, s)
    k2 = method.coefficients(torch.tensor([3.0, 1.0], dtype=torch.float64))  # now sar leads; history says eo
    assert torch.allclose(method.running, torch.tensor([2.0, 1.5], dtype=torch.float64))  # cumulative mean
    assert k2[0] > 1 > k2[1]
    capped = method.coefficients(torch.tensor([100.0, 0.0], dtype=torch.float64))
    assert capped[0] <= math.exp(10) + 1e-6  # rbar - r is clipped at `clip`
    late = _setup(**{"balance.start_epoch": 2})[0]
    late.on_epoch_start(1)
    assert torch.equal(late.coefficients(s), torch.ones(2, dtype=torch.float64))  # outside the window
    assert late.steps == 1  # ... but the history moves


def test_the_loss_keeps_its_value_and_scales_each_modality_gradient() -> None:
    method, model, x, y = _setup()
    method.on_epoch_start(1)
    method.coefficients(torch.tensor([0.1, 5.0], dtype=torch.float64))  # a history in which eo led by far
    x = method.prepare_batch(x, y)
    out = model(x)
    loss = method.task_loss(out, y)
    assert loss.item() == pytest.approx(F.cross_entropy(out.logits, y).item(), rel=1e-4)  # sum_m m_m = T
    k = method.coefs.total
    # now (an untrained model) both respond alike: eo is behind its history and is sped up, sar ahead of
    # its own and is slowed (r_sar > rbar_sar)
    assert k[0] > 1.5 and k[1] < 1
    loss.backward()
    boosted = torch.cat([p.grad.flatten() for p in model.encoder_parameters("eo")]).norm()
    model.zero_grad()
    plain = F.cross_entropy(model(x).logits, y)  # kappa = 1 for every modality: the plain gradient
    plain.backward()
    base = torch.cat([p.grad.flatten() for p in model.encoder_parameters("eo")]).norm()
    assert boosted > 100 * base  # kappa_eo = exp(min(rbar - r, 10)): eo's response gradient ~e^10 larger


def test_gradients_are_clipped_when_a_head_gradient_is_large() -> None:
    method, model, x, y = _setup(**{"balance.grad_clip": 1.0})
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    method.after_backward(None, y)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert total.item() == pytest.approx(1.0, rel=1e-4)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-4)
    method.after_backward(None, y)
    assert all(torch.all(p.grad == 1e-4) for p in model.parameters())  # inside [-1, 1]: untouched


def test_the_clip_reads_the_classifier_not_the_mmtm_units() -> None:
    """On ``mmtm`` the reference's trigger is its classifier: large MMTM-unit gradients with small head
    gradients leave the step alone, a large head gradient clips it."""
    method, model, x, y = _setup(**{"balance.grad_clip": 1.0, "model.name": "mmtm"})
    heads = {id(p) for p in model.classifier_parameters()}
    units = {id(p) for p in model.mmtm.parameters()}
    assert heads and not heads & units
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0 if id(p) in units else 1e-3)
    method.after_backward(None, y)
    assert all(torch.all(p.grad == (3.0 if id(p) in units else 1e-3)) for p in model.parameters())
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0 if id(p) in heads else 1e-3)
    method.after_backward(None, y)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert total.item() == pytest.approx(1.0, rel=1e-4)


def test_trains_end_to_end_and_keeps_its_history_in_the_checkpoint() -> None:
    r = fit(tiny_config(**{"balance.method": "agm", "train.epochs": 2}))
    assert r.status == "ok" and r.final["final.test_accuracy"] > 0.2
    assert {"agm_coef.eo", "agm_coef.sar"} <= set(r.epochs[0])
    method, *_ = _setup()
    method.coefficients(torch.tensor([1.0, 2.0], dtype=torch.float64))
    other, *_ = _setup()
    other.load_state_dict(method.state_dict())
    assert other.steps == 1 and torch.equal(other.running, method.running)
