"""Progress display for long work: one line per epoch, a counter for robustness sweeps.

The caller (the CLI, a notebook, a benchmark) builds a :class:`ProgressPrinter` and hands it
down to ``fit`` / ``fit_distributed`` / a study; no lower layer imports a display of its own.
The printer is picklable (it names its stream instead of holding it), so it can travel to a
Ray Train worker.
"""

from __future__ import annotations

import sys
import time
from typing import Any


class ProgressPrinter:
    """One line per epoch (epoch, loss, metric, MU, the method's own scalars), a counter for sweeps."""

    def __init__(self, quiet: bool = False, stream: str = "stderr") -> None:
        if stream not in ("stderr", "stdout"):
            raise ValueError(f"stream must be 'stderr' or 'stdout', got {stream!r}")
        self.quiet = quiet
        self.stream_name = stream
        self.t0 = time.perf_counter()

    @property
    def stream(self) -> Any:
        return getattr(sys, self.stream_name)

    def __call__(self, ev: dict[str, Any]) -> None:
        if self.quiet:
            return
        stream = self.stream
        tty = hasattr(stream, "isatty") and stream.isatty()
        if "robustness" in ev:
            done, total = ev["robustness"]
            end = "\n" if done == total or not tty else "\r"
            if tty or done == total or done % 10 == 0:
                print(f"[{ev['trial_id']}] robustness sweep {done}/{total}", end=end, file=stream, flush=True)
            return
        if "prepare" in ev:
            done, total = ev["prepare"]
            end = "\n" if done == total or not tty else "\r"
            now = time.perf_counter()
            if not tty and done < total and now - getattr(self, "_shown", 0.0) < 10:
                return  # a log file gets a line every 10 s, a terminal every shard
            self._shown = now
            print(f"prepare {ev['split']}: {done}/{total} samples ({ev['rate']:.0f}/s)", end=end, file=stream,
                  flush=True)
            return
        if "epoch" not in ev:
            return
        metric = ev.get("metric", "accuracy")
        parts = [f"[{ev['trial_id']}] epoch {ev['epoch']}/{ev['epochs']}",
                 f"loss {ev['train_loss']:.3f}", f"train {metric} {ev[f'train_{metric}']:.3f}",
                 f"val {metric} {ev[f'val_{metric}']:.3f}"]
        if ev.get("mu"):
            parts.append("MU " + " ".join(f"{m} {v:.2f}" for m, v in ev["mu"].items()))
        for k, v in (ev.get("method_log") or {}).items():
            parts.append(f"{k} {v:.3g}")
        parts.append(f"{time.perf_counter() - self.t0:.0f}s")
        print("  ".join(parts), file=stream, flush=True)
