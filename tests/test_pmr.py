"""``pmr`` (Fan et al. 2023): prototypes, the lagging modality's prototypical loss, checks, a run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from raybal.balancing import METHODS, MethodContext
from raybal.config import ConfigError
from raybal.models.base import ModelOutput
from raybal.training.loop import fit


class _Feat(torch.nn.Module):
    """A 'model' whose pooled features are its inputs (so prototypes are class means of the inputs)."""

    def __init__(self, ncls: int = 3) -> None:
        super().__init__()
        self.ncls = ncls
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):  # noqa: ANN001, ANN201
        n = next(iter(x.values())).shape[0]
        return ModelOutput(torch.zeros(n, self.ncls), {m: t for m, t in x.items()})


def _pmr(steps: int = 1, **kw):  # noqa: ANN202, ANN003
    entry = METHODS.get("pmr")
    ctx = MethodContext(model=_Feat(), modalities=("eo", "sar"), epochs=4, steps_per_epoch=steps, seed=0)
    return entry.obj(entry.params(**kw), ctx)


def test_prototypes_are_class_means_blended_by_momentum() -> None:
    x = {"eo": torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]]), "sar": torch.tensor([[1.0], [3.0], [5.0]])}
    y = torch.tensor([0, 0, 1])  # class 2 absent
    m = _pmr(proto_fraction=1.0, momentum=0.25)
    m.on_training_data(m.ctx.model, iter([(x, y)]))
    assert torch.allclose(m.prototypes["eo"][:2], torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
    assert torch.allclose(m.prototypes["sar"][:2, 0], torch.tensor([2.0, 5.0]))
    assert torch.allclose(m.prototypes["sar"][2], torch.tensor([3.5]))  # never seen: the mean of the seen ones
    x2 = {"eo": torch.tensor([[4.0, 0.0]]), "sar": torch.tensor([[9.0]])}
    m.on_training_data(m.ctx.model, iter([(x2, torch.tensor([0]))]))
    assert torch.allclose(m.prototypes["eo"][0], torch.tensor([0.75 * 4.0 + 0.25 * 1.0, 0.0]))
    assert torch.allclose(m.prototypes["eo"][1], torch.tensor([0.0, 4.0]))  # absent now: kept
    # only the first proto_fraction of the epoch's batches are read
    m2 = _pmr(steps=10, proto_fraction=0.2)
    seen = []
    m2.on_training_data(m2.ctx.model, ((seen.append(i) or (x, y)) for i in range(10)))
    assert seen == [0, 1]


def test_prototypes_are_class_means_when_counts_are_means_over_ranks() -> None:
    """Data-parallel: counts and sums arrive as means over the ranks (all_reduce), so a class one rank saw
    once counts 0.5. The prototype is still that sample's feature, not half of it."""
    entry = METHODS.get("pmr")
    other = {"eo": torch.tensor([[0.0, 6.0]]), "sar": torch.tensor([[7.0]])}  # rank 1 saw one sample, class 1
    mine = {"eo": torch.tensor([[2.0, 0.0]]), "sar": torch.tensor([[3.0]])}  # this rank saw one, class 0
    theirs: list[torch.Tensor] = []
    ctx1 = MethodContext(model=_Feat(), modalities=("eo", "sar"), epochs=1, steps_per_epoch=1, seed=0)
    rank1 = entry.obj(entry.params(proto_fraction=1.0), ctx1)
    rank1.ctx = MethodContext(model=_Feat(), modalities=("eo", "sar"), epochs=1, steps_per_epoch=1, seed=0,
                              world_size=2, all_reduce=lambda v: theirs.append(v) or v, rank=1)
    rank1.on_training_data(rank1.ctx.model, iter([(other, torch.tensor([1]))]))
    ctx0 = MethodContext(model=_Feat(), modalities=("eo", "sar"), epochs=1, steps_per_epoch=1, seed=0,
                         world_size=2, all_reduce=lambda v: (v + theirs[0]) / 2, rank=0)
    m = entry.obj(entry.params(proto_fraction=1.0), ctx0)
    m.on_training_data(m.ctx.model, iter([(mine, torch.tensor([0]))]))
    assert torch.allclose(m.prototypes["eo"][:2], torch.tensor([[2.0, 0.0], [0.0, 6.0]]))
    assert torch.allclose(m.prototypes["sar"][:2, 0], torch.tensor([3.0, 7.0]))


