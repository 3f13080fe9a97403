"""Prepared shards (issue 37): ``raybal prepare`` packs a data set read through its own loader, and the
``prepared`` data set gives back the same samples bit for bit, locally or through an fsspec URL; a
damaged shard names itself, an interrupted prepare resumes, a half-written store is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_loaders import write_bigearthnet, write_sen12ms, write_so2sat
from test_segmentation import _write_mcubes

from raybal.cli import main
from raybal.config import ConfigError
from raybal.data import DataError, LazySplit, load_data
from raybal.data.pipeline import Pipe
from raybal.data.prepare import prepare
from raybal.resolve import default_config

SOURCES = {
    "so2sat_classification": lambda root: {"data.name": "so2sat", "data.root": str(write_so2sat(root, (30, 8, 8)))},
    "bigearthnet_multilabel": lambda root: {"data.name": "bigearthnet_mm", "data.image_size": 12,
                                            "data.root": str(write_bigearthnet(root, n=(10, 4, 4)))},
    "sen12ms_segmentation": lambda root: {"data.name": "sen12ms", "data.task": "segmentation", "data.labels": "igbp",
                                          "data.image_size": 8, "model.name": "unet",
                                          "data.root": str(write_sen12ms(root, scenes=4, patches=3))},
    "mcubes_segmentation": lambda root: {"data.name": "mcubes", "data.image_size": 16, "data.crop_left": 4,
                                         "model.name": "unet", "data.root": str(_mcubes(root))},
}


def _mcubes(root: Path) -> Path:
    _write_mcubes(root, {"train": [f"s{i}" for i in range(5)], "val": ["v0", "v1", "v2"], "test": ["t0", "t1", "t2"]})
    return root


def _all(split: LazySplit) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return split.with_pipe(Pipe()).read_all(batch_size=7)


@pytest.mark.parametrize("kind", list(SOURCES))
def test_a_prepared_store_gives_back_the_loaders_samples_bit_for_bit(tmp_path: Path, kind: str) -> None:
    over = SOURCES[kind](tmp_path / "src")
    cfg = default_config(**over)
    # tiny shards: every split spans several, and shards end mid-batch
    meta = prepare(cfg.data, tmp_path / "store", shard_samples=2, workers=1)
    assert all(len(s["shards"]) >= 2 for s in meta["splits"].values())
    raw = load_data(cfg.data)
    pover = {"data.name": "prepared", "data.path": str(tmp_path / "store"),
             **{k: v for k, v in over.items() if k == "model.name"}}
    got = load_data(default_config(**pover).data)
    assert (got.task, got.num_classes, got.class_names, got.modalities) == (raw.task, raw.num_classes,
                                                                           raw.class_names, raw.modalities)
    for s in ("train", "val", "test"):
        (xa, ya), (xb, yb) = _all(raw.split(s)), _all(got.split(s))
        assert ya.dtype == yb.dtype and torch.equal(ya, yb)
        for m in raw.modalities:
            assert xa[m].dtype == xb[m].dtype and torch.equal(xa[m], xb[m]), (s, m)
        assert np.load(tmp_path / "store" / f"{s}.index.npy").tolist() == raw.split(s).indices.tolist()
    # the training split's statistics travel with the store and are what normalize = true applies
    normed = load_data(default_config(**pover, **{"data.normalize": True}).data)
    xt, _ = _all(raw.train)
    for m in raw.modalities:
        c = xt[m].double().transpose(0, 1).reshape(xt[m].shape[1], -1)
        assert normed.normalizer.mean[m] == pytest.approx(c.mean(1).tolist(), rel=1e-6, abs=1e-9)
        assert normed.normalizer.std[m] == pytest.approx(c.std(1, unbiased=False).clamp_min(1e-6).tolist(), rel=1e-5)


def test_training_on_a_store_is_training_on_its_source_and_a_url_reads_the_same(tmp_path: Path) -> None:
    """The same samples in the same order: one epoch on SEN12MS GeoTIFFs, on their store by path and by a
    ``file://`` URL (fsspec's reader) give the same numbers."""
    from raybal.training.loop import fit

    root = write_sen12ms(tmp_path / "src", scenes=6, patches=4)
    common = {"model.width": 8, "model.stages": 2, "train.epochs": 1, "train.batch_size": 8, "train.mu_repeats": 1,
              "robustness.enabled": False, "data.num_workers": 1}
    src = default_config(**{"data.name": "sen12ms", "data.root": str(root), **common})
    prepare(src.data, tmp_path / "store", shard_samples=5)
    finals = [fit(src).final]
    for path in (str(tmp_path / "store"), (tmp_path / "store").as_uri()):
        finals.append(fit(default_config(**{"data.name": "prepared", "data.path": path, **common})).final)
    for key in ("final.test_accuracy", "final.test_loss", "final.mu.s1", "final.val_loss"):
        assert finals[0][key] == finals[1][key] == finals[2][key], key


