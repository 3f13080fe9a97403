from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


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
    """For a test that starts a Ray of its own (a multi-node cluster, or trials that must see an environment
    variable the test sets): the shared one is stopped first, and the next test that needs it starts it again."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(autouse=True, scope="session")
def _stop_the_shared_ray() -> object:
    yield
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


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
