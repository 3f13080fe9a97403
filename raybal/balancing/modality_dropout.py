"""``modality_dropout``: random modality dropout, a simple and strong baseline against one sensor
carrying the whole decision (Neverova, Wolf, Taylor, Nebout, *ModDrop: adaptive multi-modal
gesture recognition*, IEEE TPAMI 38(8), 2016, §4.2: each modality's input is dropped (zeroed)
with some probability during training, so the fusion layers cannot rely on any single one).

Here, each training sample independently loses one modality with probability ``p``; which one
is drawn uniformly (``exclude`` names modalities that are never dropped). A dropped modality is
set to zeros, the value a dead sensor gives (the ``blackout`` corruption), so the fused head
learns to decide from the remaining ones. Nothing changes at evaluation time, except that the
zeroed inputs pass through the encoders in training mode: BatchNorm's batch statistics and running
averages include them (about p / M of each modality's samples are zeros), as a dead sensor would.

The draw for a step is made over the whole global batch from a generator seeded by (run seed,
step) and each data-parallel rank takes its own slice, so the samples dropped do not depend on
how many workers share the batch (DESIGN.md §5.11).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from raybal.balancing.base import METHODS, BalanceMethod, MethodContext
from raybal.config import ConfigError, knob


@dataclass(frozen=True)
class ModalityDropoutParams:
    p: float = knob(0.3, ge=0.0, le=1.0, doc="probability that a training sample loses one modality")
    exclude: tuple[str, ...] = ()

    def validate(self, prefix: str) -> None:
        if len(set(self.exclude)) != len(self.exclude):
            raise ConfigError(f"{prefix}.exclude", "lists a modality twice")


@METHODS.register("modality_dropout", ModalityDropoutParams)
class ModalityDropout(BalanceMethod):
    """ModDrop (Neverova et al. 2016): each training sample loses one modality with probability p."""

    @classmethod
    def check_config(cls, cfg: Any, model_cls: Any) -> None:
        super().check_config(cfg, model_cls)
        mods = cfg.modalities
        for i, m in enumerate(cfg.balance.params.exclude):
            if m not in mods:
                raise ConfigError(f"balance.exclude[{i}]", f"unknown modality {m!r} (data set has: {', '.join(mods)})")
        if len(cfg.balance.params.exclude) >= len(mods):
            raise ConfigError("balance.exclude", "leaves no modality to drop")

    def __init__(self, params: ModalityDropoutParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.candidates = tuple(m for m in ctx.modalities if m not in params.exclude)
        self.step = 0
        self.dropped = 0
        self.seen = 0
        self.global_drops: Tensor | int = 0

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.dropped = self.seen = 0

    def masks(self, n: int) -> dict[str, Tensor]:
        """modality -> bool mask over this rank's ``n`` samples (True = dropped) for the current step."""
        world, rank = self.ctx.world_size, self.ctx.rank
        g = torch.Generator().manual_seed(self.ctx.seed * 1_000_003 + self.step)
        drop = torch.rand(n * world, generator=g) < self.params.p
        which = torch.randint(len(self.candidates), (n * world,), generator=g)
        self.global_drops = drop.sum()  # the global batch's (a host tensor, read at the epoch's end)
        mine = slice(rank * n, (rank + 1) * n)
        return {m: drop[mine] & (which[mine] == i) for i, m in enumerate(self.candidates)}

    def prepare_batch(self, x: dict[str, Tensor], y: Tensor) -> dict[str, Tensor]:
        masks = self.masks(len(y))
        self.step += 1
        out = dict(x)
        # The masks are host tensors (drawn with a CPU generator): one host-side read per step, no device sync.
        counts = torch.stack([mask.sum() for mask in masks.values()]).tolist()
        for (m, mask), k in zip(masks.items(), counts):
            if k:
                keep = (~mask).to(x[m].device, x[m].dtype).view(-1, *([1] * (x[m].dim() - 1)))
                out[m] = x[m] * keep
        # the logged rate covers the global batch (every rank draws it), as with one worker
        self.dropped += self.global_drops
        self.seen += len(y) * self.ctx.world_size
        return out

    def epoch_log(self) -> dict[str, float]:
        return {"dropped_fraction": float(self.dropped) / max(self.seen, 1)}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))