@pytest.mark.parametrize("workers", [0, 1])
def test_a_truncated_shard_names_itself_at_open_and_mid_epoch(tmp_path: Path, workers: int) -> None:
    cfg = default_config(**{"data.n_train": 64, "data.n_val": 16, "data.n_test": 16})
    meta = prepare(cfg.data, tmp_path / "store", shard_samples=16)
    assert len(meta["splits"]["train"]["shards"]) >= 3
    shard = tmp_path / "store" / "train-00002.npy"
    data = load_data(default_config(**{"data.name": "prepared", "data.path": str(tmp_path / "store"),
                                       "data.num_workers": workers}).data)
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-00002\.npy: truncated: \d+ of \d+ bytes"):
        for _ in data.train.batches(8):
            pass
    # mid-epoch: truncated after this process opened it, the short read is named
    src = data.train.source
    shard.write_bytes(b"")
    full = tmp_path / "store" / "train-00001.npy"
    src.read(src.per)  # shard 1 opened and checked
    full.write_bytes(full.read_bytes()[:200])
    with pytest.raises(DataError, match=r"train-00001\.npy: truncated at sample 3"):
        src.read(src.per + 3)


def test_an_interrupted_prepare_resumes_and_a_half_written_store_is_refused(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import raybal.data.prepare as prep

    cfg = default_config(**{"data.n_train": 96, "data.n_val": 16, "data.n_test": 16})
    out = tmp_path / "store"
    written: list[str] = []
    real = prep._write_shard

    def dies_after_two(path, dtype, records):  # noqa: ANN001, ANN202
        if len(written) == 2:
            raise KeyboardInterrupt
        real(path, dtype, records)
        written.append(path.name)

    monkeypatch.setattr(prep, "_write_shard", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg.data, out, shard_samples=16)
    assert written == ["train-00000.npy", "train-00001.npy"] and not (out / "prepared.json").exists()
    with pytest.raises(ConfigError, match=r"data\.path: .*store: an unfinished raybal prepare"):
        default_config(**{"data.name": "prepared", "data.path": str(out)})

    def counts(path, dtype, records):  # noqa: ANN001, ANN202
        real(path, dtype, records)
        written.append(path.name)

    monkeypatch.setattr(prep, "_write_shard", counts)
    written.clear()
    prepare(cfg.data, out, shard_samples=16)
    assert "train-00000.npy" not in written and "train-00001.npy" not in written and "train-00002.npy" in written
    raw, got = load_data(cfg.data), load_data(default_config(**{"data.name": "prepared", "data.path": str(out)}).data)
    for s in ("train", "val", "test"):
        assert torch.equal(raw.split(s).y, _all(got.split(s))[1])
        assert torch.equal(raw.split(s).x["eo"], _all(got.split(s))[0]["eo"])


def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run.toml"
    run.write_text("[data]\nn_train = 40\nn_val = 10\nn_test = 10\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    cases = [
        (["prepare", str(run), str(other)], "other: exists and holds other files (notes.txt)"),
        (["prepare", str(run), str(run)], "run.toml: exists and is not a folder"),
        (["prepare", str(run), str(tmp_path / "s"), "--shard-mb", "0"], "--shard-mb: a positive size"),
    ]
    assert main(["prepare", str(run), str(tmp_path / "s"), "--quiet"]) == 0
    assert main(["prepare", str(run), str(tmp_path / "s"), "--quiet"]) == 0  # already prepared: nothing to do
    assert "already prepared" in capsys.readouterr().out
    cases.append((["prepare", str(run), str(tmp_path / "s"), "--set", "data.n_train=50"],
                  "s: holds a store prepared from another data config (synthetic_aerial)"))
    for url, expect in (("s3://no-such-bucket/store", "cannot read this URL here"),
                        ("http://127.0.0.1:1/store", "not found or not reachable"),
                        (str(tmp_path / "nothing"), "folder not found"),
                        (str(other), "no prepared.json: not a store written by raybal prepare")):
        bad = tmp_path / f"bad{len(cases)}.toml"
        bad.write_text(f'[data]\nname = "prepared"\npath = "{url}"\n')
        cases.append((["train", str(bad), "--results", str(tmp_path / "r")], f"data.path: {url}: {expect}"))
    for argv, expect in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expect in err, (argv, err)
    assert (other / "notes.txt").read_text() == "mine" and not (tmp_path / "r").exists()
    meta = json.loads((tmp_path / "s" / "prepared.json").read_text())
    assert meta["source"]["data"]["n_train"] == 40 and meta["format_version"] == 1


def test_a_local_store_is_read_in_the_training_process_on_two_cpus_and_a_url_by_a_reader(tmp_path: Path,
                                                                                          monkeypatch) -> None:  # noqa: ANN001
    """On 2 CPUs a reader process costs more than the ~25 us pread of a local record it saves
    (bench_data: 0.65x in-memory throughput with one, 0.97x without); a URL may wait on the network,
    and a node with CPUs to spare gets the usual readers."""
    import raybal.data.pipeline as pipeline

    prepare(default_config(**{"data.n_train": 40, "data.n_val": 10, "data.n_test": 10}).data, tmp_path / "s")
    workers = {}
    for cpus in (2, 16):
        monkeypatch.setattr(pipeline, "usable_cpus", lambda cpus=cpus: cpus)
        for kind, path in (("path", str(tmp_path / "s")), ("url", (tmp_path / "s").as_uri())):
            data = load_data(default_config(**{"data.name": "prepared", "data.path": path}).data)
            workers[cpus, kind] = data.train.pipe.num_workers
    assert workers == {(2, "path"): 0, (2, "url"): 1, (16, "path"): 8, (16, "url"): 8}
    pinned = load_data(default_config(**{"data.name": "prepared", "data.path": str(tmp_path / "s"),
                                         "data.num_workers": 1}).data)
    assert pinned.train.pipe.num_workers == 1  # a value in the file wins


def test_a_resumed_prepare_checks_its_source_and_clears_a_killed_shard_write(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import raybal.data.prepare as prep

    cfg = default_config(**{"data.n_train": 96, "data.n_val": 16, "data.n_test": 16})
    out = tmp_path / "store"

    def dies(path, dtype, records):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "_write_shard", dies)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg.data, out, shard_samples=16)
    monkeypatch.undo()
    (out / ".train-00000.npy.abc.tmp").write_bytes(b"half a shard")  # what a SIGKILL mid-write leaves
    other = default_config(**{"data.n_train": 96, "data.n_val": 16, "data.n_test": 16, "data.seed": 3})
    with pytest.raises(DataError, match="holds a store prepared from another data config"):
        prepare(other.data, out, shard_samples=16)
    text = (out / ".raybal-prepare.json").read_text()
    marker = json.loads(text)
    marker["layout"]["train"]["indices"] = "0" * 16  # as if the source's files had moved between the two runs
    (out / ".raybal-prepare.json").write_text(json.dumps(marker))
    with pytest.raises(DataError, match="samples or splits changed since this prepare began"):
        prepare(cfg.data, out)
    (out / ".raybal-prepare.json").write_text(text)
    meta = prepare(cfg.data, out, shard_samples=50)  # resumed: the first call's shard size is kept
    assert meta["shard_size"] == 16 and not list(out.glob(".*.tmp"))