def test_the_lagging_modality_gets_the_prototypical_loss() -> None:
    assert torch.equal(_pmr(alpha=0.7).coefficient_vector(torch.tensor([5.0, 2.0])), torch.tensor([0.0, 0.7]))
    cont = _pmr(alpha=0.5, scaling="continuous").coefficient_vector(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    assert torch.allclose(cont, torch.tensor([0.0, 0.25, 0.5], dtype=torch.float64))  # alpha * clip(best/s - 1)
    m = _pmr(alpha=1.0)
    m.on_epoch_start(1)
    m.prototypes = {"eo": torch.tensor([[0.0, 0.0], [3.0, 0.0]]), "sar": torch.tensor([[0.0], [0.1]])}
    y = torch.tensor([0, 1, 0, 1])
    z_eo = torch.tensor([[0.1, 0.0], [2.9, 0.0], [0.2, 0.0], [3.1, 0.0]], requires_grad=True)  # near its prototypes
    z_sar = torch.tensor([[0.06], [0.04], [0.05], [0.05]], requires_grad=True)  # ambiguous: lagging
    out = ModelOutput(torch.zeros(4, 2), {"eo": z_eo, "sar": z_sar})
    loss = m.extra_loss({}, out, y, torch.tensor(0.0))
    expect = F.cross_entropy(-torch.cdist(z_sar, m.prototypes["sar"]), y)
    assert torch.allclose(loss, expect)
    loss.backward()
    assert z_eo.grad.abs().sum() == 0 and z_sar.grad.abs().sum() > 0  # only the lagging features are pulled
    assert m.epoch_log() == {"pmr_coef.eo": 0.0, "pmr_coef.sar": 1.0}
    late = _pmr(start_epoch=2)
    late.on_epoch_start(1)
    late.prototypes = m.prototypes
    assert late.extra_loss({}, out, y, torch.tensor(0.0)) is None


def test_pmr_needs_pooled_features_and_a_valid_window() -> None:
    with pytest.raises(ConfigError, match="model.name: balance.method 'pmr' needs one pooled feature vector"):
        tiny_config(**{"balance.method": "pmr", "model.name": "mmtm"})
    with pytest.raises(ConfigError, match="balance.end_epoch: must be >= start_epoch"):
        tiny_config(**{"balance.method": "pmr", "balance.start_epoch": 3, "balance.end_epoch": 2})


def test_prototypes_survive_a_checkpoint() -> None:
    m = _pmr()
    m.prototypes = {"eo": torch.rand(3, 2), "sar": torch.rand(3, 1)}
    m2 = _pmr()
    m2.load_state_dict(m.state_dict())
    assert all(torch.equal(m.prototypes[k], m2.prototypes[k]) for k in ("eo", "sar"))


def test_trains_end_to_end_and_logs_its_coefficients() -> None:
    cfg = tiny_config(**{"balance.method": "pmr", "train.epochs": 3, "balance.proto_fraction": 0.5})
    r = fit(cfg)
    logs = [e for e in r.epochs if e["split"] == "train"]
    assert len(logs) == 3 and all("pmr_coef.eo" in e for e in logs)
    assert any(e["pmr_coef.eo"] + e["pmr_coef.sar"] > 0 for e in logs)  # some modality lagged somewhere
    assert r.status == "ok" and r.final["final.test_accuracy"] > 0.2
