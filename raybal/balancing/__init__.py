"""Balancing-method registry: ``[balance] method = "..."`` -> strategy class."""

from __future__ import annotations

from raybal.balancing.base import BalanceMethod, MethodContext, Vanilla
from raybal.balancing.greedy import GreedyGuided, GreedyParams, GreedyRandom
from raybal.balancing.mu_target import MuTarget, MuTargetParams
from raybal.balancing.ogm import OGMGE, OGMParams
from raybal.registry import Registry

METHODS: Registry[type[BalanceMethod]] = Registry("balancing method")
METHODS.register("vanilla")(Vanilla)
METHODS.register("mu_target", MuTargetParams)(MuTarget)
METHODS.register("greedy_guided", GreedyParams)(GreedyGuided)
METHODS.register("greedy_random", GreedyParams)(GreedyRandom)
METHODS.register("ogm_ge", OGMParams)(OGMGE)

__all__ = ["METHODS", "BalanceMethod", "MethodContext"]
