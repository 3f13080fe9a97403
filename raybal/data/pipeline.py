"""The data pipeline every split goes through: sharded sample order, lazy reading, normalisation and
augmentation, the same for data held in memory and data read from files on demand.

* :func:`shard_order`: one epoch's sample indices for one rank (DESIGN.md §5.11): the same global
  batches for any number of workers, each rank its disjoint slice of each.
* :class:`LazySplit`: a split whose samples are read by index from a :class:`SampleSource` (GeoTIFF,
  HDF5, image files), batched by ``torch.utils.data.DataLoader`` with ``num_workers`` processes,
  ``prefetch`` batches read ahead per worker and pinned memory for CUDA. A rank reads only the
  indices of its shard. A file that fails mid-epoch stops the run with a :class:`DataError` naming
  it (the worker hands the message back instead of dying: never a silent skip, never a hang).
* :class:`Normalizer`: per modality and channel mean / std, computed on the training split in one
  streaming pass, cached beside the data cache and stored in the checkpoint. Noise for robustness
  is added *after* it, on the network's input scale (DESIGN.md §2).
* :class:`AugmentParams` / :func:`augment_sample`: the same random flip / 90° rotation / crop for
  every modality and the mask (co-registered sensors stay aligned), photometric jitter per
  modality; drawn per (run seed, epoch, sample index), so a sample is augmented the same way on
  any number of workers.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from raybal.config import FrozenMap, knob
from raybal.noise.base import sample_generator

Batch = tuple[dict[str, Tensor], Tensor]


class DataError(ValueError):
    """Bad or missing data (a path, a file, a column); the message names it."""


@dataclass(frozen=True)
class AugmentParams:
    """``[data.augment]``: training-split augmentation (validation and test are never augmented)."""

    flip: bool = knob(False, doc="random horizontal and vertical flips, the same for every modality and the mask")
    rot90: bool = knob(False, doc="a random multiple of 90 degrees (square images), the same for every modality")
    crop: int = knob(0, ge=0, le=64, doc="pad by this many pixels (reflected) and crop back at a random offset")
    jitter: float = knob(0.0, ge=0.0, le=1.0, doc="per modality: contrast and brightness changes drawn in [-j, j]")
    noise: FrozenMap = knob({}, ge=0.0, le=1.0, doc="modality -> v: Gaussian noise of a variance drawn uniformly in "
                            "[0, v] per sample, before normalisation (the robustness sweep's `gaussian` corruption "
                            "as training augmentation, with data.normalize = false)")
    corruptions: FrozenMap = knob({}, doc="modality -> {corruption = p}: each training sample gets the corruption "
                                  "with probability p, at a level drawn from its default levels (severities 1-5), "
                                  "before normalisation, e.g. {eo = {clouds = 0.3, haze = 0.2}}")

    @property
    def enabled(self) -> bool:
        return (self.flip or self.rot90 or self.crop > 0 or self.jitter > 0 or any(v > 0 for v in self.noise.values())
                or any(p > 0 for table in self.corruptions.values() for p in table.values()))


@dataclass(frozen=True)
class LoaderKnobs:
    """The pipeline knobs every data set's ``[data]`` section takes (its params dataclass extends this)."""

    num_workers: int | None = knob(None, ge=0, le=64, doc="DataLoader processes reading files (unset: 1 on a "
                                   "2-CPU machine, else the node's CPUs per training process - 1, up to 8; data "
                                   "in memory needs none)")
    prefetch: int = knob(2, ge=1, le=32, doc="batches each DataLoader process reads ahead")
    normalize: bool = knob(False, doc="standardise each modality's channels with training-split mean / std")
    augment: AugmentParams = AugmentParams()


