"""Balancing methods: ``[balance] method = "..."`` -> a strategy class.

Each method lives in its own module of this package and registers itself there with
``@METHODS.register(name, Params)``; every module here is imported so its entries exist.
"""

from __future__ import annotations

from raybal.balancing.base import METHODS, BalanceMethod, MethodContext
from raybal.config.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["METHODS", "BalanceMethod", "MethodContext"]
