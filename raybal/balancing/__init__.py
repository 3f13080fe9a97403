"""Balancing-method registry: ``[balance] method = "..."`` -> strategy class."""

from __future__ import annotations

from raybal.balancing.base import BalanceMethod, MethodContext, Vanilla
from raybal.balancing.mu_target import MuTarget, MuTargetParams
from raybal.registry import Registry

METHODS: Registry[type[BalanceMethod]] = Registry("balancing method")
METHODS.register("vanilla")(Vanilla)
METHODS.register("mu_target", MuTargetParams)(MuTarget)

__all__ = ["METHODS", "BalanceMethod", "MethodContext"]
