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
from raybal.data.base import Split
from raybal.measure.utilization import MUResult
from raybal.training.loop import build_for


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
    ref = {"eo": cls.coefficient(0.5, score["eo"] / score["sar"]),
           "sar": cls.coefficient(0.5, score["sar"] / score["eo"])}
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


# ---------------------------------------------------------------------------------------------
# Differential tests: each measure re-derived here from its paper's equation with plain loops,
# sharing no helper with the package, on the same model, batch and gradients (tolerance 1e-6).


def _ce(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy, one sample at a time."""
    total = 0.0
    for i in range(len(y)):
        row = [float(v) for v in logits[i]]
        mx = max(row)
        total += -(row[int(y[i])] - mx - math.log(sum(math.exp(v - mx) for v in row)))
    return total / len(y)


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return sum(int(int(logits[i].argmax()) == int(y[i])) for i in range(len(y))) / len(y)


def _train_briefly(model, data, epochs: int = 3) -> None:  # noqa: ANN001
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for xb, yb in data.train.batches(32):
            opt.zero_grad()
            F.cross_entropy(model(xb).logits, yb).backward()
            opt.step()


def _manual_mmtm(model, x, flow_off=None, capture=None):  # noqa: ANN001, ANN202
    """MMTM forward written out (Joze 2020; Wu 2022 reference `turnoff_cross_modal_flow`): at every unit
    the gate of modality m is 2 sigmoid(W_m relu(W_s [s_1; ...; s_M])) where s_k is k's pooled vector, or,
    with the flow off, k's training mean for every k != m. Returns each branch head's logits."""
    mods = model.modalities
    h = {m: model.encoders[m].run(x[m], 0, model.fuse_after[0]) for m in mods}
    bounds = list(model.fuse_after) + [len(model.encoders[mods[0]].stages)]
    for u, (unit, start, stop) in enumerate(zip(model.mmtm, bounds[:-1], bounds[1:])):
        pooled = {m: h[m].mean(dim=(2, 3)) for m in mods}
        if capture is not None:
            capture.append(pooled)
        new = {}
        for m in mods:
            parts = []
            for k in mods:
                if flow_off is None or k == m:
                    parts.append(pooled[k])
                else:
                    parts.append(flow_off[u][k].expand_as(pooled[k]))
            z = torch.relu(unit.squeeze(torch.cat(parts, dim=1)))
            gate = 2.0 * torch.sigmoid(unit.excite[m](z))
            new[m] = h[m] * gate[:, :, None, None]
        h = {m: model.encoders[m].run(new[m], start, stop) for m in mods}
    return {m: model.heads[m](h[m].mean(dim=(2, 3))) for m in mods}


def test_wu_conditional_utilization_matches_the_reference_definition() -> None:
    from raybal.measure.utilization import conditional_utilization, squeeze_means

    _, model, data = _setup(**{"balance.method": "greedy_guided", "model.name": "mmtm", "model.fuse_after": [1, 2]})
    _train_briefly(model, data)  # heads beat chance and the cross-modal flow matters
    model.eval()
    with torch.no_grad():
        # training-set mean of every pooled vector, one sample at a time
        n, sums = 0, None
        for xb, _ in data.train.batches(64):
            cap: list = []
            _manual_mmtm(model, xb, capture=cap)
            for i in range(len(next(iter(xb.values())))):
                vec = [{m: c[m][i].double() for m in c} for c in cap]
                sums = vec if sums is None else [{m: a[m] + b[m] for m in a} for a, b in zip(sums, vec)]
                n += 1
        means = [{m: (v / n).float() for m, v in unit.items()} for unit in sums]
        x, y = data.val.x, data.val.y
        on, off = _manual_mmtm(model, x), _manual_mmtm(model, x, flow_off=means)
    ref = {m: (_accuracy(on[m], y) - _accuracy(off[m], y)) / _accuracy(on[m], y) for m in model.modalities}
    pkg_means = squeeze_means(model, data.train)
    for unit_ref, unit_pkg in zip(means, pkg_means):
        for m in unit_ref:
            assert torch.allclose(unit_ref[m], unit_pkg[m], atol=1e-6)
    got = conditional_utilization(model, data.val, pkg_means, num_classes=data.num_classes, task=data.task)
    assert any(abs(v) > 0.01 for v in ref.values())  # the flow matters in this model: a real check
    for m in model.modalities:
        assert abs(got[m] - ref[m]) < 1e-6, (m, got[m], ref[m])


def test_wu_conditional_utilization_is_missing_for_late_fusion() -> None:
    from raybal.measure.utilization import conditional_utilization

    _, model, data = _setup(**{"balance.method": "vanilla"})
    got = conditional_utilization(model, data.val, [], num_classes=data.num_classes, task=data.task)
    assert got == {"eo": None, "sar": None}


def test_permutation_mu_matches_singh_eq_1_2() -> None:
    from raybal.measure.utilization import measure

    _, model, data = _setup(**{"balance.method": "vanilla"})
    _train_briefly(model, data)
    model.double().eval()  # float64 throughout, so 1e-6 compares the definitions, not rounding
    val = Split({k: v.double() for k, v in data.val.x.items()}, data.val.y)  # a copy: data is cached
    x, y = val.x, val.y
    n, repeats, seed = len(y), 2, 5
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        base = _ce(model(x).logits, y)
        shuffled = {}
        for m in model.modalities:  # shuffle the *inputs* (the package shuffles encoder features)
            losses = []
            for _ in range(repeats):
                perm = torch.randperm(n, generator=g)
                xs = {k: (v[perm] if k == m else v) for k, v in x.items()}
                losses.append(_ce(model(xs).logits, y))
            shuffled[m] = sum(losses) / repeats
    raw = {m: max(shuffled[m] - base, 0.0) for m in shuffled}
    ref = {m: raw[m] / sum(raw.values()) for m in raw}
    got = measure(model, val, num_classes=data.num_classes, task=data.task, n_repeats=repeats, seed=seed,
                  batch_size=n)
    assert abs(got.loss - base) < 1e-6
    assert min(raw.values()) > 1e-3  # both modalities matter: the shares are a real check
    for m in ref:
        assert abs(got.raw[m] - raw[m]) < 1e-6
        assert abs(got.shares[m] - ref[m]) < 1e-6


def test_conditional_learning_speed_matches_wu_eq_4_5() -> None:
    m, model, data = _setup(**{"balance.method": "greedy_guided", "model.name": "mmtm", "model.fuse_after": [2]})
    m.on_epoch_start(1)
    model.train()
    tracked = {k: (0.0, 0.0) for k in model.modalities}
    for step, (xb, yb) in enumerate(data.train.batches(32)):
        if step == 3:
            break
        model.zero_grad()
        out = model(xb)
        m.task_loss(out, yb).backward()
        m.after_backward(out, yb)
        named = dict(model.named_parameters())
        for k in model.modalities:
            # bypass: k's own gate (excite[k]) + the shared squeeze; main: k's encoder and head
            byp = [p for name, p in named.items() if name.startswith("mmtm.") and
                   (f".excite.{k}." in name or ".squeeze." in name)]
            main = [p for name, p in named.items() if name.startswith((f"encoders.{k}.", f"heads.{k}."))]
            speeds = []
            for group in (byp, main):
                g2 = sum(float(v) ** 2 for p in group for v in p.grad.flatten())
                w2 = sum(float(v) ** 2 for p in group for v in p.detach().flatten())
                speeds.append(g2 / w2)
            tracked[k] = (tracked[k][0] + speeds[0], tracked[k][1] + speeds[1])
    ref = {k: math.log10(b / s) for k, (b, s) in tracked.items()}
    got = m.tracker.speeds()
    for k in ref:
        assert abs(got[k] - ref[k]) < 1e-6 * max(1.0, abs(ref[k])), (k, got[k], ref[k])


def test_mu_target_batch_estimate_matches_singh_2024_eq_3() -> None:
    m, model, data = _setup(**{"balance.method": "mu_target", "model.name": "mmtm", "model.fuse_after": [2],
                               "balance.target": {"eo": 0.7, "sar": 0.3}})
    _train_briefly(model, data)
    model.double()  # float64 throughout, so 1e-6 compares the definitions, not rounding
    xb, yb = next(data.train.batches(32))
    xb = {k: v.double() for k, v in xb.items()}
    gen = torch.Generator()
    gen.set_state(m.gen.get_state())
    perm = torch.randperm(len(yb), generator=gen)
    model.train()
    moms = {mod: mod.momentum for mod in model.modules() if isinstance(getattr(mod, "momentum", None), float)}
    for mod in moms:
        mod.momentum = 0.0  # the reference passes must not move running statistics either
    with torch.no_grad():
        base = _ce(model(xb).logits, yb)
        gaps = []
        for k in model.modalities:  # shuffle the *inputs* of modality k across the batch
            xs = {j: (v[perm] if j == k else v) for j, v in xb.items()}
            gaps.append(_ce(model(xs).logits, yb) - base)
    d = [max(gp, 0.0) for gp in gaps]
    ref = [v / sum(d) for v in d]
    out = model(xb)
    loss = F.cross_entropy(out.logits, yb)
    d_pkg, u_pkg = m.batch_utilization(out, yb, loss, xb)
    for mod, mom in moms.items():
        mod.momentum = mom
    assert min(d) > 1e-3  # both gaps positive: u is a real check
    for i in range(len(ref)):
        assert abs(float(d_pkg[i].detach()) - d[i]) < 1e-6
        assert abs(float(u_pkg[i].detach()) - ref[i]) < 1e-6
