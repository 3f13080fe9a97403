"""Measuring how much a fusion model relies on each modality.

* :func:`measure` — permutation modality utilization, MU (Singh et al., *Measuring Modality
  Utilization in Multi-Modal Neural Networks*, IEEE CAI 2023, Eq. 1-2): MU_i = max(L_i - L, 0)
  where L_i is the loss with modality i shuffled across samples, reported as the share
  MU_i / sum_j MU_j. Shuffling is done on the *features* each branch produces (the model's
  ``encode`` output), which equals shuffling the inputs because branches are per-modality,
  so one evaluation costs one encode and 1 + M * n_repeats fusion passes.
* :func:`conditional_utilization` — Wu et al. 2022, Eq. 3: u(m1|m0) = (A(m0,m1) - A(m0)) /
  A(m0,m1), with A(m0) the accuracy when m1's contribution is replaced by its training-set
  mean feature; generalised to M modalities as the gain of adding m to all the others.
* :func:`learning_speed` and :class:`LearningSpeedTracker` — Wu et al. 2022, Eq. 4-5:
  mu_g = sum ||grad||^2 / sum ||w||^2 per parameter group; s_k = log10(S_bypass,k / S_main,k).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raybal.data.base import Split
from raybal.models.base import FusionModel, index_features

Corrupt = Callable[[dict[str, Tensor]], dict[str, Tensor]]


def task_metric(logits: Tensor, y: Tensor, num_classes: int, task: str) -> tuple[Tensor, Tensor]:
    """Per-batch statistics: (correct count, total) for classification; a confusion matrix for segmentation."""
    pred = logits.argmax(1)
    if task == "classification":
        return (pred == y).sum(), torch.tensor(y.numel())
    idx = y.flatten() * num_classes + pred.flatten()
    conf = torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    return conf, torch.tensor(0)


def finish_metric(stat: Tensor, total: Tensor, task: str) -> float:
    """Accuracy, or mean IoU over the classes that occur (in labels or predictions)."""
    if task == "classification":
        return float(stat) / max(float(total), 1.0)
    conf = stat.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    valid = union > 0
    return float((inter[valid] / union[valid]).mean()) if valid.any() else 0.0


@dataclass
class MUResult:
    """Permutation MU on one split: shares (sum to 1), raw MU_i, and the intact loss / metric."""

    shares: dict[str, float]
    raw: dict[str, float]
    loss: float
    metric: float
    shuffled_loss: dict[str, float] = field(default_factory=dict)
    degenerate: bool = False

    @staticmethod
    def shares_from_raw(raw: dict[str, float]) -> tuple[dict[str, float], bool]:
        total = sum(raw.values())
        if total <= 0.0:
            # A model that ignores its inputs: report 1/M each and flag it (DESIGN.md §2).
            return {m: 1.0 / len(raw) for m in raw}, True
        return {m: v / total for m, v in raw.items()}, False


@torch.no_grad()
def measure(model: FusionModel, split: Split, *, num_classes: int, task: str, n_repeats: int = 3,
            seed: int = 0, batch_size: int = 500, corrupt: Corrupt | None = None,
            modalities: Iterable[str] | None = None, device: torch.device | None = None) -> MUResult:
    """Evaluate ``model`` on ``split`` and measure permutation MU of every modality.

    Samples are shuffled within chunks of ``batch_size`` (a seeded permutation per chunk,
    modality and repeat), which bounds memory and matches a whole-split shuffle in expectation.
    """
    mods = tuple(modalities or model.modalities)
    was_training = model.training
    model.eval()
    dev = device or next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    base_sum = 0.0
    shuf_sum = {m: 0.0 for m in mods}
    count = 0
    stat_acc: Tensor | None = None
    total_acc = torch.tensor(0)
    for xb, yb in split.batches(batch_size):
        if corrupt is not None:
            xb = corrupt(xb)
        xb = {m: t.to(dev) for m, t in xb.items()}
        yb = yb.to(dev)
        feats = model.encode(xb)
        out = model.fuse(feats)
        n = len(yb)
        base_sum += float(F.cross_entropy(out.logits.float(), yb, reduction="mean")) * n
        stat, total = task_metric(out.logits, yb, num_classes, task)
        stat_acc = stat.cpu() if stat_acc is None else stat_acc + stat.cpu()
        total_acc = total_acc + total
        for m in mods:
            for _ in range(n_repeats):
                perm = torch.randperm(n, generator=g).to(dev)
                shuffled = dict(feats)
                shuffled[m] = index_features(feats[m], perm)
                logits = model.fuse(shuffled).logits
                shuf_sum[m] += float(F.cross_entropy(logits.float(), yb, reduction="mean")) * n / n_repeats
        count += n
    model.train(was_training)
    loss = base_sum / max(count, 1)
    shuffled_loss = {m: shuf_sum[m] / max(count, 1) for m in mods}
    raw = {m: max(shuffled_loss[m] - loss, 0.0) for m in mods}
    shares, degenerate = MUResult.shares_from_raw(raw)
    metric = finish_metric(stat_acc if stat_acc is not None else torch.tensor(0), total_acc, task)
    return MUResult(shares, raw, loss, metric, shuffled_loss, degenerate)


@torch.no_grad()
def mean_features(model: FusionModel, split: Split, batch_size: int = 500) -> dict[str, object]:
    """Training-set mean of each modality's ``encode`` output (per feature position)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    sums: dict[str, object] = {}
    n = 0
    for xb, _ in split.batches(batch_size):
        feats = model.encode({m: t.to(dev) for m, t in xb.items()})
        for m, f in feats.items():
            s = _tree_sum(f)
            sums[m] = s if m not in sums else _tree_add(sums[m], s)
        n += len(_first(next(iter(feats.values()))))
    model.train(was_training)
    return {m: _tree_scale(s, 1.0 / max(n, 1)) for m, s in sums.items()}


