"""Data-parallel training on Ray Train: a real two-node local cluster, and a worker killed mid-run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

RUN = """
[data]
n_train = {n_train}
n_val = 300
n_test = 300
image_size = 16
[model]
width = 8
stages = 3
[balance]
method = "{method}"
{balance}
[train]
epochs = {epochs}
batch_size = 32
mu_repeats = 1
seed = 3
"""


def write_run(tmp_path: Path, epochs: int = 3, method: str = "vanilla", balance: str = "", n_train: int = 1000) -> Path:
    p = tmp_path / f"run-{method}.toml"
    p.write_text(RUN.format(epochs=epochs, method=method, balance=balance, n_train=n_train))
    return p


def check_tables(d: Path, epochs: int) -> pd.DataFrame:
    e = pd.read_parquet(d / "epochs.parquet")
    assert not e.duplicated(["trial_id", "epoch", "split"]).any()
    assert len(e) == 3 * epochs and set(e["split"]) == {"train", "val", "test"}
    u = pd.read_parquet(d / "utilization.parquet")
    assert set(u["modality"]) == {"eo", "sar"} and u["mu"].between(0, 1).all()
    t = pd.read_parquet(d / "trials.parquet")
    assert len(t) == 1 and t.loc[0, "status"] == "ok"
    return t


def test_two_workers_on_a_two_node_cluster(tmp_path: Path, two_node_cluster) -> None:  # noqa: ANN001
    import ray

    from raybal.resolve import load_config
    from raybal.training.runner import train_to_dir

    run = write_run(tmp_path)
    one = train_to_dir(load_config(run), tmp_path / "one", quiet=True)
    cluster = two_node_cluster
    ray.init(address=cluster.address)
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2  # 1 CPU each: one worker per node
    two = train_to_dir(load_config(run, {"train.workers": 2}), tmp_path / "two", address=cluster.address,
                       quiet=True)
    check_tables(tmp_path / "two", 3)
    shards = [json.loads((tmp_path / "two" / "checkpoints" / "run" / "shards" / f"rank{r}.json").read_text())
              for r in (0, 1)]
    # 31 global batches of 32 (the incomplete one dropped, as with one worker), each cut in two slices
    assert len(shards[0]) == len(shards[1]) == 31 * 16
    assert not set(shards[0]) & set(shards[1]) and len(set(shards[0]) | set(shards[1])) == 31 * 32
    acc1, acc2 = one.final["final.test_accuracy"], two.final["final.test_accuracy"]
    assert acc1 > 0.9 and abs(acc1 - acc2) <= 0.02, (acc1, acc2)
    assert two.config.train.workers == 2 and one.config.train.workers == 1


def test_multi_worker_trials_in_a_study(tmp_path: Path, local_ray: None) -> None:
    from raybal.cli import main

    study = tmp_path / "s.toml"
    study.write_text(RUN.format(epochs=1, method="vanilla", balance="", n_train=256)
                     + "workers = 2\n[study]\nobjective = \"final.val_accuracy\"\nnum_samples = 1\n"
                       "baseline = \"none\"\n"
                       "[search]\n\"train.lr\" = {loguniform = [1e-3, 1e-2]}\n")
    assert main(["study", "run", str(study), "--results", str(tmp_path / "res"), "--quiet"]) == 0
    t = pd.read_parquet(tmp_path / "res" / "trials.parquet")
    assert len(t) == 1 and t.loc[0, "status"] == "ok" and t.loc[0, "train.workers"] == 2
    shards = list((tmp_path / "res" / "checkpoints" / t.loc[0, "trial_id"] / "shards").glob("rank?.json"))
    assert len(shards) == 2  # the trial really ran two Ray Train workers


# the prepared store's variant is slow (make test-all): its rank slicing is held without Ray by
# tests/test_prepared.py::test_ranks_read_disjoint_covering_slices_of_the_shards_every_epoch
@pytest.mark.parametrize("stored", ["files", pytest.param("prepared", marks=pytest.mark.slow)])
def test_two_workers_read_disjoint_covering_shards_of_a_lazy_set_every_epoch(tmp_path: Path, local_ray: None,
                                                                              stored: str) -> None:
    """Issue 14: under Ray Train each rank reads only its shard of a set read from files (So2Sat HDF5
    here), the two shards are disjoint and cover the epoch's global batches, and they are drawn anew
    each epoch from the run's seed (the same as one worker's order). Issue 37: the same from the
    record shards ``raybal prepare`` packed the files into."""
    from test_loaders import write_so2sat

    from raybal.data.prepare import prepare
    from raybal.resolve import default_config, load_config
    from raybal.training.runner import train_to_dir

    root = write_so2sat(tmp_path / "so2sat", sizes=(70, 16, 16))
    data = f'name = "so2sat"\nroot = "{root}"'
    if stored == "prepared":
        prepare(default_config(**{"data.name": "so2sat", "data.root": str(root)}).data, tmp_path / "store",
                shard_samples=12)
        data = f'name = "prepared"\npath = "{tmp_path / "store"}"'
    run = tmp_path / "run.toml"
    run.write_text(f'[data]\n{data}\nnum_workers = 1\n[model]\nwidth = 8\nstages = 3\n'
                   "[train]\nepochs = 3\nbatch_size = 16\nmu_repeats = 1\nseed = 5\n[robustness]\nenabled = false\n")
    train_to_dir(load_config(run, {"train.workers": 2}), tmp_path / "two", quiet=True)
    shards = tmp_path / "two" / "checkpoints" / "run" / "shards"
    orders = []
    for epoch in (1, 2, 3):
        name = "rank{}.json" if epoch == 1 else f"rank{{}}-e{epoch}.json"
        r0, r1 = (json.loads((shards / name.format(r)).read_text()) for r in (0, 1))
        # 4 global batches of 16 (70 samples, the incomplete batch dropped), each cut in two slices of 8
        assert len(r0) == len(r1) == 4 * 8 and not set(r0) & set(r1) and len(set(r0) | set(r1)) == 64
        assert all(0 <= i < 70 for i in r0 + r1)
        orders.append(r0 + r1)
    assert orders[0] != orders[1] != orders[2]  # re-shuffled every epoch
