"""``reconboost`` (Hua et al., ICML 2024): the stage schedule, a stage's reconciled loss written out, only
the active learner stepping, the rectification on the ensemble, the refusals, a run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, tiny_method

from raybal.balancing import METHODS, MethodContext
from raybal.config import ConfigError
from raybal.training.loop import fit

SUM = {"balance.method": "reconboost", "model.name": "sum"}


def _phases(modalities: tuple[str, ...], epochs: int, **knobs: int) -> list[str]:
    cfg = tiny_config(**SUM, **{f"balance.{k}": v for k, v in knobs.items()})
    method, _, _ = tiny_method(cfg)
    method.ctx = MethodContext(model=method.ctx.model, modalities=modalities, epochs=epochs, steps_per_epoch=4, seed=0)
    return [method.phase(e) for e in range(1, epochs + 1)]


def test_stages_take_the_modalities_in_turn_each_followed_by_a_rectification() -> None:
    assert _phases(("eo", "sar"), 6) == ["eo", "rectify", "sar", "rectify", "eo", "rectify"]
    assert _phases(("a", "b", "c"), 7, stage_epochs=2, rectify_epochs=0) == ["a", "a", "b", "b", "c", "c", "a"]
    assert _phases(("eo", "sar"), 5, stage_epochs=1, rectify_epochs=2) == ["eo", "rectify", "rectify", "sar",
                                                                         "rectify"]


def _step(method, model, data, epoch: int, cfg):  # noqa: ANN001, ANN202
    """One update with the run's optimizer (AdamW with weight decay here: a parameter given a zero gradient
    instead of none would still move)."""
    from raybal.training.loop import _make_optimizer

    model.train()
    method.on_epoch_start(epoch)
    xb, yb = next(iter(data.train.batches(32)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        out = model(xb)  # batch statistics in train mode: the forward the update makes
    opt = _make_optimizer(cfg, model)
    _, loss, total = method.update(opt, xb, yb, torch.autocast("cpu", enabled=False))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    return out, yb, loss, total, moved


@pytest.mark.parametrize("shared", [False, True])
def test_a_stage_steps_only_the_active_learner_on_its_reconciled_loss(shared: bool) -> None:
    cfg = tiny_config(**SUM, **{"model.shared_head": shared, "balance.learner_weight": 4.0,
                                "balance.reconcile_weight": 2.0, "balance.boost_rate": 0.5,
                                "train.optimizer": "adamw", "train.weight_decay": 0.1})
    method, model, data = tiny_method(cfg)
    out, y, loss, total, moved = _step(method, model, data, 3, cfg)  # epoch 3: sar's stage
    assert method.phase(3) == "sar"
    # written out: each sample's CE of sar's logits weighted by w1 - w2 softmax(b * eo's logits)_y, over C
    known = (0.5 * out.modality_logits["eo"]).softmax(1)[torch.arange(len(y)), y]
    ce = F.cross_entropy(out.modality_logits["sar"], y, reduction="none")
    expect = ((4.0 - 2.0 * known) * ce).mean() / data.num_classes
    assert float(total) == pytest.approx(float(expect), rel=1e-5)  # the loss it stepped on
    assert float(loss) == pytest.approx(float(F.cross_entropy(out.logits, y)), rel=1e-5)  # the epoch's task loss
    assert any(n.startswith("encoders.sar.") for n in moved)
    assert not any(n.startswith("encoders.eo.") for n in moved)
    head = {"shared.weight", "shared.bias"} if shared else {"heads.sar.weight", "heads.sar.bias"}
    assert head <= moved and not any(n.startswith("heads.eo.") for n in moved)


def test_a_rectification_steps_every_learner_on_the_ensembles_loss() -> None:
    cfg = tiny_config(**SUM, **{"balance.boost_rate": 0.5})
    method, model, data = tiny_method(cfg)
    out, y, loss, total, moved = _step(method, model, data, 2, cfg)
    assert method.phase(2) == "rectify"
    assert float(total) == pytest.approx(float(F.cross_entropy(0.5 * out.logits, y)), rel=1e-5)
    assert float(loss) == pytest.approx(float(F.cross_entropy(out.logits, y)), rel=1e-5)
    for prefix in ("encoders.eo.", "encoders.sar.", "heads.eo.", "heads.sar."):
        assert any(n.startswith(prefix) for n in moved), prefix


def test_only_rectified_ensembles_are_selected() -> None:
    method, _, _ = tiny_method(tiny_config(**SUM), epochs=5)
    assert [method.selectable(e) for e in range(1, 6)] == [False, True, False, True, True]
    assert METHODS.get("reconboost").obj.acting_epoch(tiny_config(**SUM, **{"train.epochs": 9})) == 4


@pytest.mark.parametrize(("over", "key"), [
    ({}, "model.name"),  # late fusion: its one head mixes the learners
    ({"model.name": "sum", "model.shared_head": True, "model.fusion": "entropy"}, "model.fusion"),
    ({"model.name": "sum", "balance.reconcile_weight": 5.0}, "balance.reconcile_weight"),
])
def test_models_and_knobs_it_cannot_boost_are_refused(over: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        tiny_config(**{"balance.method": "reconboost", **over})
    assert err.value.key == key


def test_a_run_learns_and_logs_the_boosted_modality() -> None:
    r = fit(tiny_config(**SUM, **{"train.epochs": 6}))
    assert r.status == "ok" and r.final["final.test_accuracy"] > 0.5  # chance: 0.1
    train = [e for e in r.epochs if e["split"] == "train"]
    assert [(e["reconboost_boosting.eo"], e["reconboost_boosting.sar"]) for e in train] == [
        (1.0, 0.0), (0.0, 0.0), (0.0, 1.0), (0.0, 0.0), (1.0, 0.0), (0.0, 0.0)]
