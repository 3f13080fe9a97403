"""Measuring how much a fusion model relies on each modality.

* :func:`measure` — permutation modality utilization, MU (Singh et al., *Measuring Modality
  Utilization in Multi-Modal Neural Networks*, IEEE CAI 2023, Eq. 1-2): MU_i = max(L_i - L, 0)
  where L_i is the loss with modality i shuffled across samples, reported as the share
  MU_i / sum_j MU_j. Shuffling is done on the *features* each branch produces (the model's
  ``encode`` output), which equals shuffling the inputs because branches are per-modality,
  so one evaluation costs one encode and 1 + M * n_repeats fusion passes.
* :func:`conditional_utilization` — Wu et al. 2022, Eq. 3: u(m1|m0) = (A(m0,m1) - A(m0)) /
  A(m0,m1), A the accuracy of branch m0's own head with normal cross-modal flow and with the flow
  from m1 turned off (m1's squeezed vector at each MMTM unit at its training-set mean); for M > 2
  the gain of branch m's head from all the others' flow. Missing (None) for late / sum fusion.
* :func:`mean_ablation_utilization` — a different measure for any fusion: the relative drop of
  the fused metric when a modality's whole feature is replaced by its training-set mean.
* :func:`learning_speed` and :class:`LearningSpeedTracker` — Wu et al. 2022, Eq. 4-5:
  mu_g = sum ||grad||^2 / sum ||w||^2 per parameter group; s_k = log10(S_bypass,k / S_main,k).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from raybal.data.base import Split
from raybal.measure.bootstrap import Bootstrap
from raybal.measure.metrics import finish_metric, summed_sample_loss, task_metric
from raybal.models.base import FusionModel, index_features
from raybal.noise.base import Corrupter

# Evaluation encodes at most this many samples per forward pass. The per-sample cost depends on the
# chunk through the CPU caches: over the cnn, ResNet-18 and ConvNeXt-T at 32 / 64 px on 1 and 2
# threads, 128 is faster than 256 in most cases, and 512 is slower still (benchmarks/bench_eval_batch.py).
# Results do not depend on it (evaluation is per sample); MU's shuffle chunk (``measure(batch_size=)``)
# is separate.
EVAL_BATCH = 128


def encode_chunked(model: FusionModel, xb: dict[str, Tensor], chunk: int = EVAL_BATCH) -> Any:
    """``model.encode(xb)`` in chunks of ``chunk`` samples, concatenated (tensors or tuples of them)."""
    n = len(next(iter(xb.values())))
    if n <= chunk:
        return model.encode(xb)
    parts = [model.encode({m: t[i:i + chunk] for m, t in xb.items()}) for i in range(0, n, chunk)]
    return {m: _cat([p[m] for p in parts]) for m in parts[0]}


# ``fuse`` runs on at most this many feature elements per pass (16 MB of float32). A dense model's fuse is its
# whole decoder: a 500-image pass allocates hundreds of MB per layer, fresh pages from the kernel each time on
# CPU (benchmarks/bench_segmentation_eval.py). Vector / pooled features (classification) stay one pass per
# batch.
FUSE_ELEMENTS = 1 << 22


def fuse_rows(feats: Any) -> int:
    """How many samples one ``fuse`` pass over ``feats`` (a modality -> features mapping) should take."""
    per = sum(f[0].numel() for v in feats.values() for f in (v if isinstance(v, tuple) else (v,)))
    return max(1, FUSE_ELEMENTS // max(per, 1))


def fused_loss_and_stat(model: FusionModel, feats: Any, yb: Tensor, num_classes: int, task: str,
                        boot: Bootstrap | None = None, idx: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The summed per-sample loss (float64; the per-pixel / per-class mean within a sample) and the task
    statistics of ``model.fuse(feats)``, fused in row chunks of :func:`fuse_rows`; with ``boot``, each
    chunk's statistics are added to the bootstrap resamples too (``idx``: the samples' indices in the
    split)."""
    n = len(yb)
    step = fuse_rows(feats)
    loss = torch.zeros((), dtype=torch.float64, device=yb.device)
    stat: Tensor | None = None
    total = torch.tensor(0)
    for i in range(0, n, step):
        sl = slice(i, min(i + step, n))
        f = feats if step >= n else {m: index_features(v, sl) for m, v in feats.items()}
        y = yb[sl]
        logits = model.fuse(f).logits
        loss = loss + summed_sample_loss(logits.double(), y)
        st, tot = task_metric(logits, y, num_classes, task)
        if boot is not None and idx is not None:
            boot.add(logits, y, idx[sl])
        stat = st if stat is None else stat + st
        total = total + tot
    assert stat is not None, "empty batch"
    return loss, stat, total


