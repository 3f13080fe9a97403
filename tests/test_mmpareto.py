"""``mmpareto`` (Wei & Hu 2024): the min-norm weight, the integrated encoder gradients, a run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, tiny_method

from raybal.training.loop import fit


def test_min_norm_weight_is_the_closest_point_to_the_origin() -> None:
    from raybal.balancing.mmpareto import MMPareto

    g1, g2 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([-1.0, 1.0], dtype=torch.float64)
    c = MMPareto.min_norm_weight(g1, g2)
    assert float(c) == 0.6  # (|g2|^2 - <g1,g2>) / |g1 - g2|^2 = 3 / 5
    d = c * g1 + (1 - c) * g2
    assert abs(float(d @ (g1 - g2))) < 1e-12  # the minimum-norm point of the segment
    grid = torch.linspace(0, 1, 1001, dtype=torch.float64)
    norms = ((grid[:, None] * g1 + (1 - grid[:, None]) * g2) ** 2).sum(1)
    assert float(grid[norms.argmin()]) == 0.6
    # at the ends the reference's clamps: one gradient inside the other's half-space
    assert float(MMPareto.min_norm_weight(g1, 3 * g1)) == 0.999
    assert float(MMPareto.min_norm_weight(3 * g1, g1)) == 0.001


@pytest.mark.parametrize("model_name", ["sum", "mmtm"])
def test_encoder_gradients_are_the_integrated_ones_and_heads_get_the_plain_sum(model_name: str) -> None:
    """Encoder m's unimodal gradient is that of its own loss alone: with MMTM gates every head sees every
    encoder, and one backward pass of the losses' sum would add the other branches' losses to it."""
    cfg = tiny_config(**{"balance.method": "mmpareto", "model.name": model_name, "balance.gamma": 1.5})
    method, model, data = tiny_method(cfg, steps_per_epoch=1)
    xb, yb = next(iter(data.train.batches(64, shuffle=False)))
    out = model(xb)
    l_mm = F.cross_entropy(out.logits, yb)
    l_u = {m: F.cross_entropy(out.modality_logits[m], yb) for m in data.modalities}
    params = [p for p in model.parameters() if p.requires_grad]
    plain = torch.autograd.grad(l_mm + sum(l_u.values()), params, retain_graph=True)
    expect = {id(p): g for p, g in zip(params, plain)}
    conflicts = 0
    for m in data.modalities:  # the formula, from gradients computed independently
        enc = model.encoder_parameters(m)
        gm = torch.autograd.grad(l_mm, enc, retain_graph=True)
        gu = torch.autograd.grad(l_u[m], enc, retain_graph=True)
        fm, fu = torch.cat([g.flatten() for g in gm]).double(), torch.cat([g.flatten() for g in gu]).double()
        cos = float(fm @ fu) / float(fm.norm() * fu.norm())
        c = float(method.min_norm_weight(fm, fu)) if cos <= 0 else 0.5
        conflicts += cos <= 0
        for p, a, b in zip(enc, gm, gu):
            new = 2 * (c * a + (1 - c) * b)
            expect[id(p)] = 1.5 * max(1.0, float((a + b).norm() / new.norm())) * new
    method.on_epoch_start(1)
    model.zero_grad()
    out = model(xb)
    method.backward(F.cross_entropy(out.logits, yb), method.extra_loss(xb, out, yb, None))
    for p in params:
        assert torch.allclose(p.grad, expect[id(p)], rtol=1e-4, atol=1e-7)
    enc_ids = {id(p) for m in data.modalities for p in model.encoder_parameters(m)}
    heads = [p for p in params if id(p) not in enc_ids]
    assert heads and all(torch.allclose(p.grad, g) for p, g in zip(params, plain) if id(p) not in enc_ids)
    log = method.epoch_log()
    assert sum(log.values()) == conflicts and set(log) == {f"pareto_conflict.{m}" for m in data.modalities}


def test_a_forced_conflict_takes_the_min_norm_weights() -> None:
    """Losses linear in the encoder weights with opposed gradients: the conflict branch must run, with
    MGDA's weight c on the multimodal gradient and 1 - c on the unimodal one (swapped, this fails)."""
    cfg = tiny_config(**{"balance.method": "mmpareto", "model.name": "sum", "balance.gamma": 1.5})
    method, model, data = tiny_method(cfg, steps_per_epoch=1)
    gen = torch.Generator().manual_seed(3)
    enc = {m: model.encoder_parameters(m) for m in data.modalities}
    a = {id(p): torch.randn(p.shape, generator=gen) for ps in enc.values() for p in ps}
    b = {k: -0.4 * v + 0.2 * torch.randn(v.shape, generator=gen) for k, v in a.items()}  # cos(a, b) < 0
    a_loss = sum((p * a[id(p)]).sum() for ps in enc.values() for p in ps)
    b_loss = sum((p * b[id(p)]).sum() for ps in enc.values() for p in ps)
    method.on_epoch_start(1)
    model.zero_grad()
    method.backward(a_loss, b_loss)
    for m in data.modalities:
        ga = torch.cat([a[id(p)].flatten() for p in enc[m]]).double()
        gb = torch.cat([b[id(p)].flatten() for p in enc[m]]).double()
        assert float(ga @ gb) < 0
        c = float((gb @ gb - ga @ gb) / ((ga - gb) @ (ga - gb)))  # MGDA's weight on the multimodal one
        assert 0.05 < c < 0.95 and abs(c - 0.5) > 0.05
        for p in enc[m]:
            new = 2 * (c * a[id(p)] + (1 - c) * b[id(p)])
            expect = 1.5 * max(1.0, float((a[id(p)] + b[id(p)]).norm() / new.norm())) * new
            assert torch.allclose(p.grad, expect, rtol=1e-4, atol=1e-6)
    assert method.epoch_log() == {f"pareto_conflict.{m}": 1.0 for m in data.modalities}


def test_trains_end_to_end_on_late_fusion_with_three_modalities() -> None:
    cfg = tiny_config(**{"balance.method": "mmpareto", "data.extra_modalities": ["ir"], "train.epochs": 4})
    r = fit(cfg)
    assert r.status == "ok" and r.final["final.test_accuracy"] > 0.2
    assert {"pareto_conflict.eo", "pareto_conflict.sar", "pareto_conflict.ir"} <= set(r.epochs[0])
