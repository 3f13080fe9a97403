"""The training step and an epoch of steps, with no host read inside (the GPU path).

``train_step`` is the only optimisation step there is; every balancing method acts through
its hooks (:class:`~raybal.balancing.base.BalanceMethod`). On a GPU, reading a device value on
the host (``float(t)``, ``t.item()``, ``if t:``, ``t.cpu()``) waits for every queued kernel,
so the step and the methods' hooks keep their running values on the model's device and
:class:`EpochStats` reads them once, when the epoch is over. The one exception is Wu et al.'s
greedy re-balancing, which decides before every step which modality to re-balance from the
learning speeds so far (one read of M values per step; raybal.balancing.greedy).

A non-finite loss is counted on the device too: the run stops at the end of the epoch in
which it happened (before that epoch is checkpointed), rather than at the step.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from raybal.balancing import BalanceMethod
from raybal.measure.metrics import task_metric


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run is stopped instead of training on garbage."""


def to_device(xb: dict[str, Tensor], device: torch.device, channels_last: bool = False) -> dict[str, Tensor]:
    """A batch on ``device`` (asynchronous from pinned memory); images in channels-last layout if asked."""
    out = {}
    for m, t in xb.items():
        t = t.to(device, non_blocking=True)
        out[m] = t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t
    return out


def train_step(train_model: torch.nn.Module, method: BalanceMethod, optimizer: torch.optim.Optimizer,
               xb: dict[str, Tensor], yb: Tensor, autocast: Any) -> tuple[Any, Tensor, Tensor]:
    """One optimisation step: forward, the method's extra loss, backward, its gradient hook, update.

    Returns the model output, the (unpenalised) task loss and the total loss, all on the device.
    """
    method.before_step()
    xb = method.prepare_batch(xb, yb)
    if method.owns_update:  # e.g. MLA: one optimizer step per modality
        return method.update(optimizer, xb, yb, autocast)
    # A method that makes its own gradients averages them over ranks itself: DDP must not (no_sync).
    own = method.owns_gradients and hasattr(train_model, "no_sync")
    with train_model.no_sync() if own else nullcontext():  # type: ignore[operator]
        with autocast:
            out = train_model(xb)
            loss = method.task_loss(out, yb)
            extra = method.extra_loss(xb, out, yb, loss)
            total = loss + extra if extra is not None else loss
        optimizer.zero_grad(set_to_none=True)
        method.backward(loss, extra)
    method.after_backward(out, yb)
    optimizer.step()
    method.after_step()
    return out, loss, total.detach()


@dataclass
class EpochStats:
    """Running sums of one rank's epoch, kept on the device (read once, by the caller)."""

    device: torch.device
    loss_sum: Tensor = field(init=False)
    nonfinite: Tensor = field(init=False)
    stat: Tensor | None = None
    total: Tensor = field(default_factory=lambda: torch.tensor(0))
    n_seen: int = 0

    def __post_init__(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.nonfinite = torch.zeros((), dtype=torch.int64, device=self.device)

    def add(self, out: Any, yb: Tensor, loss: Tensor, total_loss: Tensor, num_classes: int, task: str) -> None:
        self.loss_sum += loss.detach().float() * len(yb)
        self.nonfinite += (~torch.isfinite(total_loss)).long()
        self.n_seen += len(yb)
        stat, tot = task_metric(out.logits.detach(), yb, num_classes, task)
        self.stat = stat if self.stat is None else self.stat + stat
        self.total = self.total + tot  # from shapes only: a host tensor, no read of the device


def train_epoch(train_model: torch.nn.Module, method: BalanceMethod, optimizer: torch.optim.Optimizer,
                batches: Iterable[tuple[dict[str, Tensor], Tensor]], autocast: Any, *, device: torch.device,
                num_classes: int, task: str, channels_last: bool = False) -> EpochStats:
    """Run ``train_step`` over ``batches`` (host tensors); nothing inside reads the device."""
    stats = EpochStats(device)
    for xb, yb in batches:
        xb = to_device(xb, device, channels_last)
        yb = yb.to(device, non_blocking=True)
        out, loss, total = train_step(train_model, method, optimizer, xb, yb, autocast)
        stats.add(out, yb, loss, total, num_classes, task)
    return stats


def check_finite(nonfinite: Tensor, epoch: int) -> None:
    """Raise :class:`NonFiniteLossError` if any step of the epoch had a non-finite loss (one read of
    ``EpochStats.nonfinite``, summed over ranks by the caller so that every rank raises together)."""
    bad = int(nonfinite)
    if bad:
        raise NonFiniteLossError(f"non-finite loss in {bad} step(s) of epoch {epoch}")
