"""The data pipeline (issue 14, in part): normalisation stored with the checkpoint, augmentation that
keeps modalities and masks aligned, lazy splits that read exactly their shard and name a bad file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config

from raybal.data import DataError, LazySplit, load_data
from raybal.data.pipeline import AugmentParams, Pipe, augment_sample, sample_generator, shard_order


class Counting:
    """A sample source that records what it read (index -> value i everywhere)."""

    def __init__(self, n: int, bad: int | None = None) -> None:
        self.n, self.bad = n, bad
        self.reads: list[int] = []

    def __len__(self) -> int:
        return self.n

    def read(self, i: int):  # noqa: ANN201
        if i == self.bad:
            raise OSError("truncated")
        self.reads.append(i)
        return {"a": np.full((1, 4, 4), i, np.float32), "b": np.full((2,), i, np.float32)}, i % 3

    def describe(self, i: int) -> str:
        return f"/data/chip_{i}.tif"


def test_a_lazy_split_reads_exactly_this_ranks_shard() -> None:
    src = Counting(40)
    split = LazySplit(src)
    g = torch.Generator().manual_seed(3)
    order = shard_order(40, shuffle=True, generator=g, rank=1, world=2, global_batch=8)
    got = torch.cat([xb["b"][:, 0] for xb, _ in split.batches(4, order=order, drop_last=True)]).long()
    assert got.tolist() == order.tolist() and sorted(src.reads) == sorted(order.tolist())
    other = shard_order(40, shuffle=True, generator=torch.Generator().manual_seed(3), rank=0, world=2, global_batch=8)
    assert not set(order.tolist()) & set(other.tolist()) and len(set(order.tolist()) | set(other.tolist())) == 40


@pytest.mark.parametrize("workers", [0, 1])
def test_a_file_failing_mid_epoch_is_named(workers: int) -> None:
    split = LazySplit(Counting(12, bad=7), pipe=Pipe(num_workers=workers))
    with pytest.raises(DataError, match=r"/data/chip_7.tif: OSError: truncated"):
        for _ in split.batches(4):
            pass


def test_augmentation_moves_every_modality_and_the_mask_alike() -> None:
    img = torch.arange(16.0).view(1, 4, 4)
    x = {"eo": img.repeat(3, 1, 1), "sar": img.clone()}
    y = img[0].long()
    p = AugmentParams(flip=True, rot90=True, crop=1)
    for i in range(20):
        ax, ay = augment_sample(x, y, p, sample_generator(0, 1, i))
        assert torch.equal(ax["eo"][0], ax["sar"][0]) and torch.equal(ax["sar"][0].long(), ay)
    again = augment_sample(x, y, p, sample_generator(0, 1, 5))[1]
    assert torch.equal(again, augment_sample(x, y, p, sample_generator(0, 1, 5))[1])  # per (seed, epoch, sample)


def test_noise_augmentation_adds_gaussian_noise_of_a_drawn_variance_to_the_named_modality() -> None:
    from raybal.config import FrozenMap

    x = {"eo": torch.zeros(3, 32, 32), "sar": torch.zeros(1, 32, 32)}
    y = torch.tensor(0)
    p = AugmentParams(noise=FrozenMap({"eo": 0.12}))
    assert p.enabled and not AugmentParams(noise=FrozenMap({"eo": 0.0})).enabled
    variances = []
    for i in range(200):
        ax, _ = augment_sample(x, y, p, sample_generator(0, 1, i))
        assert torch.equal(ax["sar"], x["sar"])  # only the named modality
        variances.append(float(ax["eo"].var()))
    # variance drawn uniformly in [0, 0.12] per sample: mean 0.06, none above the top (3,072 pixels each)
    assert 0.05 < sum(variances) / len(variances) < 0.07 and max(variances) < 0.12 * 1.1 and min(variances) < 0.01
    again = augment_sample(x, y, p, sample_generator(0, 1, 7))[0]["eo"]
    assert torch.equal(again, augment_sample(x, y, p, sample_generator(0, 1, 7))[0]["eo"])


def test_corruption_augmentation_applies_each_corruption_with_its_probability() -> None:
    from raybal.config import FrozenMap
    from raybal.noise.registration import SHIFT

    x = {"eo": torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)), "sar": torch.rand(1, 32, 32)}
    y = torch.tensor(0)
    p = AugmentParams(corruptions=FrozenMap({"eo": FrozenMap({"misregistration": 0.3})}))
    assert p.enabled and not AugmentParams(corruptions=FrozenMap({"eo": FrozenMap({"clouds": 0.0})})).enabled
    hit = 0
    for i in range(300):
        ax, _ = augment_sample(x, y, p, sample_generator(0, 1, i))
        assert torch.equal(ax["sar"], x["sar"])  # only the named modality
        if not torch.equal(ax["eo"], x["eo"]):
            hit += 1
            # a shift by one of the severities' k, in one of 8 directions: content moved, never altered
            assert any(torch.equal(ax["eo"][:, k:, k:], x["eo"][:, :-k, :-k]) or
                       torch.equal(ax["eo"][:, :-k, :-k], x["eo"][:, k:, k:]) or
                       torch.equal(ax["eo"][:, :, k:], x["eo"][:, :, :-k]) or
                       torch.equal(ax["eo"][:, :, :-k], x["eo"][:, :, k:]) or
                       torch.equal(ax["eo"][:, k:], x["eo"][:, :-k]) or torch.equal(ax["eo"][:, :-k], x["eo"][:, k:])
                       or torch.equal(ax["eo"][:, k:, :-k], x["eo"][:, :-k, k:])
                       or torch.equal(ax["eo"][:, :-k, k:], x["eo"][:, k:, :-k]) for k in SHIFT.values())
    assert 60 <= hit <= 120  # p = 0.3 of 300: 90, binomial sd 8
    again = augment_sample(x, y, p, sample_generator(0, 1, 11))[0]["eo"]
    assert torch.equal(again, augment_sample(x, y, p, sample_generator(0, 1, 11))[0]["eo"])


def test_normalisation_is_measured_on_train_and_travels_with_the_checkpoint(tmp_path) -> None:  # noqa: ANN001
    from raybal.cli import main

    cfg = tiny_config(**{"data.normalize": True, "train.epochs": 1, "robustness.modalities": ["eo"],
                         "robustness.corruptions": ["gaussian"], "robustness.splits": ["test"]})
    data = load_data(cfg.data)
    xb = torch.cat([b[0]["eo"] for b in data.train.batches(64)])
    assert xb.mean(dim=(0, 2, 3)).abs().max() < 1e-4 and (xb.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-2
    run = tmp_path / "run.toml"
    run.write_text("[data]\nn_train = 256\nn_val = 128\nn_test = 128\nimage_size = 16\nnormalize = true\n"
                   "[model]\nwidth = 8\nstages = 3\n[train]\nepochs = 1\nbatch_size = 32\nmu_repeats = 1\n"
                   "[robustness]\nmodalities = [\"eo\"]\ncorruptions = [\"gaussian\"]\nsplits = [\"test\"]\n")
    assert main(["train", str(run), "--results", str(tmp_path / "r"), "--quiet"]) == 0
    from raybal.training import checkpoint

    sel = checkpoint.load_selected(tmp_path / "r" / "checkpoints" / "run" / "model.pt")
    assert sel.normalizer == data.normalizer.to_dict()
    assert main(["robustness", str(sel.path), "--results", str(tmp_path / "rob")]) == 0
    import pandas as pd

    trials = pd.read_parquet(tmp_path / "r" / "trials.parquet")
    rob = pd.read_parquet(tmp_path / "rob" / "robustness.parquet")
    # the reload applied the stored statistics: the same clean accuracy as the run's own sweep
    assert rob[rob["level"] == 0]["accuracy"].iloc[0] == pytest.approx(trials["final.test_accuracy"].iloc[0])


def test_a_generator_renders_in_chunks_into_a_mapped_store(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """synthetic_aerial renders chunk by chunk into .npy files read back as memory maps: a split of one
    chunk is the stream it always was, a larger one draws chunk k from its own stream, and a second load
    reads the store without rendering."""
    import numpy as np

    from raybal.data import synthetic

    monkeypatch.setattr(synthetic, "CHUNK_PIXELS", 64 * 16 * 16)  # chunks of 64 samples at 16 x 16
    cfg = tiny_config(**{"data.n_train": 150, "data.n_val": 64, "data.n_test": 20, "data.cache_dir": str(tmp_path)})
    data = load_data(cfg.data)
    store = next((tmp_path / "data").glob("synthetic_aerial-*"))
    assert sorted(p.name for p in store.iterdir() if p.name.startswith("train")) == [
        "train.x.eo.npy", "train.x.sar.npy", "train.y.npy"]
    assert isinstance(np.load(store / "train.x.eo.npy", mmap_mode="r"), np.memmap) and len(data.train) == 150
    p = cfg.data.params
    chunks = list(synthetic.render_chunks(p, 150, p.seed * 1000 + 1))
    assert [len(c[1]) for c in chunks] == [64, 64, 22]
    assert torch.equal(torch.cat([c[0]["eo"] for c in chunks]), data.train.x["eo"])
    one = next(synthetic.render_chunks(p, 64, p.seed * 1000 + 2))  # one chunk: the stream of a whole 64-sample split
    assert torch.equal(one[0]["sar"], data.val.x["sar"]) and torch.equal(one[1], data.val.y)
    assert not torch.equal(chunks[0][0]["eo"][:22], chunks[2][0]["eo"])  # chunk k > 0 draws its own stream

    from raybal import data as data_pkg

    data_pkg._MEMO.clear()
    monkeypatch.setattr(synthetic, "_render", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rendered again")))
    again = load_data(cfg.data)
    assert torch.equal(again.train.x["eo"], data.train.x["eo"])


def test_a_failed_render_leaves_no_store_behind(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from raybal import data as data_pkg
    from raybal.data import synthetic

    real = synthetic._render
    calls = []

    def failing(p, n, rng):  # noqa: ANN001, ANN202
        calls.append(n)
        if len(calls) == 2:
            raise MemoryError("out of memory in chunk 2")
        return real(p, n, rng)

    monkeypatch.setattr(synthetic, "CHUNK_PIXELS", 64 * 16 * 16)
    monkeypatch.setattr(synthetic, "_render", failing)
    data_pkg._MEMO.clear()
    cfg = tiny_config(**{"data.n_train": 150, "data.cache_dir": str(tmp_path)})
    with pytest.raises(MemoryError):
        load_data(cfg.data)
    assert not list((tmp_path / "data").iterdir())  # neither a store nor its temporary folder


def test_multilabel_metrics_match_sklearn() -> None:
    """mAP from the additive per-class histograms equals sklearn's average precision on scores that sit
    on the bins, micro / macro F1 at 0.5 equal sklearn's, and the statistics add over batches."""
    from sklearn.metrics import average_precision_score, f1_score

    from raybal.measure.metrics import MULTILABEL_BINS, finish_metric, metric_details, task_metric

    g = torch.Generator().manual_seed(0)
    y = (torch.rand(400, 5, generator=g) < torch.tensor([0.5, 0.3, 0.1, 0.6, 0.2])).float()
    y[:, 4] = 0  # a class without positives: no AP, left out of the mean
    p = (((y * 0.3 + torch.rand(400, 5, generator=g) * 0.7) * (MULTILABEL_BINS - 1)).floor() / MULTILABEL_BINS
         + 0.5 / MULTILABEL_BINS)
    logits = torch.logit(p.double()).float()
    h1, _ = task_metric(logits[:150], y[:150], 5, "multilabel")
    h2, _ = task_metric(logits[150:], y[150:], 5, "multilabel")
    stat = h1 + h2
    ap = [average_precision_score(y[:, c].numpy(), p[:, c].numpy()) for c in range(4)]
    assert finish_metric(stat, torch.tensor(0), "multilabel") == pytest.approx(np.mean(ap), abs=1e-6)
    d = metric_details(stat, torch.tensor(0), "multilabel", ("a", "b", "c", "d", "e"))
    pred = (p >= 0.5).numpy()
    assert d["micro_f1"] == pytest.approx(f1_score(y.numpy(), pred, average="micro"), abs=1e-9)
    seen = [c for c in range(5) if y[:, c].any() or pred[:, c].any()]
    assert d["macro_f1"] == pytest.approx(f1_score(y[:, seen].numpy(), pred[:, seen], average="macro"), abs=1e-9)
    assert d["ap.a"] == pytest.approx(ap[0], abs=1e-6) and d["ap.e"] is None