def _first(f: object) -> Tensor:
    return f[0] if isinstance(f, tuple) else f  # type: ignore[return-value]


def _tree_sum(f: object) -> object:
    return tuple(_tree_sum(x) for x in f) if isinstance(f, tuple) else f.sum(0)  # type: ignore[union-attr]


def _tree_add(a: object, b: object) -> object:
    return tuple(_tree_add(x, y) for x, y in zip(a, b)) if isinstance(a, tuple) else a + b  # type: ignore[operator]


def _tree_scale(a: object, k: float) -> object:
    return tuple(_tree_scale(x, k) for x in a) if isinstance(a, tuple) else a * k  # type: ignore[operator]


def _tree_expand(mean: object, like: object) -> object:
    if isinstance(mean, tuple):
        return tuple(_tree_expand(m, x) for m, x in zip(mean, like))  # type: ignore[arg-type]
    return mean.unsqueeze(0).expand_as(like)  # type: ignore[union-attr]


@torch.no_grad()
def conditional_utilization(model: FusionModel, split: Split, means: dict[str, object], *, num_classes: int,
                            task: str, batch_size: int = 500) -> dict[str, float]:
    """u(m | others) = (A(all) - A(all but m, m at its training mean)) / A(all) (Wu et al. 2022, Eq. 3).

    With two modalities, ``out[m1]`` is u(m1|m0) and the utilization imbalance is
    d_util = out[m1] - out[m0].
    """
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    mods = model.modalities
    stats: dict[str | None, Tensor | None] = {k: None for k in (None, *mods)}
    totals = {k: torch.tensor(0) for k in (None, *mods)}
    for xb, yb in split.batches(batch_size):
        xb = {m: t.to(dev) for m, t in xb.items()}
        yb = yb.to(dev)
        feats = model.encode(xb)
        for k in (None, *mods):
            f = dict(feats)
            if k is not None:
                f[k] = _tree_expand(means[k], feats[k])
            st, tot = task_metric(model.fuse(f).logits, yb, num_classes, task)
            stats[k] = st.cpu() if stats[k] is None else stats[k] + st.cpu()  # type: ignore[operator]
            totals[k] = totals[k] + tot
    model.train(was_training)
    acc = {k: finish_metric(stats[k], totals[k], task) for k in stats}  # type: ignore[arg-type]
    both = acc[None]
    if both <= 0:
        return {m: 0.0 for m in mods}
    return {m: (both - acc[m]) / both for m in mods}


def learning_speed(params: Iterable[nn.Parameter]) -> float:
    """mu_g = sum ||grad||^2 / sum ||w||^2 over a group's tensors (Wu et al. 2022, Eq. 4)."""
    g2 = 0.0
    w2 = 0.0
    for p in params:
        if p.grad is not None:
            g2 += float(p.grad.detach().float().pow(2).sum())
        w2 += float(p.detach().float().pow(2).sum())
    return g2 / w2 if w2 > 0 else 0.0


class LearningSpeedTracker:
    """Running sums of conditional learning speed since the start of training (Wu et al. 2022, Eq. 5).

    For modality k: S_bypass,k sums mu over its cross-modal ("bypass") parameters (its own
    gate plus the fusion parameters shared by all modalities); S_main,k over its own branch.
    s_k = log10(S_bypass,k / S_main,k); the imbalance is d = s_0 - s_1.
    """

    def __init__(self, modalities: tuple[str, ...]) -> None:
        self.modalities = modalities
        self.s_bypass = {m: 0.0 for m in modalities}
        self.s_main = {m: 0.0 for m in modalities}

    def update(self, bypass: dict[str, float], main: dict[str, float]) -> None:
        for m in self.modalities:
            self.s_bypass[m] += bypass[m]
            self.s_main[m] += main[m]

    def speeds(self) -> dict[str, float]:
        out = {}
        for m in self.modalities:
            b, s = self.s_bypass[m], self.s_main[m]
            out[m] = math.log10(b / s) if b > 0 and s > 0 else float("nan")
        return out

    def imbalance(self) -> float:
        s = self.speeds()
        return s[self.modalities[0]] - s[self.modalities[1]]

    def state_dict(self) -> dict:
        return {"s_bypass": dict(self.s_bypass), "s_main": dict(self.s_main)}

    def load_state_dict(self, st: dict) -> None:
        self.s_bypass = dict(st["s_bypass"])
        self.s_main = dict(st["s_main"])
