"""Corruptions applied to one modality at evaluation time: the registry and the built-ins.

Every module of this package is imported so the corruptions defined in it register
themselves (see :mod:`raybal.noise.base`).
"""

from __future__ import annotations

from raybal.config.registry import import_submodules
from raybal.noise.base import (
    CORRUPTIONS,
    Corrupter,
    CorruptionError,
    CorruptionFn,
    corrupter,
    default_levels,
    is_severity,
    joint_corrupter,
    joint_steps,
    needs_means,
    nonzero_levels,
)

import_submodules(__name__, __path__)

__all__ = ["CORRUPTIONS", "Corrupter", "CorruptionError", "CorruptionFn", "corrupter", "default_levels", "is_severity",
           "joint_corrupter", "joint_steps", "needs_means", "nonzero_levels"]