@pytest.mark.parametrize("workers", [0, 1])
def test_a_sample_of_another_shape_mid_epoch_is_named(workers: int) -> None:
    class OddOne(Counting):
        def read(self, i: int):  # noqa: ANN201
            x, y = super().read(i)
            if i == 9:
                x["a"] = np.zeros((1, 5, 5), np.float32)
            return x, y

    split = LazySplit(OddOne(12), pipe=Pipe(num_workers=workers))
    with pytest.raises(DataError, match=r"/data/chip_9.tif: modality 'a' has shape \(1, 5, 5\), /data/chip_8.tif has"):
        for _ in split.batches(4):
            pass


def test_missing_as_augmentation_drops_the_modality_with_its_probability() -> None:
    from raybal.config import FrozenMap

    x = {"eo": torch.rand(3, 8, 8) + 0.1, "sar": torch.rand(1, 8, 8) + 0.1}
    p = AugmentParams(corruptions=FrozenMap({"sar": FrozenMap({"missing": 0.5})}))
    gone = 0
    for i in range(200):
        ax, _ = augment_sample(x, torch.tensor(0), p, sample_generator(0, 1, i))
        assert torch.equal(ax["eo"], x["eo"])
        gone += bool((ax["sar"] == 0).all())
        assert gone or torch.equal(ax["sar"], x["sar"]) or (ax["sar"] == 0).all()
    assert 70 <= gone <= 130  # p = 0.5 of 200 (a per-sample draw, not a share of a batch of one)
