from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Generated data is cached per config: share one cache across the session, never ~/.cache.
    if "RAYBAL_CACHE" not in os.environ:
        os.environ["RAYBAL_CACHE"] = str(tmp_path_factory.mktemp("raybal-cache"))


TINY = {
    "data.n_train": 256, "data.n_val": 128, "data.n_test": 128, "data.image_size": 16,
    "model.width": 8, "model.stages": 3, "train.epochs": 2, "train.batch_size": 32, "train.mu_repeats": 1,
}


def tiny_config(**overrides):
    from raybal.resolve import default_config

    merged = {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}}
    return default_config(**merged)


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
