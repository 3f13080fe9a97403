"""Which epoch's weights become the run's model (``train.select``).

* ``best_val``: the best validation metric (ties go to the later epoch: the schedule has gone further);
* ``target`` (the default, ``auto``, for a method with a utilization target): the best validation
  metric among epochs whose validation utilization is within the method's tolerance of the
  target; if no epoch is, the epoch closest to the target (ties: the better metric), and the run
  says so (``final.selected_by = "closest"``);
* ``last``: the last epoch.

Only epochs the method calls selectable (``BalanceMethod.selectable``: e.g. not before a
penalty starts) are candidates, and, for ``target``, only epochs whose validation utilization
was measured (``train.mu_every``; the last epoch always is). When no epoch qualifies the last
one is kept. The selector's state (the candidates' weights) travels in ``last.pt``, so a
resumed run selects exactly as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
from typing import Any


def resolve_mode(select: str, has_target: bool) -> str:
    """``train.select`` with ``auto`` resolved for a method that has (or has not) a target."""
    if select == "auto":
        return "target" if has_target else "best_val"
    return select


class Selector:
    """Keeps the weights of the epoch(s) that may end up selected."""

    def __init__(self, mode: str, tolerance: float | None = None) -> None:
        if mode not in ("best_val", "target", "last"):
            raise ValueError(f"unknown selection mode {mode!r}")
        if mode == "target" and tolerance is None:
            raise ValueError("target-aware selection needs a tolerance")
        self.mode = mode
        self.tolerance = tolerance
        # slot -> {"epoch", "value", "error", "state"}: "best" (best validation metric; in target mode
        # among the epochs within tolerance) and "closest" (target mode: smallest target error).
        self.slots: dict[str, dict[str, Any]] = {}
        self.last_epoch = 0

    def offer(self, epoch: int, value: float, selectable: bool, state: dict[str, Any],
              error: float | None = None) -> None:
        """Epoch ``epoch`` ended with validation metric ``value`` (higher is better) and, when
        measured, validation target error ``error``. ``state`` is the model's state dict (copied
        only when kept)."""
        self.last_epoch = epoch
        if self.mode == "last" or not selectable:
            return
        if self.mode == "best_val":
            self._consider("best", epoch, value, error, state, lambda o: value >= o["value"])
            return
        if error is None or math.isnan(error):
            return
        if error <= self.tolerance:  # type: ignore[operator]
            self._consider("best", epoch, value, error, state, lambda o: value >= o["value"])
        self._consider("closest", epoch, value, error, state,
                       lambda o: error < o["error"] or (error == o["error"] and value >= o["value"]))

    def _consider(self, slot: str, epoch: int, value: float, error: float | None, state: dict[str, Any],
                  better: Any) -> None:
        old = self.slots.get(slot)
        if old is None or better(old):
            # A copy on the CPU (not the live tensors; no second device copy of the weights), shared when
            # both slots hold the same epoch.
            same = [s["state"] for s in self.slots.values() if s["epoch"] == epoch]
            kept = same[0] if same else {k: _cpu_copy(v) for k, v in state.items()}
            self.slots[slot] = {"epoch": epoch, "value": value, "error": error, "state": kept}

    def chosen(self) -> tuple[int, dict[str, Any] | None, str]:
        """(epoch, state dict or None for the model as it is, how it was selected)."""
        if self.mode == "last":
            return self.last_epoch, None, "last"
        if "best" in self.slots:
            s = self.slots["best"]
            return s["epoch"], s["state"], "target" if self.mode == "target" else "best_val"
        if "closest" in self.slots:
            s = self.slots["closest"]
            return s["epoch"], s["state"], "closest"
        return self.last_epoch, None, "last"

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "tolerance": self.tolerance, "slots": self.slots, "last_epoch": self.last_epoch}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.slots = st["slots"]
        self.last_epoch = st["last_epoch"]


def _cpu_copy(v: Any) -> Any:
    return v.detach().to("cpu", copy=True) if hasattr(v, "detach") else copy.deepcopy(v)
