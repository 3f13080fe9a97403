from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)
# Every Ray the tests start (the local one, the two-node cluster) inherits this: Ray Train's controller polls
# its workers every 0.25 s instead of 2 s, and each epoch's report waits for that poll.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Generated data is cached per config: share one cache across the session, never ~/.cache.
    if "RAYBAL_CACHE" not in os.environ:
        os.environ["RAYBAL_CACHE"] = str(tmp_path_factory.mktemp("raybal-cache"))


@pytest.fixture
def local_ray(_cache_dir: None) -> None:
    """The session's one local Ray. raybal's studies and Ray Train runs use a running Ray instead of starting
    (and stopping) their own, so the tests that need one share it: started by the first, stopped at the end."""
    from raybal.training.distributed import init_ray

    init_ray(None)


@pytest.fixture
def no_ray() -> None:
    """For a test that connects to a Ray of its own (``two_node_cluster``): the shared one is stopped first,
    and the next test that needs it starts it again."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def _cluster(_cache_dir: None) -> object:
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # never beside the shared local Ray
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    yield cluster
    cluster.shutdown()


@pytest.fixture
def two_node_cluster(_cluster: object, no_ray: None) -> object:
    """A local Ray cluster of two 1-CPU nodes (a head and a worker), started once for the tests that need
    one; they run last (``pytest_collection_modifyitems``), after every test of the shared local Ray. A test
    may remove the worker node (a lost node): the next one gets a fresh worker."""
    import ray

    if not _cluster.worker_nodes:  # type: ignore[attr-defined]
        _cluster.add_node(num_cpus=1)  # type: ignore[attr-defined]
        _cluster.wait_for_nodes()  # type: ignore[attr-defined]
    yield _cluster
    if ray.is_initialized():
        ray.shutdown()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The multi-node tests last: a local cluster and the shared local Ray never run at the same time, and
    # the shared one is started once rather than again after each cluster test.
    items.sort(key=lambda item: "two_node_cluster" in getattr(item, "fixturenames", ()))


@pytest.fixture(autouse=True, scope="session")
def _stop_the_shared_ray() -> object:
    yield
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


SMALL_STUDY = """
[data]
n_train = 256
n_val = 128
n_test = 128
image_size = 16
[model]
name = "mmtm"
width = 8
stages = 3
fuse_after = [1, 2]
[balance]
method = "vanilla"
[train]
epochs = 3
batch_size = 32
mu_repeats = 1
[robustness]
modalities = ["eo", "sar"]
corruptions = ["gaussian", "blackout"]
levels = {gaussian = [0.0, 0.06, 0.12]}
splits = ["val", "test"]
measure_mu = true
[study]
name = "tiny_report"
objectives = {"final.val_accuracy" = "max", "robust.val_mean_accuracy" = "max"}
num_samples = 4
repeats = 2
scheduler = "fifo"
seed = 1
startup_trials = 4
[search]
"balance.method" = {choice = ["vanilla", "mu_target", "greedy_guided"]}
"balance.target.eo" = {uniform = [0.5, 0.9], when = {"balance.method" = "mu_target"}}
"balance.window" = {int = [1, 5], when = {"balance.method" = "greedy_guided"}}
"train.lr" = {loguniform = [1e-3, 5e-3]}
"""


@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory, _cache_dir: None) -> Path:
    """One small real study (4 configurations of 3 methods x 2 seeds, a robustness grid, two objectives),
    run once for the session; the report, the notebooks and the docs' examples read it."""
    import tomllib

    from raybal.study.driver import run_study
    from raybal.study.space import study_from_dict
    from raybal.training.distributed import init_ray

    init_ray(None)  # the session's one local Ray (local_ray)
    study = study_from_dict(tomllib.loads(SMALL_STUDY), source=SMALL_STUDY)
    out = tmp_path_factory.mktemp("small_study") / "res"
    res = run_study(study, out, quiet=True)
    # Seed 1 draws every method of the choice at least once in the 4 configurations.
    methods = set(res.trials["balance.method"])
    assert {"mu_target", "greedy_guided"} <= methods, f"seed 1 drew only {methods}"
    return out


TINY = {
    "data.n_train": 256, "data.n_val": 128, "data.n_test": 128, "data.image_size": 16,
    "model.width": 8, "model.stages": 3, "train.epochs": 2, "train.batch_size": 32, "train.mu_repeats": 1,
}


def tiny_config(**overrides):
    from raybal.resolve import default_config

    merged = {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}}
    return default_config(**merged)


def tiny_method(cfg, epochs: int = 1, steps_per_epoch: int = 4):  # noqa: ANN001, ANN201
    """(method, model, data) of ``cfg``: its data, a model seeded with 0, its balancing method's strategy."""
    import torch

    from raybal.balancing import METHODS, MethodContext
    from raybal.data import load_data
    from raybal.training.loop import build_for

    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_for(cfg, data)
    ctx = MethodContext(model=model, modalities=data.modalities, epochs=epochs, steps_per_epoch=steps_per_epoch,
                        seed=0)
    return METHODS.get(cfg.balance.method).obj(cfg.balance.params, ctx), model, data


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def assert_unique_keys(results_dir: Path) -> None:
    """Every table of a results directory holds one row per its documented key (results.schema.KEYS)."""
    from raybal.results.schema import KEYS, TABLES
    from raybal.results.tables import load_results

    res = load_results(results_dir)
    for table in TABLES:
        df = getattr(res, table)
        dup = df[df.duplicated(KEYS[table], keep=False)]
        assert dup.empty, f"{table}.parquet: {len(dup)} rows share a key {KEYS[table]}:\n{dup[KEYS[table]].head()}"