def test_a_process_keeps_a_bounded_number_of_shards_open_and_a_bad_header_is_named(tmp_path: Path,
                                                                                 monkeypatch) -> None:  # noqa: ANN001
    from raybal.data.prepared import ShardSource

    cfg = default_config(**{"data.n_train": 64, "data.n_val": 16, "data.n_test": 16})
    prepare(cfg.data, tmp_path / "s", shard_samples=4)  # 16 training shards
    monkeypatch.setattr(ShardSource, "MAX_OPEN", 3)
    data = load_data(default_config(**{"data.name": "prepared", "data.path": str(tmp_path / "s"),
                                       "data.num_workers": 0}).data)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    got = torch.cat([y for _, y in data.train.batches(8, order=order)])
    assert torch.equal(got, load_data(cfg.data).train.y[order]) and len(data.train.source._handles) <= 3
    shard = tmp_path / "s" / "val-00001.npy"
    raw = bytearray(shard.read_bytes())
    raw[raw.index(b"(4,)"):raw.index(b"(4,)") + 4] = b"(5,)"  # the header claims 5 records
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"val-00001\.npy: its header does not match prepared.json"):
        for _ in data.val.batches(8):
            pass


def test_ranks_read_disjoint_covering_slices_of_the_shards_every_epoch(tmp_path: Path) -> None:
    """What each of 2 ranks reads from a prepared store: its slice of every global batch of the epoch's
    permutation, the two disjoint and covering, drawn anew each epoch; each sample the source's own (the
    2-worker Ray Train run: tests/test_distributed.py, slow)."""
    from raybal.data.pipeline import shard_order

    cfg = default_config(**{"data.n_train": 70, "data.n_val": 16, "data.n_test": 16})
    prepare(cfg.data, tmp_path / "s", shard_samples=12)
    raw = load_data(cfg.data).train
    store = load_data(default_config(**{"data.name": "prepared", "data.path": str(tmp_path / "s")}).data).train
    orders = []
    for epoch in (1, 2, 3):
        seen = []
        for rank in (0, 1):
            g = torch.Generator().manual_seed(5 * 1000 + epoch)
            order = shard_order(70, shuffle=True, generator=g, rank=rank, world=2, global_batch=16)
            xs, ys = zip(*store.batches(8, order=order, drop_last=True), strict=True)
            assert torch.equal(torch.cat(ys), raw.y[order]) and torch.equal(torch.cat([x["eo"] for x in xs]),
                                                                            raw.x["eo"][order])
            seen.append(order.tolist())
        assert len(seen[0]) == len(seen[1]) == 4 * 8 and not set(seen[0]) & set(seen[1])
        assert len(set(seen[0]) | set(seen[1])) == 64
        orders.append(seen[0] + seen[1])
    assert orders[0] != orders[1] != orders[2]
