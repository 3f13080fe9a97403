"""In-memory multimodal data: the container every data set produces and the loop consumes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from raybal.registry import RegistrationError, Registry, require
from raybal.tasks import METRICS, Task


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


class DataError(ValueError):
    """Bad or missing data (a path, a file, a column); the message names it."""


@dataclass
class Split:
    """One split: a float tensor per modality (N, C, H, W) or (N, D) in [0, 1], and labels.

    Labels are (N,) class ids for classification and (N, H, W) per-pixel ids for
    segmentation.
    """

    x: dict[str, Tensor]
    y: Tensor

    def __post_init__(self) -> None:
        n = len(self.y)
        for m, t in self.x.items():
            if len(t) != n:
                raise DataError(f"modality {m!r} has {len(t)} samples but there are {n} labels")

    def __len__(self) -> int:
        return len(self.y)

    def pinned(self) -> Split:
        """The same split in page-locked memory (fast, asynchronous host-to-GPU copies)."""
        return Split({m: t.pin_memory() for m, t in self.x.items()}, self.y.pin_memory())

    def subset(self, idx: Tensor) -> Split:
        return Split({m: t[idx] for m, t in self.x.items()}, self.y[idx])

    def shard_order(self, *, shuffle: bool = False, generator: torch.Generator | None = None, rank: int = 0,
                    world: int = 1, global_batch: int | None = None) -> Tensor:
        """This rank's sample indices for one epoch, so that training does not depend on ``world``
        (DESIGN.md §5.11): one global permutation is cut into global batches of ``global_batch``
        samples (the incomplete last one dropped, as with one worker), and each global batch into
        ``world`` equal slices; rank r's order is its slice of every global batch, in turn. Iterating
        it in chunks of ``global_batch / world`` gives step k the samples of global batch k on every
        ``world``. When the split is smaller than one global batch, that batch is the whole split less
        ``len % world`` samples. Without ``global_batch``: one contiguous shard per rank."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if world == 1:
            return order
        gb = global_batch or n
        if n < gb:
            gb = n - n % world
        per = gb // world
        steps = n // gb
        return order[:steps * gb].view(steps, gb)[:, rank * per:(rank + 1) * per].reshape(-1)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False, rank: int = 0, world: int = 1,
                order: Tensor | None = None) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """Mini-batches; with ``world > 1`` each rank takes a disjoint, equal-sized shard."""
        if order is None:
            order = self.shard_order(shuffle=shuffle, generator=generator, rank=rank, world=world)
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for s in range(0, stop, batch_size):
            idx = order[s:s + batch_size]
            if drop_last and len(idx) < batch_size:
                break
            yield {m: t[idx] for m, t in self.x.items()}, self.y[idx]


@dataclass
class MultiModalData:
    train: Split
    val: Split
    test: Split
    modalities: tuple[str, ...]
    num_classes: int
    task: Task
    class_names: tuple[str, ...] = ()

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise KeyError(f"unknown split {name!r}")
        return getattr(self, name)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {m: tuple(self.train.x[m].shape[1:]) for m in self.modalities}

    def state(self) -> dict:
        return {
            "splits": {s: {"x": self.split(s).x, "y": self.split(s).y} for s in ("train", "val", "test")},
            "modalities": list(self.modalities), "num_classes": self.num_classes, "task": self.task,
            "class_names": list(self.class_names),
        }

    @classmethod
    def from_state(cls, st: dict) -> MultiModalData:
        sp = {s: Split(dict(v["x"]), v["y"]) for s, v in st["splits"].items()}
        return cls(sp["train"], sp["val"], sp["test"], tuple(st["modalities"]), int(st["num_classes"]),
                   st["task"], tuple(st.get("class_names", ())))


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """A seeded train/val/test partition of ``range(n)``."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if n - n_test - n_val < 1 or (val_fraction > 0 and n_val < 1) or (test_fraction > 0 and n_test < 1):
        raise DataError(f"{n} samples are too few for val_fraction={val_fraction}, test_fraction={test_fraction}")
    return perm[n_test + n_val:], perm[n_test:n_test + n_val], perm[:n_test]
