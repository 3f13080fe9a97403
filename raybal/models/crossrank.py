"""Batch statistics over every rank of a data-parallel run (DESIGN.md §5.11).

With ``train.workers = W`` each rank holds ``1/W`` of the global batch. Any statistic a model
computes over its batch in training (BatchNorm's mean and variance, the MMTM units' running
gate averages) must then be the statistic of the *global* batch, or the run depends on W.
:func:`sync_batch_statistics` makes it so, in place, before the model is wrapped for DDP:

* every ``BatchNorm{1,2,3}d`` becomes a :class:`CrossRankBatchNorm` (same parameters, buffers
  and ``state_dict`` keys), whose training-mode mean and variance are sums all-reduced over the
  ranks with autograd (PyTorch's ``SyncBatchNorm`` does the same on GPUs only);
* a module with a ``cross_rank`` attribute (the MMTM unit) has it set to True and averages its
  own statistics with :func:`global_mean`.

Evaluation never communicates: in eval mode BatchNorm uses its running statistics, and only
rank 0 evaluates. On one process everything here is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as td
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def world_size() -> int:
    return td.get_world_size() if td.is_available() and td.is_initialized() else 1


def global_sum(t: Tensor) -> Tensor:
    """Sum of ``t`` over ranks, differentiable (the backward pass all-reduces the gradient)."""
    if world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t)


def global_mean(t: Tensor) -> Tensor:
    """Mean of ``t`` over ranks (equal shards: the global batch's mean of per-rank means)."""
    w = world_size()
    return t if w == 1 else global_sum(t) / w


class CrossRankBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch across all ranks."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-d input, got {x.dim()}-d")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        c = x.shape[1]
        dims = [d for d in range(x.dim()) if d != 1]
        count = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
        packed = global_sum(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        n = packed[-1]
        mean = packed[:c] / n
        var = (packed[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            mom = self.momentum if self.momentum is not None else 0.0
            with torch.no_grad():
                self.running_mean.mul_(1 - mom).add_(mom * mean.detach())
                self.running_var.mul_(1 - mom).add_(mom * var.detach() * n / (n - 1).clamp_min(1.0))
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batch_statistics(model: nn.Module) -> nn.Module:
    """Make ``model``'s training-time batch statistics global across ranks (in place; returns it)."""
    for name, child in list(model.named_children()):
        if isinstance(child, _BatchNorm) and not isinstance(child, CrossRankBatchNorm):
            new = CrossRankBatchNorm(child.num_features, eps=child.eps, momentum=child.momentum,
                                     affine=child.affine, track_running_stats=child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            state = list(child.parameters()) + list(child.buffers())
            if state:
                new.to(state[0].device)
            for p_new, p_old in zip(new.parameters(), child.parameters()):
                p_new.requires_grad_(p_old.requires_grad)
            setattr(model, name, new)
        else:
            sync_batch_statistics(child)
    if hasattr(model, "cross_rank"):
        model.cross_rank = True
    return model
