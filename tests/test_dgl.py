"""``dgl`` (Wei et al., ICCV 2025): encoders learn from their unimodal losses only, the heads and fusion
layers from the fused loss only; the clip after averaging; a run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, tiny_method

from raybal.training.loop import fit

MODELS = {"late": {}, "sum": {"model.name": "sum"}, "mmtm": {"model.name": "mmtm", "model.fuse_after": [2, 3]}}


def _grads(params: list[torch.nn.Parameter], loss: torch.Tensor) -> list[torch.Tensor]:
    g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if v is None else v for p, v in zip(params, g)]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_encoders_take_the_unimodal_gradient_and_the_rest_the_fused_one(model: str) -> None:
    """Written out with autograd: encoder m's gradient is alpha grad CE(logits_m) (on mmtm too, where the
    branch heads see every encoder through the gates: one pass of the sum would add the other branches'
    losses), every other parameter's is grad CE(fused logits)."""
    cfg = tiny_config(**{"balance.method": "dgl", "balance.alpha": 3.0, "balance.clip_norm": 0.0, **MODELS[model]})
    method, net, data = tiny_method(cfg)
    net.train()
    method.on_epoch_start(1)
    xb, yb = next(iter(data.train.batches(32)))
    torch.manual_seed(1)
    out = net(xb)
    loss = F.cross_entropy(out.logits, yb)
    extra = method.extra_loss(xb, out, yb, loss)
    enc = {m: list(net.encoder_parameters(m)) for m in data.modalities}
    enc_ids = {id(p) for ps in enc.values() for p in ps}
    rest = [p for p in net.parameters() if id(p) not in enc_ids]
    expect = dict(zip(map(id, rest), _grads(rest, loss)))
    for m in data.modalities:
        own = 3.0 * F.cross_entropy(out.modality_logits[m], yb)
        expect.update(zip(map(id, enc[m]), _grads(enc[m], own)))
    method.backward(loss, extra)
    for name, p in net.named_parameters():
        got = torch.zeros_like(p) if p.grad is None else p.grad
        torch.testing.assert_close(got, expect[id(p)], rtol=1e-5, atol=1e-7, msg=name)
    # the encoders got something and it is not the fused loss's gradient
    e = enc[data.modalities[0]][0]
    assert e.grad is not None and e.grad.abs().sum() > 0
    assert not torch.allclose(e.grad, _grads([e], F.cross_entropy(net(xb).logits, yb))[0])


def test_the_step_gradient_is_clipped_to_clip_norm_in_its_own_direction() -> None:
    grads = {}
    for clip in (0.0, 0.01):
        cfg = tiny_config(**{"balance.method": "dgl", "balance.clip_norm": clip})
        method, net, data = tiny_method(cfg)
        xb, yb = next(iter(data.train.batches(32)))
        out = net(xb)
        loss = F.cross_entropy(out.logits, yb)
        method.backward(loss, method.extra_loss(xb, out, yb, loss))
        grads[clip] = torch.cat([p.grad.reshape(-1) for p in net.parameters() if p.grad is not None])
    assert grads[0.0].norm() > 0.1  # the clip acts
    assert float(grads[0.01].norm()) == pytest.approx(0.01, rel=1e-3)
    assert torch.nn.functional.cosine_similarity(grads[0.0], grads[0.01], dim=0) > 0.9999


def test_a_run_learns_and_logs_each_unimodal_loss() -> None:
    r = fit(tiny_config(**{"balance.method": "dgl", "train.epochs": 6}))
    assert r.status == "ok" and r.final["final.test_accuracy"] > 0.6  # chance: 0.1; vanilla here: 0.76
    train = [e for e in r.epochs if e["split"] == "train"]
    losses = [(e["dgl_unimodal_loss.eo"], e["dgl_unimodal_loss.sar"]) for e in train]
    assert all(0 < a < 5 and 0 < b < 5 for a, b in losses) and losses[-1][0] < losses[0][0]
