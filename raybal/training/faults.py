"""Fault injection for the reliability tests (``tests/reliability``): off unless ``RAYBAL_FAULT`` is set.

``RAYBAL_FAULT="<kind>:<epoch>[:<condition>]"`` raises at the end of training epoch
``<epoch>`` of every run whose config meets ``<condition>`` (a constraint on a dotted config
key, e.g. ``train.batch_size == 16``). Kinds: ``oom`` (``torch.OutOfMemoryError``, what a GPU
that runs out of memory raises), ``error`` (a ``RuntimeError``) and ``exit<N>`` (the process ends at
once, ``os._exit``, as when its node is lost: the first N times the run reaches that epoch, counted
by marker files in its checkpoint folder; ``exit`` = ``exit1``). The variable reaches Ray
trial and Train worker processes through the environment of a local Ray started by raybal, and a
study's single-worker trials through :func:`carried` (the study's trial function captures the driver's
value, so the trials of an already running Ray see it too).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from raybal.config.constraint import Constraint

if TYPE_CHECKING:
    from raybal.config import RunConfig

ENV = "RAYBAL_FAULT"


@contextmanager
def carried(spec: str | None) -> Iterator[None]:
    """``RAYBAL_FAULT`` set to ``spec`` (the driver's value) for the span of one trial, then restored: a Ray
    worker process keeps the environment it was started with, not the driver's of the moment."""
    old = os.environ.get(ENV)
    if spec == old:
        yield
        return
    if spec is None:  # the driver has none: a value this worker inherited is not the study's
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = spec
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old


def maybe_inject(config: RunConfig, epoch: int, where: Path | None = None) -> None:
    """Inject ``RAYBAL_FAULT``'s fault if it is due at the end of ``epoch`` (``where``: the run's checkpoint
    folder, where ``exit<N>`` counts its exits)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    kind, _, rest = spec.partition(":")
    at, _, condition = rest.partition(":")
    if not at.isdigit() or int(at) != epoch:
        return
    if condition:
        c = Constraint.parse(condition, ENV)
        if not c.holds(config.flatten().get(c.metric)):
            return
    if kind.startswith("exit"):
        if where is None:  # no folder to count in: every time
            os._exit(1)
        times = int(kind[4:]) if kind[4:].isdigit() else 1
        where.mkdir(parents=True, exist_ok=True)
        done = len(list(where.glob(".fault-exit-*")))
        if done < times:
            (where / f".fault-exit-{done}").touch()
            os._exit(1)
        return
    if kind == "oom":
        raise torch.OutOfMemoryError(f"CUDA out of memory (injected by {ENV} at epoch {epoch})")
    raise RuntimeError(f"injected fault ({ENV}) at epoch {epoch}")