LOADER_KEYS = frozenset(f.name for f in dataclasses.fields(LoaderKnobs))


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (a container's share, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_workers(requested: int | None, *, cheap_reads: bool = False) -> int:
    """``data.num_workers``, or its default: the CPUs this process may use, shared among the training
    processes of this node (``LOCAL_WORLD_SIZE``, set by Ray Train / torchrun), less one for the training
    process itself, at most 8; 1 on a 2-CPU machine. ``cheap_reads`` (a source whose samples cost
    microseconds, e.g. prepared shards on a local disk): none on a 2-CPU machine, where a reader process
    costs more in start-up and hand-over than the reads it takes off the training process
    (benchmarks/RESULTS.md, bench_data)."""
    if requested is not None:
        return requested
    per_rank = usable_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    if per_rank <= 2:
        return 0 if cheap_reads else 1
    return min(8, per_rank - 1)


@dataclass(frozen=True)
class Normalizer:
    """Per modality, per channel (dim 1 of a batch) mean and standard deviation."""

    mean: Mapping[str, tuple[float, ...]]
    std: Mapping[str, tuple[float, ...]]

    def apply(self, x: dict[str, Tensor], *, batched: bool = True) -> dict[str, Tensor]:
        out = {}
        for m, t in x.items():
            shape = [1] * t.dim()
            shape[1 if batched else 0] = -1
            mean = torch.tensor(self.mean[m], dtype=t.dtype, device=t.device).view(shape)
            std = torch.tensor(self.std[m], dtype=t.dtype, device=t.device).view(shape)
            out[m] = (t - mean) / std
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"mean": {m: list(v) for m, v in self.mean.items()}, "std": {m: list(v) for m, v in self.std.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalizer:
        return cls({m: tuple(map(float, v)) for m, v in d["mean"].items()},
                   {m: tuple(map(float, v)) for m, v in d["std"].items()})


def compute_normalizer(split: Any, batch_size: int = 256) -> Normalizer:
    """Mean and std of every channel over the split, in one streaming pass (float64 sums)."""
    sums: dict[str, Tensor] = {}
    sq: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    for xb, _ in split.batches(batch_size, raw=True):
        for m, t in xb.items():
            c = t.double().transpose(0, 1).reshape(t.shape[1], -1)
            sums[m] = sums.get(m, 0) + c.sum(1)
            sq[m] = sq.get(m, 0) + (c * c).sum(1)
            counts[m] = counts.get(m, 0) + c.shape[1]
    mean = {m: sums[m] / counts[m] for m in sums}
    std = {m: ((sq[m] / counts[m] - mean[m] ** 2).clamp_min(0).sqrt()).clamp_min(1e-6) for m in sums}
    return Normalizer({m: tuple(v.tolist()) for m, v in mean.items()}, {m: tuple(v.tolist()) for m, v in std.items()})


@dataclass(frozen=True)
class Pipe:
    """What a split applies to its batches; attached by :func:`raybal.data.load_data`."""

    num_workers: int = 0
    prefetch: int = 2
    pin: bool = False
    normalizer: Normalizer | None = None
    augment: AugmentParams = AugmentParams()




def augment_sample(x: dict[str, Tensor], y: Tensor, p: AugmentParams,
                   g: torch.Generator) -> tuple[dict[str, Tensor], Tensor]:
    """One sample's modalities (C, H, W) and label (a class id, or an (H, W) mask), transformed alike.
    Vector modalities (D,) only get the jitter."""
    images = [m for m, t in x.items() if t.dim() == 3]
    dense = y.dim() == 2
    x = dict(x)

    def spatial(fn: Any) -> None:
        nonlocal y
        for m in images:
            x[m] = fn(x[m])
        if dense:
            y = fn(y)

    r = torch.rand(4, generator=g)
    if p.flip:
        if r[0] < 0.5:
            spatial(lambda t: t.flip(-1))
        if r[1] < 0.5:
            spatial(lambda t: t.flip(-2))
    if p.rot90 and images:
        h, w = x[images[0]].shape[-2:]
        k = int(torch.randint(0, 4 if h == w else 2, (1,), generator=g)) * (1 if h == w else 2)
        if k:
            spatial(lambda t: torch.rot90(t, k, dims=(-2, -1)))
    if p.crop and images:
        c = p.crop
        i, j = (int(v) for v in torch.randint(0, 2 * c + 1, (2,), generator=g))

        def crop(t: Tensor) -> Tensor:
            h, w = t.shape[-2:]
            padded = torch.nn.functional.pad(t[None].float() if t.dim() == 2 else t[None], (c, c, c, c),
                                             mode="reflect")[0]
            out = padded[..., i:i + h, j:j + w]
            return out.to(t.dtype) if t.dim() == 2 else out

        spatial(crop)
    if p.jitter > 0:
        for m in x:
            a, b = (torch.rand(2, generator=g) * 2 - 1) * p.jitter
            mean = x[m].mean()
            x[m] = (x[m] - mean) * (1 + a) + mean + b
    for m, top in sorted(p.noise.items()):
        if top > 0 and m in x:
            variance = float(torch.rand(1, generator=g)) * top
            x[m] = x[m] + torch.randn(x[m].shape, generator=g, dtype=x[m].dtype) * variance ** 0.5
    for m, table in sorted(p.corruptions.items()):
        for name, prob in sorted(table.items()):
            if m in x and float(torch.rand(1, generator=g)) < prob:
                x[m] = corrupt_sample(x[m], name, g)
    return x, y


def corrupt_sample(x: Tensor, name: str, g: torch.Generator) -> Tensor:
    """One sample's modality under corruption ``name`` at a level drawn uniformly from its default levels
    other than 0 (the clean point); the corruption's own draws from ``g``. ``missing`` and ``blackout``
    zero the modality, ``missing_mean`` fills it with the sample's own mean per band (their level is a
    share of samples; here the probability plays that part)."""
    from raybal.noise import CORRUPTIONS, nonzero_levels

    entry = CORRUPTIONS.get(name)
    if entry.meta.get("rate") or name == "blackout":  # per sample: the probability is the missing rate
        return entry.obj(x[None], 1.0, g)[0]
    levels = nonzero_levels(name)
    level = levels[int(torch.randint(len(levels), (1,), generator=g))]
    return CORRUPTIONS.get(name).obj(x[None], float(level), g)[0]


def shard_order(n: int, *, shuffle: bool = False, generator: torch.Generator | None = None, rank: int = 0,
                world: int = 1, global_batch: int | None = None) -> Tensor:
    """This rank's sample indices for one epoch, so that training does not depend on ``world``
    (DESIGN.md §5.11): one global permutation is cut into global batches of ``global_batch`` samples
    (the incomplete last one dropped, as with one worker), and each global batch into ``world`` equal
    slices; rank r's order is its slice of every global batch, in turn. When the split is smaller than
    one global batch, that batch is the whole split less ``n % world`` samples. Without
    ``global_batch``: one contiguous shard per rank."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if world == 1:
        return order
    gb = global_batch or n
    if n < gb:
        gb = n - n % world
    per = gb // world
    steps = n // gb
    return order[:steps * gb].view(steps, gb)[:, rank * per:(rank + 1) * per].reshape(-1)


def chunks(order: Tensor, batch_size: int, drop_last: bool) -> list[Tensor]:
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    return [order[s:s + batch_size] for s in range(0, stop, batch_size) if not drop_last or s + batch_size <= stop]


def transform_batch(pipe: Pipe, xb: dict[str, Tensor], yb: Tensor, idx: Tensor,
                    augment: tuple[int, int] | None) -> Batch:
    """In-memory batches: augmentation per sample (when asked), then normalisation."""
    if augment is not None and pipe.augment.enabled:
        seed, epoch = augment
        pairs = [augment_sample({m: t[k] for m, t in xb.items()}, yb[k], pipe.augment,
                                sample_generator(seed, epoch, int(i))) for k, i in enumerate(idx)]
        xb = {m: torch.stack([p[0][m] for p in pairs]) for m in xb}
        yb = torch.stack([p[1] for p in pairs])
    if pipe.normalizer is not None:
        xb = pipe.normalizer.apply(xb)
    return xb, yb


# ----------------------------------------------------------------------------------------- lazy


class SampleSource(Protocol):
    """Samples read by index from files: what a lazy loader implements."""

    def __len__(self) -> int: ...

    def read(self, i: int) -> tuple[dict[str, np.ndarray], Any]:
        """Sample i: float32 arrays per modality ((C, H, W) or (D,)) and its label (int or an (H, W) mask)."""
        ...

    def describe(self, i: int) -> str:
        """The file(s) sample i comes from, for error messages."""
        ...

    # Optional: ``cheap_reads = True`` (samples cost microseconds: see :func:`auto_workers`) and
    # ``read_batch(indices) -> (modality -> (B, ...) arrays, (B, ...) labels)`` (a batch in one piece).


@dataclass(frozen=True)
class _Failed:
    message: str


@dataclass(frozen=True)
class _Whole:
    """A batch read in one piece (:meth:`_Reader.__getitems__`)."""

    x: dict[str, Tensor]
    y: Tensor


class _Reader(torch.utils.data.Dataset):
    def __init__(self, source: SampleSource, indices: Tensor, pipe: Pipe, augment: tuple[int, int] | None,
                 raw: bool) -> None:
        self.source, self.indices, self.pipe, self.augment, self.raw = source, indices, pipe, augment, raw

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Any:
        i = int(self.indices[k])
        try:
            arrays, label = self.source.read(i)
            x = {m: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for m, a in arrays.items()}
            lab = np.asarray(label)  # class ids (int64); multi-hot labels stay float
            y = torch.as_tensor(lab, dtype=torch.float32 if np.issubdtype(lab.dtype, np.floating) else torch.int64)
        except DataError as exc:
            return _Failed(str(exc))
        except Exception as exc:  # an unreadable / truncated file: name it, never skip it
            return _Failed(f"{self.source.describe(i)}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}")
        if not self.raw:
            if self.augment is not None and self.pipe.augment.enabled:
                x, y = augment_sample(x, y, self.pipe.augment, sample_generator(self.augment[0], self.augment[1], i))
            if self.pipe.normalizer is not None:
                x = self.pipe.normalizer.apply(x, batched=False)
        return x, y, i

    def __getitems__(self, ks: list[int]) -> Any:
        """A whole batch at once from a source that reads batches (``read_batch``: the prepared shards),
        without a tensor per sample; else sample by sample. The DataLoader calls this with a batch's
        positions and hands the result to :meth:`collate`."""
        read_batch = getattr(self.source, "read_batch", None)
        if read_batch is None:
            return [self[k] for k in ks]
        idx = [int(self.indices[k]) for k in ks]
        try:
            arrays, labels = read_batch(idx)
        except DataError as exc:
            return _Failed(str(exc))
        except Exception as exc:
            return _Failed(f"{self.source.describe(idx[0])}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}")
        x = {m: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for m, a in arrays.items()}
        y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32 if np.issubdtype(labels.dtype, np.floating)
                                                  else np.int64))
        if not self.raw:
            if self.augment is not None and self.pipe.augment.enabled:
                pairs = [augment_sample({m: t[j] for m, t in x.items()}, y[j], self.pipe.augment,
                                        sample_generator(self.augment[0], self.augment[1], i))
                         for j, i in enumerate(idx)]
                x = {m: torch.stack([p[0][m] for p in pairs]) for m in x}
                y = torch.stack([p[1] for p in pairs])
            if self.pipe.normalizer is not None:
                x = self.pipe.normalizer.apply(x)
        return _Whole(x, y)

    def collate(self, items: Any) -> Any:
        """Stack a batch; a failed read, or a sample whose shape differs from the batch's first, comes
        back as the one line naming its file (the DataLoader process never raises, never hangs)."""
        if isinstance(items, _Failed):
            return items
        if isinstance(items, _Whole):
            return items.x, items.y
        for it in items:
            if isinstance(it, _Failed):
                return it
        mods = items[0][0].keys()
        shapes = {m: items[0][0][m].shape for m in mods}
        for it in items:
            for m in mods:
                if it[0][m].shape != shapes[m]:
                    return _Failed(f"{self.source.describe(it[2])}: modality {m!r} has shape {tuple(it[0][m].shape)}, "
                                   f"{self.source.describe(items[0][2])} has {tuple(shapes[m])} (every sample of a "
                                   "modality must have one shape)")
        return {m: torch.stack([it[0][m] for it in items]) for m in mods}, torch.stack([it[1] for it in items])


class LazySplit:
    """A split read on demand from a :class:`SampleSource` (the interface of the in-memory ``Split``)."""

    def __init__(self, source: SampleSource, indices: Tensor | None = None, pipe: Pipe | None = None) -> None:
        self.source = source
        self.indices = torch.arange(len(source)) if indices is None else indices
        self.pipe = pipe or Pipe()
        self._shapes: dict[str, tuple[int, ...]] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each modality's sample shape, read once from the first sample (and shared by its pipe variants)."""
        if self._shapes is None:
            arrays, _ = self.source.read(int(self.indices[0]))
            self._shapes = {m: tuple(a.shape) for m, a in arrays.items()}
        return self._shapes

    def with_pipe(self, pipe: Pipe) -> LazySplit:
        out = LazySplit(self.source, self.indices, pipe)
        out._shapes = self._shapes
        return out

    def read_all(self, batch_size: int = 256) -> Batch:
        """Every sample, in order, as tensors in memory (as the pipeline yields them, unaugmented): for a
        small split, a test or the in-memory side of a benchmark."""
        parts = list(self.batches(batch_size))
        return {m: torch.cat([p[0][m] for p in parts]) for m in parts[0][0]}, torch.cat([p[1] for p in parts])

    def pinned(self) -> LazySplit:
        return self.with_pipe(dataclasses.replace(self.pipe, pin=True))

    def subset(self, idx: Tensor) -> LazySplit:
        return LazySplit(self.source, self.indices[idx], self.pipe)

    def shard_order(self, **kw: Any) -> Tensor:
        return shard_order(len(self), **kw)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False, rank: int = 0, world: int = 1, order: Tensor | None = None,
                augment: tuple[int, int] | None = None, raw: bool = False) -> Iterator[Batch]:
        """Mini-batches of this rank's shard, read by ``num_workers`` processes (in this one with 0).
        ``augment = (seed, epoch)`` augments (training); ``raw`` skips augmentation and normalisation."""
        if order is None:
            order = self.shard_order(shuffle=shuffle, generator=generator, rank=rank, world=world)
        plan = [c.tolist() for c in chunks(order, batch_size, drop_last)]
        if not plan:
            return
        workers = self.pipe.num_workers
        reader = _Reader(self.source, self.indices, self.pipe, augment, raw)
        loader = torch.utils.data.DataLoader(
            reader, batch_sampler=plan, num_workers=workers, collate_fn=reader.collate, pin_memory=self.pipe.pin,
            prefetch_factor=self.pipe.prefetch if workers else None, persistent_workers=False)
        for batch in loader:
            if isinstance(batch, _Failed):
                raise DataError(batch.message)
            yield batch

