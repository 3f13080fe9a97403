"""The GPU path: no host read of a device value inside the training step or any method's hook.

A read (``float(t)``, ``t.item()``, ``if t:``, ``t.cpu()``, ``t.tolist()``) waits for every queued
kernel on a GPU. The guard below records every such call made from raybal's own code; an epoch
of steps (``raybal.training.steps.train_epoch``) must make none, for every method, except the reads
listed in ALLOWED with their reason. On this CPU-only machine the guard is the check; the
benchmark measures the speed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

import raybal
from raybal.balancing import METHODS, MethodContext
from raybal.data import load_data
from raybal.measure.utilization import measure
from raybal.training.loop import build_for
from raybal.training.steps import EpochStats, NonFiniteLossError, check_finite, train_epoch

READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
PKG = str(Path(raybal.__file__).parent)

# (file, function) -> why the read is there
ALLOWED = {
    ("greedy.py", "choose"): "Wu et al. decide before each step which modality to re-balance (one read of M values)",
    ("modality_dropout.py", "prepare_batch"): "the drop masks are drawn on the host (a CPU tensor, not the device)",
}


@contextmanager
def host_reads() -> Iterator[list[tuple[str, str, int, str]]]:
    """Record (file, function, line, method) of each tensor read called from raybal's code."""
    sites: list[tuple[str, str, int, str]] = []
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name: str, orig):  # noqa: ANN001, ANN202
        def read(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            f = sys._getframe(1)
            if f.f_code.co_filename.startswith(PKG):
                sites.append((Path(f.f_code.co_filename).name, f.f_code.co_name, f.f_lineno, name))
            return orig(self, *a, **k)
        return read

    try:
        for name, orig in saved.items():
            setattr(torch.Tensor, name, wrap(name, orig))
        yield sites
    finally:
        for name, orig in saved.items():
            setattr(torch.Tensor, name, orig)


def test_the_guard_sees_a_read() -> None:
    with host_reads() as sites:
        EpochStats(torch.device("cpu")).nonfinite.__bool__()  # from this file: not raybal's, not counted
        stats = EpochStats(torch.device("cpu"))
        check_finite(stats.nonfinite, 1)  # raybal's one read per epoch
    assert [(f, fn) for f, fn, _, _ in sites] == [("steps.py", "check_finite")]


METHOD_CASES = {
    "vanilla": {},
    "mu_target_adaptive": {"balance.method": "mu_target", "balance.target": {"eo": 0.6, "sar": 0.4}},
    "mu_target_warmup": {"balance.method": "mu_target", "balance.target": {"eo": 0.6, "sar": 0.4},
                         "balance.weight": "warmup"},
    "ogm_ge": {"balance.method": "ogm_ge", "balance.start_epoch": 1},
    "ogm": {"balance.method": "ogm_ge", "balance.start_epoch": 1, "balance.ge": False},
    "greedy_guided": {"balance.method": "greedy_guided", "model.name": "mmtm", "balance.start_epoch": 1},
    "modality_dropout": {"balance.method": "modality_dropout"},
    "pmr": {"balance.method": "pmr", "balance.scaling": "continuous"},
    "mmpareto": {"balance.method": "mmpareto", "model.name": "sum"},
    "agm": {"balance.method": "agm"},
    "inforeg": {"balance.method": "inforeg"},
    "mla": {"balance.method": "mla", "model.name": "sum", "model.shared_head": True, "model.fusion": "entropy"},
    "gblending": {"balance.method": "gblending"},
    "reconboost": {"balance.method": "reconboost", "model.name": "sum"},
    "dgl": {"balance.method": "dgl"},
    "dgl_mmtm": {"balance.method": "dgl", "model.name": "mmtm"},
}


@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_an_epoch_of_steps_reads_nothing_from_the_device(case: str) -> None:
    cfg = tiny_config(**METHOD_CASES[case])
    data = load_data(cfg.data)
    model = build_for(cfg, data)
    cls = METHODS.get(cfg.balance.method).obj
    holdout = None
    if cls.holdout_fraction(cfg.balance.params):  # as the loop: the held-out slice out of training
        data, holdout = data.hold_out(cls.holdout_fraction(cfg.balance.params), 0)
    steps = len(data.train) // cfg.train.batch_size
    method = cls(cfg.balance.params, MethodContext(
        model=model, modalities=data.modalities, epochs=2, steps_per_epoch=steps, seed=0, holdout=holdout))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = list(data.train.batches(cfg.train.batch_size, drop_last=True))
    for epoch in (1, 2):
        method.on_epoch_start(epoch)
        if method.training_pass:  # the per-epoch data pass (PMR's prototypes) is not a step
            model.eval()
            method.on_training_data(model, iter(batches))
        model.train()
        with host_reads() as sites:
            stats = train_epoch(model, method, opt, batches, nullcontext(), device=torch.device("cpu"),
                                num_classes=data.num_classes, task=data.task)
        method.on_epoch_end(epoch)
        log = method.epoch_log()  # the epoch's reads happen here, after the steps
        bad = [s for s in sites if (s[0], s[1]) not in ALLOWED]
        assert not bad, f"{case}: host reads inside the steps: {sorted(set(bad))}"
        allowed = [s for s in sites if (s[0], s[1]) in ALLOWED]
        assert len(allowed) <= steps, allowed[:5]  # at most one per step, never per parameter or modality
    assert stats.n_seen == steps * cfg.train.batch_size
    assert all(v == v for v in log.values())


def test_a_non_finite_loss_stops_the_run_at_the_end_of_its_epoch() -> None:
    stats = EpochStats(torch.device("cpu"))
    logits = torch.zeros(4, 3)

    class Out:
        pass

    out = Out()
    out.logits = logits
    y = torch.zeros(4, dtype=torch.long)
    stats.add(out, y, torch.tensor(1.0), torch.tensor(1.0), 3, "classification")
    check_finite(stats.nonfinite, 3)
    stats.add(out, y, torch.tensor(float("nan")), torch.tensor(float("nan")), 3, "classification")
    with pytest.raises(NonFiniteLossError, match="1 step.* of epoch 3"):
        check_finite(stats.nonfinite, 3)


def test_measure_reads_the_device_once_whatever_the_number_of_batches() -> None:
    cfg = tiny_config()
    data = load_data(cfg.data)
    model = build_for(cfg, data)
    counts = []
    for bs in (128, 16):  # 1 vs 8 batches of the val split
        with host_reads() as sites:
            measure(model, data.val, num_classes=data.num_classes, task=data.task, n_repeats=2, batch_size=bs)
        counts.append(len([s for s in sites if s[0] == "utilization.py"]))
    assert counts[0] == counts[1] and counts[0] <= 4, counts


def test_fit_reuses_the_selected_epochs_validation_mu(monkeypatch) -> None:
    import raybal.training.loop as train_mod
    from raybal.training.loop import fit

    calls = []
    real = train_mod.measure

    def counting(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls.append(k.get("seed"))
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "measure", counting)
    cfg = tiny_config(**{"train.epochs": 3})
    res = fit(cfg)
    assert len(calls) == 2 * 3 + 1, calls  # val + test per epoch, then the final test MU only
    best = res.final["final.best_epoch"]
    row = [u for u in res.utilization if u["epoch"] == best and u["split"] == "val"]
    assert len(row) == 2 and all(r["final"] for r in row)  # one row per modality: the selected epoch's, final
    assert all(abs(res.final[f"final.val_mu.{r['modality']}"] - r["mu"]) < 1e-12 for r in row)


@pytest.mark.slow  # compiling the model takes ~30 s on 2 cores: make test-all
def test_compiled_training_gives_the_eager_answer(tmp_path) -> None:
    from torch._dynamo.utils import counters

    from raybal.training import checkpoint
    from raybal.training.loop import fit

    states = {}
    for comp in (False, True):
        counters.clear()
        cfg = tiny_config(**{"train.epochs": 1, "train.compile": comp, "data.n_train": 96})
        fit(cfg, checkpoint_dir=tmp_path / str(comp))
        assert (counters["stats"]["unique_graphs"] > 0) == comp  # it did compile, and only when asked
        states[comp] = checkpoint.load_last(tmp_path / str(comp) / checkpoint.LAST, cfg)["model"]
    worst = max(float((states[True][k].double() - states[False][k].double()).abs().max())
                for k in states[False] if states[False][k].is_floating_point())
    assert worst < 1e-4, worst
    assert cfg.digest() == tiny_config(**{"train.epochs": 1, "data.n_train": 96}).digest()  # a resource knob
