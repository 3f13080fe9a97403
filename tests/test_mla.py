"""``mla`` (Zhang et al. 2024): the projector, one step per modality through the shared head, the
test-time entropy fusion, checks, a run."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config, tiny_method

from raybal.config import ConfigError
from raybal.models.fusion import entropy_fusion
from raybal.training.loop import fit

SHARED = {"balance.method": "mla", "model.name": "sum", "model.shared_head": True, "model.fusion": "entropy"}


def _setup(**kw):  # noqa: ANN003, ANN202
    cfg = tiny_config(**{**SHARED, **kw})
    return tiny_method(cfg)


def test_the_projector_follows_the_recursive_update() -> None:
    method, *_ = _setup()
    method.on_epoch_start(1)
    f1, f2 = torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    g = torch.ones(3, 2)
    method.project(g, f1)  # the first call only starts the count
    assert torch.equal(g, torch.ones(3, 2)) and torch.equal(method.P, torch.eye(2, dtype=torch.float64))
    method.batch = 2  # alpha = 0.1^(2/4 + 1)
    method.project(g, f2)
    r, alpha = torch.tensor([0.0, 2.0], dtype=torch.float64), 0.1 ** 1.5
    P = torch.eye(2, dtype=torch.float64) - torch.outer(r, r) / (alpha + r @ r)
    P = P / torch.linalg.matrix_norm(P)
    assert torch.allclose(method.P, P)
    assert torch.allclose(g.double(), torch.ones(3, 2, dtype=torch.float64) @ P.t(), atol=1e-6)
    assert g[:, 1].abs().max() < 0.05 * g[:, 0].abs().max()  # the direction the features used is damped


def test_apply_add_is_balancebenchmarks_g_plus_projected_g() -> None:
    """``apply = "add"``: the head's gradient becomes g + g P^T (BalanceBenchmark's GSPlugin), the default
    g P^T; the same P either way."""
    grads = {}
    for apply in ("replace", "add"):
        method, *_ = _setup(**{"balance.apply": apply})
        method.on_epoch_start(1)
        g = torch.ones(3, 2)
        method.project(g, torch.tensor([[1.0, 0.0], [3.0, 0.0]]))
        method.batch = 2
        method.project(g, torch.tensor([[0.0, 2.0], [0.0, 2.0]]))
        grads[apply], P = g.double(), method.P
    ones = torch.ones(3, 2, dtype=torch.float64)
    assert torch.allclose(grads["replace"], ones @ P.t(), atol=1e-6)
    assert torch.allclose(grads["add"], ones + ones @ P.t(), atol=1e-6)


def test_the_default_projector_is_the_authors_element_wise_update() -> None:
    """20 updates on the same features: the package's P against the authors' recursion written out
    (``GSPlugin.before_update``: r a (1, d) row, k = P r^T, P - k k^T / (alpha + k r) with k r a d x d
    matrix, then P / |P|_F), and ``projector = "owm"`` against the scalar form. The two forms' projected
    gradients end nearly orthogonal: a test that pinned one would fail on the other."""
    gen = torch.Generator().manual_seed(0)
    feats = [torch.rand(8, 6, generator=gen) for _ in range(21)]
    steps, grad = 4, torch.randn(3, 6, generator=gen)
    out = {}
    for form in ("reference", "owm"):
        method, *_ = _setup(**{"balance.projector": form})
        method.ctx.steps_per_epoch = steps
        method.on_epoch_start(1)
        P = torch.eye(6, dtype=torch.float64)
        for i, f in enumerate(feats):
            method.batch = i % steps
            g = grad.clone()
            method.project(g, f)
            if i == 0:
                continue  # the first call only starts the count
            alpha = 1.0 * 0.1 ** (method.batch / steps + 1)
            r = f.double().mean(0, keepdim=True)  # (1, d)
            k = P @ r.t()  # (d, 1)
            P = P - (k @ k.t()) / (alpha + (k @ r if form == "reference" else r @ k))
            P = P / torch.linalg.matrix_norm(P)
            assert torch.allclose(method.P, P, rtol=1e-9, atol=1e-12), (form, i)
        out[form] = (grad.double() @ P.t()).flatten()
    cos = torch.nn.functional.cosine_similarity(out["reference"], out["owm"], dim=0)
    assert abs(float(cos)) < 0.5, float(cos)


def test_each_modality_steps_alone_through_the_shared_head() -> None:
    method, model, data = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = next(iter(data.train.batches(32, shuffle=False)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    steps = []
    real_step = opt.step

    def step(*a, **k):  # noqa: ANN002, ANN003, ANN202
        moved = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        steps.append(moved)
        return real_step(*a, **k)

    opt.step = step
    method.on_epoch_start(1)
    out, loss, total = method.update(opt, x, y, torch.autocast("cpu", enabled=False))
    assert len(steps) == len(data.modalities)  # one optimizer step per modality
    for moved, m in zip(steps, data.modalities):
        others = [o for o in data.modalities if o != m]
        assert any(n.startswith(f"encoders.{m}.") for n in moved) and any(n.startswith("shared.") for n in moved)
        assert not any(n.startswith(f"encoders.{o}.") for o in others for n in moved)
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters() if n.startswith("shared."))
    assert set(out.modality_logits) == set(data.modalities) and torch.isfinite(loss)


def test_entropy_fusion_weights_the_confident_modality_per_sample() -> None:
    sure = torch.tensor([[8.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # sample 0 sure of class 0; sample 1 flat
    flat = torch.tensor([[0.0, 0.1, 0.0], [0.0, 0.0, 9.0]])  # sample 0 flat; sample 1 sure of class 2
    fused = entropy_fusion(torch.stack([sure, flat]))
    assert fused[0].argmax() == 0 and fused[1].argmax() == 2
    logp = torch.stack([sure, flat]).log_softmax(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    w = (-entropy).softmax(0)
    assert torch.allclose(fused, (w[..., None] * torch.stack([sure, flat])).sum(0))


def test_mla_needs_the_shared_head() -> None:
    with pytest.raises(ConfigError, match='model.shared_head: balance.method "mla" trains every modality'):
        tiny_config(**{"balance.method": "mla", "model.name": "sum"})


def test_trains_end_to_end_and_keeps_its_projector_in_the_checkpoint() -> None:
    r = fit(tiny_config(**{**SHARED, "train.epochs": 3}))
    assert r.status == "ok" and r.final["final.test_accuracy"] > 0.2
    method, *_ = _setup()
    method.P, method.calls = torch.eye(4, dtype=torch.float64) * 0.5, 7
    other, *_ = _setup()
    other.load_state_dict(method.state_dict())
    assert other.calls == 7 and torch.equal(other.P, method.P)
