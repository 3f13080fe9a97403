"""Model registry: name -> fusion architecture (see ``raybal.models.base`` for the contract)."""

from __future__ import annotations

from raybal.models.base import FusionModel, ModelOutput, index_features
from raybal.models.fusion import EncoderParams, LateFusion, LateParams, MMTMFusion, MMTMParams, SumFusion
from raybal.models.unet import UNetFusion, UNetParams
from raybal.registry import Registry

MODELS: Registry[type[FusionModel]] = Registry("model")
MODELS.register("late", LateParams)(LateFusion)
MODELS.register("sum", EncoderParams)(SumFusion)
MODELS.register("mmtm", MMTMParams)(MMTMFusion)
MODELS.register("unet", UNetParams)(UNetFusion)


def build_model(name: str, params: object, modalities: tuple[str, ...], shapes: dict[str, tuple[int, ...]],
                num_classes: int) -> FusionModel:
    cls = MODELS.get(name).obj
    return cls(params, modalities, shapes, num_classes)


__all__ = ["MODELS", "FusionModel", "ModelOutput", "build_model", "index_features"]
