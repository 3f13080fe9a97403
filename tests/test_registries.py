"""Adding an entry is one definition with a decorator: a throwaway data set and corruption defined
here (as a contributor's new file would) work through config resolution, training and the sweep."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch

from raybal.config import ConfigError, knob
from raybal.data import DATASETS
from raybal.data.base import MultiModalData, Split
from raybal.noise import CORRUPTIONS, default_levels
from raybal.resolve import default_config
from raybal.training.loop import fit


@dataclass(frozen=True)
class ToyParams:
    task: str = "classification"
    n: int = knob(96, ge=8)
    seed: int = 0

    def modality_names(self) -> tuple[str, ...]:
        return ("a", "b")

    def cacheable(self) -> bool:
        return False


def build_toy(p: ToyParams) -> MultiModalData:
    g = torch.Generator().manual_seed(p.seed)
    y = torch.randint(0, 3, (p.n,), generator=g)
    a = torch.nn.functional.one_hot(y, 3).float() + 0.1 * torch.randn(p.n, 3, generator=g)
    b = torch.rand(p.n, 2, generator=g)
    s = Split({"a": a, "b": b}, y)
    return MultiModalData(s, s, s, ("a", "b"), 3, "classification")


def invert(x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
    """x -> level * (1 - x) + (1 - level) * x."""
    return level * (1 - x) + (1 - level) * x


@pytest.fixture()
def toy() -> Iterator[None]:
    DATASETS.register("_toy", ToyParams)(build_toy)
    CORRUPTIONS.register("_invert", levels=(0.0, 1.0))(invert)
    yield
    DATASETS.unregister("_toy")
    CORRUPTIONS.unregister("_invert")


def test_a_new_data_set_and_corruption_run_end_to_end(toy: None) -> None:
    cfg = default_config(**{"data.name": "_toy", "data.n": 120, "model.width": 4, "train.epochs": 8, "train.lr": 0.02,
                            "train.batch_size": 24, "train.mu_repeats": 1, "robustness.corruptions": ["_invert"]})
    assert cfg.modalities == ("a", "b") and default_levels("_invert") == (0.0, 1.0)
    r = fit(cfg)
    assert r.final["final.test_accuracy"] > 0.8  # modality a carries the label
    assert r.final["final.mu.a"] > r.final["final.mu.b"]
    rows = {(x["modality"], x["level"], x["split"]): x["accuracy"] for x in r.robustness}
    assert set(rows) == {(m, lv, s) for m in "ab" for lv in (0.0, 1.0) for s in ("val", "test")}
    assert rows[("a", 1.0, "test")] < rows[("a", 0.0, "test")]  # inverting the informative modality hurts
    with pytest.raises(ConfigError, match="data.n: must be >= 8"):
        default_config(**{"data.name": "_toy", "data.n": 2})


def test_an_unregistered_entry_is_gone(toy: None) -> None:
    DATASETS.unregister("_toy")
    with pytest.raises(ConfigError, match="data.name: unknown data set '_toy'"):
        default_config(**{"data.name": "_toy"})
    DATASETS.register("_toy", ToyParams)(build_toy)  # the fixture removes it again
