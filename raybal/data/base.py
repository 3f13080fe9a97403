"""In-memory multimodal data: the container every data set produces and the loop consumes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from raybal.config import ConfigError
from raybal.config.registry import RegistrationError, Registry, require
from raybal.config.tasks import METRICS, Task
from raybal.data.pipeline import DataError, LazySplit, Normalizer, Pipe, shard_order, transform_batch
from raybal.data.pipeline import chunks as _chunks


class DataParams(Protocol):
    """What a data set's params dataclass (its ``[data]`` knobs) must provide."""

    task: str  # "classification" | "segmentation"

    def modality_names(self) -> tuple[str, ...]:
        """The modalities this configuration yields, in order (known before loading anything)."""
        ...

    def cacheable(self) -> bool:
        """True when the data is generated (cache it on disk keyed by the config); False for files."""
        ...


def _check_dataset(name: str, obj: Any, params: type | None) -> None:
    if not callable(obj):
        raise RegistrationError(f"data set {name!r}: the registered builder must be callable(params) -> MultiModalData")
    if params is None:
        raise RegistrationError(f"data set {name!r}: needs a params dataclass (DataParams)")
    require("data set", name, params, ("task", "modality_names", "cacheable"))
    task = getattr(params, "task", None)
    if isinstance(task, str) and task not in METRICS:
        raise RegistrationError(f"data set {name!r}: default task {task!r} is not one of {', '.join(METRICS)}")


# name -> builder(params) -> MultiModalData, registered with its DataParams dataclass
DATASETS: Registry[Callable[[Any], Any]] = Registry("data set", _check_dataset)


@dataclass
class Split:
    """One split held in memory: a float tensor per modality (N, C, H, W) or (N, D), and labels.

    Labels are (N,) class ids for classification and (N, H, W) per-pixel ids for
    segmentation. ``pipe`` (normalisation, augmentation) is applied to the batches it yields.
    """

    x: dict[str, Tensor]
    y: Tensor
    pipe: Pipe = field(default_factory=Pipe)

    def __post_init__(self) -> None:
        n = len(self.y)
        for m, t in self.x.items():
            if len(t) != n:
                raise DataError(f"modality {m!r} has {len(t)} samples but there are {n} labels")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {m: tuple(t.shape[1:]) for m, t in self.x.items()}

    def with_pipe(self, pipe: Pipe) -> Split:
        return Split(self.x, self.y, pipe)

    def pinned(self) -> Split:
        """The same split in page-locked memory (fast, asynchronous host-to-GPU copies)."""
        return Split({m: t.pin_memory() for m, t in self.x.items()}, self.y.pin_memory(), self.pipe)

    def subset(self, idx: Tensor) -> Split:
        return Split({m: t[idx] for m, t in self.x.items()}, self.y[idx], self.pipe)

    def shard_order(self, *, shuffle: bool = False, generator: torch.Generator | None = None, rank: int = 0,
                    world: int = 1, global_batch: int | None = None) -> Tensor:
        """This rank's sample indices for one epoch (:func:`raybal.data.pipeline.shard_order`)."""
        return shard_order(len(self), shuffle=shuffle, generator=generator, rank=rank, world=world,
                           global_batch=global_batch)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False, rank: int = 0, world: int = 1, order: Tensor | None = None,
                augment: tuple[int, int] | None = None,
                raw: bool = False) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """Mini-batches; with ``world > 1`` each rank takes a disjoint, equal-sized shard. ``augment =
        (seed, epoch)`` augments (training); ``raw`` skips augmentation and normalisation."""
        if order is None:
            order = self.shard_order(shuffle=shuffle, generator=generator, rank=rank, world=world)
        plain = raw or (self.pipe.normalizer is None and (augment is None or not self.pipe.augment.enabled))
        for idx in _chunks(order, batch_size, drop_last):
            xb, yb = {m: t[idx] for m, t in self.x.items()}, self.y[idx]
            yield (xb, yb) if plain else transform_batch(self.pipe, xb, yb, idx, augment)


@dataclass
class MultiModalData:
    train: Split | LazySplit
    val: Split | LazySplit
    test: Split | LazySplit
    modalities: tuple[str, ...]
    num_classes: int
    task: Task
    class_names: tuple[str, ...] = ()

    def split(self, name: str) -> Split | LazySplit:
        if name not in ("train", "val", "test"):
            raise KeyError(f"unknown split {name!r}")
        return getattr(self, name)

    normalizer: Normalizer | None = None  # what the pipeline standardises with (stored in checkpoints)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.train.shapes

    def state(self) -> dict:
        return {
            "splits": {s: {"x": self.split(s).x, "y": self.split(s).y} for s in ("train", "val", "test")},
            "modalities": list(self.modalities), "num_classes": self.num_classes, "task": self.task,
            "class_names": list(self.class_names),
        }

    def hold_out(self, fraction: float, seed: int) -> tuple[MultiModalData, Split | LazySplit]:
        """(these data without a held-out slice of the training split, the slice): ``round(fraction * N)``
        training samples drawn by ``seed``, the same on every rank and every resume; both keep the
        training split's order and pipeline (e.g. G-Blending's V, held out from training)."""
        n = len(self.train)
        k = min(max(round(fraction * n), 1), n - 1)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_033 + 5))
        held, kept = perm[:k].sort().values, perm[k:].sort().values
        return dataclasses.replace(self, train=self.train.subset(kept)), self.train.subset(held)

    @classmethod
    def from_state(cls, st: dict) -> MultiModalData:
        sp = {s: Split(dict(v["x"]), v["y"]) for s, v in st["splits"].items()}
        return cls(sp["train"], sp["val"], sp["test"], tuple(st["modalities"]), int(st["num_classes"]),
                   st["task"], tuple(st.get("class_names", ())))


def check_root(prefix: str, root: str, what: str) -> Path:
    """``root`` must name an existing folder; returns it expanded."""
    if not root:
        raise ConfigError(f"{prefix}.root", f"required: {what}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{prefix}.root", f"folder not found: {root}")
    return path


def check_modalities(prefix: str, modalities: tuple[str, ...], known: Iterable[str], dataset: str) -> None:
    """Two or more distinct modalities, each one the data set has."""
    known = tuple(known)
    for i, m in enumerate(modalities):
        if m not in known:
            raise ConfigError(f"{prefix}.modalities[{i}]",
                              f"unknown modality {m!r} ({dataset} has: {', '.join(known)})")
    if len(modalities) < 2 or len(set(modalities)) != len(modalities):
        raise ConfigError(f"{prefix}.modalities", "needs two or more distinct modalities")


def check_band_indices(prefix: str, bands: Mapping[str, Any], modalities: tuple[str, ...],
                       channels: Mapping[str, int]) -> None:
    """``bands``: modality -> 0-based channel indices, each below the modality's channel count."""
    for m, idx in bands.items():
        if m not in modalities:
            raise ConfigError(f"{prefix}.bands.{m}", f"not one of the modalities ({', '.join(modalities)})")
        if not idx or any(int(b) >= channels[m] for b in idx):
            raise ConfigError(f"{prefix}.bands.{m}", f"0-based indices 0..{channels[m] - 1}, got {list(idx)}")


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """A seeded train/val/test partition of ``range(n)``."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if n - n_test - n_val < 1 or (val_fraction > 0 and n_val < 1) or (test_fraction > 0 and n_test < 1):
        raise DataError(f"{n} samples are too few for val_fraction={val_fraction}, test_fraction={test_fraction}")
    return perm[n_test + n_val:], perm[n_test:n_test + n_val], perm[:n_test]
