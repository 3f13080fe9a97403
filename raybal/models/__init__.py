"""Fusion models: name -> architecture (see :mod:`raybal.models.base` for the contract).

Each architecture registers itself where it is defined (``@MODELS.register(name, Params)``);
every module of this package is imported so its entries exist.
"""

from __future__ import annotations

from raybal.config.registry import import_submodules
from raybal.models.base import MODELS, FusionModel, ModelOutput, index_features

import_submodules(__name__, __path__)


def build_model(name: str, params: object, modalities: tuple[str, ...], shapes: dict[str, tuple[int, ...]],
                num_classes: int) -> FusionModel:
    cls = MODELS.get(name).obj
    return cls(params, modalities, shapes, num_classes)


__all__ = ["MODELS", "FusionModel", "ModelOutput", "build_model", "index_features"]
