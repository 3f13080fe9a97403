"""``modality_dropout`` (ModDrop, Neverova et al. 2016): its defining behaviour, and a run end to end."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from raybal.balancing import METHODS, MethodContext
from raybal.config import ConfigError
from raybal.training.loop import fit


def _method(p: float, world: int = 1, rank: int = 0, exclude: tuple[str, ...] = ()):  # noqa: ANN202
    entry = METHODS.get("modality_dropout")
    ctx = MethodContext(model=None, modalities=("eo", "sar", "ir"), epochs=1, steps_per_epoch=1, seed=3,
                        world_size=world, rank=rank)
    return entry.obj(entry.params(p=p, exclude=exclude), ctx)


def _batch(n: int) -> dict[str, torch.Tensor]:
    return {"eo": torch.rand(n, 3, 4, 4) + 0.5, "sar": torch.rand(n, 1, 4, 4) + 0.5, "ir": torch.rand(n, 5) + 0.5}


def test_p1_drops_exactly_one_modality_per_sample_and_p0_none() -> None:
    x, y = _batch(64), torch.zeros(64, dtype=torch.long)
    out = _method(1.0).prepare_batch(x, y)
    zeroed = torch.stack([(out[m].flatten(1) == 0).all(1) for m in x], 1)
    assert (zeroed.sum(1) == 1).all()  # one modality per sample, zeros; the others untouched
    for m in x:
        assert torch.equal(out[m][~zeroed[:, list(x).index(m)]], x[m][~zeroed[:, list(x).index(m)]])
    assert zeroed.float().mean(0).min() > 0.15  # each modality is drawn (uniformly: ~1/3 each)
    same = _method(0.0).prepare_batch(x, y)
    assert all(torch.equal(same[m], x[m]) for m in x)


def test_excluded_modality_is_never_dropped_and_rate_follows_p() -> None:
    m = _method(0.5, exclude=("eo",))
    x, y = _batch(4000), torch.zeros(4000, dtype=torch.long)
    out = m.prepare_batch(x, y)
    assert torch.equal(out["eo"], x["eo"])
    assert abs(m.epoch_log()["dropped_fraction"] - 0.5) < 0.03


def test_the_drawn_samples_do_not_depend_on_the_worker_count() -> None:
    whole = _method(0.6).masks(8)
    halves = [_method(0.6, world=2, rank=r).masks(4) for r in (0, 1)]
    for m in whole:
        assert torch.equal(whole[m], torch.cat([h[m] for h in halves]))


def test_bad_exclude_is_refused() -> None:
    with pytest.raises(ConfigError, match="balance.exclude\\[0\\]: unknown modality 'lidar'"):
        tiny_config(**{"balance.method": "modality_dropout", "balance.exclude": ["lidar"]})
    with pytest.raises(ConfigError, match="balance.exclude: leaves no modality"):
        tiny_config(**{"balance.method": "modality_dropout", "balance.exclude": ["eo", "sar"]})


def test_trains_end_to_end_and_logs_its_rate() -> None:
    r = fit(tiny_config(**{"balance.method": "modality_dropout", "balance.p": 0.4, "train.epochs": 4}))
    train_rows = [e for e in r.epochs if e["split"] == "train"]
    assert len(train_rows) == 4 and all(0.3 < e["dropped_fraction"] < 0.5 for e in train_rows)
    assert r.final["final.test_accuracy"] > 0.25  # learns (chance is 0.1 on 10 classes)