def _cat(feats: list[Any]) -> Any:
    if isinstance(feats[0], tuple):
        return tuple(_cat([f[i] for f in feats]) for i in range(len(feats[0])))
    return torch.cat(feats)


@dataclass
class MUResult:
    """Permutation MU on one split: shares (sum to 1), raw MU_i, and the intact loss / metric."""

    shares: dict[str, float]
    raw: dict[str, float]
    loss: float
    metric: float
    shuffled_loss: dict[str, float] = field(default_factory=dict)
    degenerate: bool = False
    stat: Tensor | None = None  # the metric's statistics (segmentation: the confusion matrix), for metric_details
    total: Tensor = field(default_factory=lambda: torch.tensor(0))

    @staticmethod
    def shares_from_raw(raw: dict[str, float]) -> tuple[dict[str, float], bool]:
        total = sum(raw.values())
        if total <= 0.0:
            # A model that ignores its inputs: report 1/M each and flag it (DESIGN.md §2).
            return {m: 1.0 / len(raw) for m in raw}, True
        return {m: v / total for m, v in raw.items()}, False


@torch.no_grad()
def measure(model: FusionModel, split: Split, *, num_classes: int, task: str, n_repeats: int = 3,
            seed: int = 0, batch_size: int = 500, corrupt: Corrupter | None = None,
            modalities: Iterable[str] | None = None, device: torch.device | None = None,
            boot: Bootstrap | None = None) -> MUResult:
    """Evaluate ``model`` on ``split`` and measure permutation MU of ``modalities`` (None: every modality;
    empty: none, the metric only). ``corrupt`` transforms each batch (``(batch, idx) -> batch``, ``idx``
    the samples' indices in the split); ``boot`` gathers the metric's bootstrap resamples.

    Samples are shuffled within chunks of ``batch_size`` (a seeded permutation per chunk,
    modality and repeat), which bounds memory and matches a whole-split shuffle in expectation.
    """
    mods = tuple(model.modalities if modalities is None else modalities)
    was_training = model.training
    model.eval()
    dev = device or next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    # Loss sums on the device, read once at the end: [intact, shuffled m_1, ..., shuffled m_k].
    sums = torch.zeros(1 + len(mods), dtype=torch.float64, device=dev)
    count = 0
    stat_acc: Tensor | None = None
    total_acc = torch.tensor(0)
    for xb, yb in split.batches(batch_size):  # in the split's order: batch k holds samples count .. count + n
        n = len(yb)
        idx = torch.arange(count, count + n)
        if corrupt is not None:
            xb = corrupt(xb, idx)
        xb = {m: t.to(dev, non_blocking=True) for m, t in xb.items()}
        yb = yb.to(dev, non_blocking=True)
        feats = encode_chunked(model, xb)
        loss, stat, total = fused_loss_and_stat(model, feats, yb, num_classes, task, boot, idx)
        sums[0] += loss
        stat_acc = stat if stat_acc is None else stat_acc + stat
        total_acc = total_acc + total
        for i, m in enumerate(mods, start=1):
            for _ in range(n_repeats):
                perm = torch.randperm(n, generator=g).to(dev, non_blocking=True)
                shuffled = dict(feats)
                shuffled[m] = index_features(feats[m], perm)
                sums[i] += fused_loss_and_stat(model, shuffled, yb, num_classes, task)[0] / n_repeats
        count += n
    model.train(was_training)
    totals = (sums / max(count, 1)).tolist()  # the one read of the device
    loss = totals[0]
    shuffled_loss = {m: totals[i] for i, m in enumerate(mods, start=1)}
    raw = {m: max(shuffled_loss[m] - loss, 0.0) for m in mods}
    shares, degenerate = MUResult.shares_from_raw(raw)
    stat_cpu = stat_acc.cpu() if stat_acc is not None else None
    metric = finish_metric(stat_cpu if stat_cpu is not None else torch.tensor(0), total_acc, task)
    return MUResult(shares, raw, loss, metric, shuffled_loss, degenerate, stat_cpu, total_acc)


