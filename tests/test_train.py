"""fit()'s loop: what it records per epoch, and the optimizer it builds."""

from __future__ import annotations

import pytest
import torch

from raybal.config import ConfigError
from raybal.training.loop import _make_optimizer, build_for, fit
from tests.conftest import tiny_config

TARGETED = {"train__epochs": 3, "balance__method": "mu_target", "balance__target": {"eo": 0.6, "sar": 0.4}}


def _rows(res, split: str) -> list[tuple]:
    return [(r["epoch"], r["loss"], r["accuracy"]) for r in res.epochs if r["split"] == split]


def test_test_every_records_test_rows_where_asked_and_changes_nothing_else() -> None:
    runs = {n: fit(tiny_config(**TARGETED, train__test_every=n)) for n in (1, 0, 2)}
    assert [e for e, *_ in _rows(runs[1], "test")] == [1, 2, 3]
    assert _rows(runs[0], "test") == []
    assert [e for e, *_ in _rows(runs[2], "test")] == [2, 3]  # every 2nd epoch, and always the last
    assert _rows(runs[2], "test") == [r for r in _rows(runs[1], "test") if r[0] in (2, 3)]
    # Training and selection never read the test split: the same weights, records and final measures.
    for n in (0, 2):
        for split in ("train", "val"):
            assert _rows(runs[n], split) == _rows(runs[1], split)
        assert runs[n].utilization == runs[1].utilization
        assert runs[n].final == runs[1].final


def test_test_every_below_zero_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="train.test_every"):
        tiny_config(train__test_every=-1)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_the_foreach_optimizer_updates_bit_for_bit_as_the_per_tensor_one(optimizer: str) -> None:
    from raybal.data import load_data

    cfg = tiny_config(train__optimizer=optimizer)
    data = load_data(cfg.data)
    torch.manual_seed(0)
    a = build_for(cfg, data)
    b = build_for(cfg, data)
    b.load_state_dict(a.state_dict())
    opt_a = _make_optimizer(cfg, a)
    assert opt_a.defaults["foreach"] is True
    kind = type(opt_a)
    extra = {"momentum": 0.9} if optimizer == "sgd" else {}
    opt_b = kind(b.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, foreach=False, **extra)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        for p, q in zip(a.parameters(), b.parameters()):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        opt_a.step()
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_the_selected_epochs_final_rows_merge_into_its_per_epoch_rows() -> None:
    """utilization.parquet keeps one row per (epoch, split, modality): the final measures join the selected
    epoch's row, and what the final row leaves empty (a method's per-epoch log) is kept."""
    from raybal.results.schema import with_final

    per_epoch = [{"epoch": e, "split": "val", "modality": m, "mu": 0.5, "learning_speed": 0.42, "final": False}
                 for e in (1, 2) for m in ("eo", "sar")]
    final = [{"epoch": 2, "split": s, "modality": m, "mu": 0.5, "learning_speed": None, "cond_util": 0.3,
              "final": True} for s in ("val", "test") for m in ("eo", "sar")]
    rows = with_final(per_epoch, final)
    assert len(rows) == 6 and len({(r["epoch"], r["split"], r["modality"]) for r in rows}) == 6
    selected = [r for r in rows if r["epoch"] == 2 and r["split"] == "val"]
    assert all(r["final"] and r["cond_util"] == 0.3 and r["learning_speed"] == 0.42 for r in selected)
    assert [r["final"] for r in rows if r["epoch"] == 1] == [False, False]

