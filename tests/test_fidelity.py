"""Each method computes what its paper computes (issue 12): reference values written here from the
papers' equations with plain loops, compared with the package on the same model, batch and gradients."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from conftest import tiny_config

from raybal.balancing import METHODS
from raybal.balancing.base import MethodContext
from raybal.data import load_data
from raybal.train import build_for
from raybal.utilization import MUResult


def _setup(**over):  # noqa: ANN202
    cfg = tiny_config(**over)
    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_for(cfg, data)
    ctx = MethodContext(model=model, modalities=data.modalities, epochs=2, steps_per_epoch=4, seed=0)
    return METHODS.get(cfg.balance.method).obj(cfg.balance.params, ctx), model, data


def test_ogm_coefficient_is_eq10_and_ge_noise_uses_the_unscaled_std() -> None:
    m, model, data = _setup(**{"balance.method": "ogm_ge", "balance.alpha": 0.5})
    cls = type(m)
    # Eq. 10 at alpha 0.5, rho 1.2: 1 - tanh(0.6) = 0.4630 (the old relu(rho - 1) form gave 0.90).
    assert abs(cls.coefficient(0.5, 1.2) - (1 - math.tanh(0.6))) < 1e-12
    assert cls.coefficient(0.5, 0.8) == 1.0
    m.on_epoch_start(1)
    xb, yb = next(data.train.batches(32))
    out = model(xb)
    F.cross_entropy(out.logits, yb).backward()
    # Reference scores: sum over the batch of softmax(out_k)[y], plain loops.
    score = {}
    for k in ("eo", "sar"):
        p = out.modality_logits[k].detach().softmax(1)
        score[k] = sum(float(p[i, int(yb[i])]) for i in range(len(yb)))
    ref = {"eo": cls.coefficient(0.5, score["eo"] / score["sar"]), "sar": cls.coefficient(0.5, score["sar"] / score["eo"])}
    coef = m.coefficients(out, yb)
    assert all(abs(coef[k] - ref[k]) < 1e-6 for k in ref)
    grads = {k: [(p, p.grad.clone()) for p in model.encoder_parameters(k) if p.dim() >= 2] for k in ("eo", "sar")}
    gen = torch.Generator()
    gen.set_state(m.gen.get_state())
    m.after_backward(out, yb)
    for k in ("eo", "sar"):
        for p, g0 in grads[k]:
            expected = g0 * ref[k] + torch.randn(g0.shape, generator=gen) * (float(g0.std()) + 1e-8)
            assert torch.allclose(p.grad, expected, atol=1e-6)


def test_guided_loss_is_the_sum_of_branch_cross_entropies() -> None:
    m, model, data = _setup(**{"balance.method": "greedy_guided", "model.name": "mmtm", "model.fuse_after": [2]})
    xb, yb = next(data.train.batches(16))
    out = model(xb)
    ref = 0.0
    for k in ("eo", "sar"):
        lg = out.modality_logits[k].detach()
        ref += sum(-float(lg[i].log_softmax(0)[int(yb[i])]) for i in range(len(yb))) / len(yb)
    assert abs(float(m.task_loss(out, yb).detach()) - ref) < 1e-5
    # the fused prediction stays the mean of the branch logits
    assert torch.allclose(out.logits, (out.modality_logits["eo"] + out.modality_logits["sar"]) / 2)


def test_a_gate_override_never_reaches_evaluation() -> None:
    _, model, data = _setup(**{"balance.method": "greedy_guided", "model.name": "mmtm", "model.fuse_after": [2]})
    xb, _ = next(data.train.batches(16))
    model.train()
    for _ in range(3):  # move the running gates away from 1
        model(xb)
    model.eval()
    with torch.no_grad():
        normal = model(xb).logits
        model.set_gate_override("eo")
        assert torch.equal(model(xb).logits, normal)  # evaluation sees the normal model
        model.train()
        with model.frozen_running_stats():
            overridden = model(xb).logits
        model.set_gate_override(None)
        model.train()
        with model.frozen_running_stats():
            trained = model(xb).logits
    assert not torch.allclose(overridden, trained)  # ... while a training step is re-balanced


def test_mu_target_shuffled_passes_leave_running_statistics_alone() -> None:
    m, model, data = _setup(**{"balance.method": "mu_target", "model.name": "mmtm", "model.fuse_after": [2],
                               "balance.target": {"eo": 0.5, "sar": 0.5}})
    xb, yb = next(data.train.batches(32))
    model.train()
    out = model(xb)
    loss = F.cross_entropy(out.logits, yb)
    state = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    assert state
    m.batch_utilization(out, yb, loss, xb)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())


def test_degenerate_mu_never_meets_a_target() -> None:
    m, _, _ = _setup(**{"balance.method": "mu_target", "balance.target": {"eo": 0.5, "sar": 0.5}})
    dead = MUResult({"eo": 0.5, "sar": 0.5}, {"eo": 0.0, "sar": 0.0}, 2.3, 0.1, degenerate=True)
    live = MUResult({"eo": 0.55, "sar": 0.45}, {"eo": 0.2, "sar": 0.16}, 0.3, 0.9)
    assert m.split_metrics(dead)["mu_target_error"] == 1.0
    assert abs(m.split_metrics(live)["mu_target_error"] - 0.05) < 1e-12