@torch.no_grad()
def mean_features(model: FusionModel, split: Split, batch_size: int = EVAL_BATCH) -> dict[str, object]:
    """Training-set mean of each modality's ``encode`` output (per feature position), for
    :func:`mean_ablation_utilization`."""
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
def mean_ablation_utilization(model: FusionModel, split: Split, means: dict[str, object], *, num_classes: int,
                              task: str, batch_size: int = EVAL_BATCH) -> dict[str, float]:
    """Mean-ablation utilization, defined for any fusion: the relative drop of the *fused* metric when
    modality m's whole feature is replaced by its training-set mean,
    (A(all) - A(m at its mean)) / A(all). Not Wu et al.'s rate (see :func:`conditional_utilization`).
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
            _, st, tot = fused_loss_and_stat(model, f, yb, num_classes, task)
            stats[k] = st.cpu() if stats[k] is None else stats[k] + st.cpu()  # type: ignore[operator]
            totals[k] = totals[k] + tot
    model.train(was_training)
    acc = {k: finish_metric(stats[k], totals[k], task) for k in stats}  # type: ignore[arg-type]
    both = acc[None]
    if both <= 0:
        return {m: 0.0 for m in mods}
    return {m: (both - acc[m]) / both for m in mods}


@torch.no_grad()
def shapley_utilization(model: FusionModel, split: Split, *, num_classes: int, task: str,
                        batch_size: int = EVAL_BATCH) -> dict[str, float]:
    """Each modality's Shapley contribution to the fused metric (BalanceBenchmark's ``Calculate_Shapley``,
    ``balancemm/evaluation/modalitys.py``, written for any M):

        v(S)   = the fused metric with only the modalities in S present (the others' inputs zeroed)
        phi_m  = sum_{S subset of M \\ {m}} |S|! (M - |S| - 1)! / M! (v(S + {m}) - v(S))

    so sum_m phi_m = v(all) - v(none) (efficiency): how much of the metric above the all-blank
    model's each modality earns, averaged over the orders in which modalities could join. In the
    metric's units (accuracy, mIoU, micro-F1), not a share; a negative value is a modality that hurts.
    Branches are separate up to ``encode``'s output, so each batch is encoded twice (as is and blank)
    and fused 2^M times."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    mods = tuple(model.modalities)
    subsets = [frozenset(c) for r in range(len(mods) + 1) for c in itertools.combinations(mods, r)]
    stats: dict[frozenset[str], Tensor | None] = {s: None for s in subsets}
    totals = {s: torch.tensor(0) for s in subsets}
    for xb, yb in split.batches(batch_size):
        xb = {m: t.to(dev) for m, t in xb.items()}
        yb = yb.to(dev)
        feats = model.encode(xb)
        blank = model.encode({m: torch.zeros_like(t) for m, t in xb.items()})
        for s in subsets:
            _, st, tot = fused_loss_and_stat(model, {m: feats[m] if m in s else blank[m] for m in mods}, yb,
                                             num_classes, task)
            stats[s] = st.cpu() if stats[s] is None else stats[s] + st.cpu()  # type: ignore[operator]
            totals[s] = totals[s] + tot
    model.train(was_training)
    v = {s: finish_metric(stats[s], totals[s], task) for s in subsets}  # type: ignore[arg-type]
    n = len(mods)
    return {m: sum(math.factorial(len(s)) * math.factorial(n - len(s) - 1) / math.factorial(n)
                   * (v[s | {m}] - v[s]) for s in subsets if m not in s) for m in mods}


@torch.no_grad()
def squeeze_means(model: FusionModel, split: Split, batch_size: int = EVAL_BATCH) -> list[dict[str, Tensor]]:
    """Training-set mean of each modality's squeezed vector at every cross-modal (MMTM) unit, normal flow
    (the ``average_squeezemaps`` of Wu et al.'s reference code)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    sums: list[dict[str, Tensor]] | None = None
    n = 0
    for xb, _ in split.batches(batch_size):
        vecs = model.squeezed_vectors(model.encode({m: t.to(dev) for m, t in xb.items()}))
        dtype = next(iter(vecs[0].values())).dtype
        batch = [{m: v.double().sum(0) for m, v in unit.items()} for unit in vecs]
        sums = batch if sums is None else [{m: a[m] + b[m] for m in a} for a, b in zip(sums, batch)]
        n += len(next(iter(vecs[0].values())))
    model.train(was_training)
    assert sums is not None, "empty split"
    return [{m: (v / n).to(dtype) for m, v in unit.items()} for unit in sums]


@torch.no_grad()
def conditional_utilization(model: FusionModel, split: Split, means: list[dict[str, Tensor]], *, num_classes: int,
                            task: str, batch_size: int = EVAL_BATCH) -> dict[str, float | None]:
    """Wu et al. 2022's conditional utilization rate (Eq. 3), per *receiving* branch m:

        cond_util[m] = (A_m(normal flow) - A_m(flow from the others off)) / A_m(normal flow)

    where A_m is the metric of branch m's own head, and "flow off" replaces, at every MMTM unit, the
    other modalities' squeezed vectors by their training-set means (``means``, from
    :func:`squeeze_means`; both directions at once, as the reference's ``turnoff_cross_modal_flow``).
    With two modalities (m0, m1): u(m1|m0) = cond_util[m0], and d_util = u(m1|m0) - u(m0|m1) =
    cond_util[m0] - cond_util[m1]. A model without cross-modal gates (late / sum fusion) has no
    cross-modal flow: every value is None (missing, not 0). Measure on data from the training
    distribution (DESIGN.md §2).
    """
    mods = model.modalities
    if not model.has_gates or not model.has_modality_logits:
        return {m: None for m in mods}
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    stats: dict[tuple[str, bool], Tensor] = {}
    totals: dict[tuple[str, bool], Tensor] = {}
    for xb, yb in split.batches(batch_size):
        xb = {m: t.to(dev) for m, t in xb.items()}
        yb = yb.to(dev)
        feats = model.encode(xb)
        normal = model.fuse(feats).modality_logits
        with model.cross_modal_flow_off(means):
            off = model.fuse(feats).modality_logits
        assert normal is not None and off is not None
        for m in mods:
            for key, logits in (((m, False), normal[m]), ((m, True), off[m])):
                st, tot = task_metric(logits, yb, num_classes, task)
                stats[key] = st.cpu() if key not in stats else stats[key] + st.cpu()
                totals[key] = tot if key not in totals else totals[key] + tot
    model.train(was_training)
    out: dict[str, float | None] = {}
    for m in mods:
        a_on = finish_metric(stats[(m, False)], totals[(m, False)], task)
        a_off = finish_metric(stats[(m, True)], totals[(m, True)], task)
        out[m] = (a_on - a_off) / a_on if a_on > 0 else None
    return out


def learning_speed(params: Iterable[nn.Parameter]) -> Tensor:
    """mu_g = sum ||grad||^2 / sum ||w||^2 over a group's tensors (Wu et al. 2022, Eq. 4), as a 0-d
    float64 tensor on the parameters' device (no host read: called every step)."""
    ps = list(params)
    if not ps:
        return torch.zeros((), dtype=torch.float64)
    zero = torch.zeros((), dtype=torch.float64, device=ps[0].device)
    g2 = sum((p.grad.detach().double().pow(2).sum() for p in ps if p.grad is not None), zero)
    w2 = sum((p.detach().double().pow(2).sum() for p in ps), zero)
    return torch.where(w2 > 0, g2 / w2.clamp_min(1e-300), zero)


class LearningSpeedTracker:
    """Running sums of conditional learning speed since the start of training (Wu et al. 2022, Eq. 5).

    For modality k: S_bypass,k sums mu over its cross-modal ("bypass") parameters (its own
    gate plus the fusion parameters shared by all modalities); S_main,k over its own branch.
    s_k = log10(S_bypass,k / S_main,k); the imbalance is d = s_0 - s_1. The sums are kept on
    the device (a float64 vector per group); :meth:`speeds` reads them.
    """

    def __init__(self, modalities: tuple[str, ...]) -> None:
        self.modalities = modalities
        self.s_bypass: Tensor = torch.zeros(len(modalities), dtype=torch.float64)
        self.s_main: Tensor = torch.zeros(len(modalities), dtype=torch.float64)

    def update(self, bypass: dict[str, Tensor | float], main: dict[str, Tensor | float]) -> None:
        b = torch.stack([torch.as_tensor(bypass[m], dtype=torch.float64) for m in self.modalities])
        s = torch.stack([torch.as_tensor(main[m], dtype=torch.float64) for m in self.modalities])
        self.s_bypass = self.s_bypass.to(b.device) + b
        self.s_main = self.s_main.to(s.device) + s

    def speed_vector(self) -> Tensor:
        """s_k per modality, on the device (NaN before the first update)."""
        b, s = self.s_bypass, self.s_main.to(self.s_bypass.device)
        ok = (b > 0) & (s > 0)
        return torch.where(ok, torch.log10(b.clamp_min(1e-300) / s.clamp_min(1e-300)), torch.full_like(b, math.nan))

    def speeds(self) -> dict[str, float]:
        """s_k per modality (NaN before the first update); one read of the device."""
        return dict(zip(self.modalities, self.speed_vector().tolist()))

    def imbalance(self) -> float:
        s = self.speeds()
        return s[self.modalities[0]] - s[self.modalities[1]]

    def state_dict(self) -> dict:
        return {"s_bypass": dict(zip(self.modalities, self.s_bypass.tolist())),
                "s_main": dict(zip(self.modalities, self.s_main.tolist()))}

    def load_state_dict(self, st: dict) -> None:
        self.s_bypass = torch.tensor([st["s_bypass"][m] for m in self.modalities], dtype=torch.float64)
        self.s_main = torch.tensor([st["s_main"][m] for m in self.modalities], dtype=torch.float64)
