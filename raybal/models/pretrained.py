"""Pretrained backbone weights from a local file (``model.pretrained = { eo = "resnet18.pth" }``).

Weights are never downloaded (DESIGN.md §7): the user points to a ``.pth`` / ``.pt`` / ``.bin``
(a ``torch.save``'d state_dict, read with ``weights_only=True``) or a ``.safetensors`` file in
the torchvision / timm ResNet layout (:mod:`raybal.models.resnet`). Rules:

* a ``state_dict`` / ``model`` wrapper and a DDP ``module.`` prefix are unwrapped;
* the classifier (``fc.*``) is ignored: fusion models have their own heads (so are the layers a
  shallower U-Net encoder does not use);
* the first convolution (``conv1.weight``; ConvNeXt: ``stem.0.weight``) is adapted when the
  modality's channel count differs from the file's, as
  timm's ``adapt_input_conv`` does: 1 channel -> the sum over the file's input channels;
  C channels -> the RGB kernels repeated ceil(C / 3) times, cut to C, scaled by 3 / C (so the
  activations keep their scale; exactly, for a constant image, when C is a multiple of 3);
* any other difference is an error that names the file and the keys: keys the model has and
  the file lacks (BatchNorm's ``num_batches_tracked`` may be absent), keys the file has and the
  model lacks (a ResNet-50 file for a ResNet-18 model), and shape mismatches (another width).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from raybal.config import ConfigError, FrozenMap

SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def read_state_dict(path: Path, key: str) -> dict[str, Tensor]:
    """The tensors of ``path`` (unwrapped, ``module.`` stripped); errors name ``key`` and the file."""
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError(key, f"{path}: expected one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise ConfigError(key, f"file not found: {path}")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable, truncated, not a tensor file, pickled code (weights_only)
        raise ConfigError(key, f"{path}: cannot read weights ({type(exc).__name__}: {str(exc)[:120]})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(key, f"{path}: not a state_dict (a mapping of names to tensors)")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}


def check_files(pretrained: Mapping[str, str], prefix: str, backbone: str, plain: str) -> FrozenMap:
    """``model.pretrained`` validated on load: a standard backbone (not the model's own ``plain`` one),
    known suffixes, and paths made absolute (against the working directory of the process that reads
    the run file), so that Ray workers and Tune trials, which run elsewhere, read the same files."""
    if pretrained and backbone == plain:
        raise ConfigError(prefix, f"needs a resnet or convnext model.backbone (the {plain} has no standard weights)")
    out = {}
    for m, file in pretrained.items():
        if not file.lower().endswith(SUFFIXES):
            raise ConfigError(f"{prefix}.{m}", f"expected a {' / '.join(SUFFIXES)} file, got {file!r}")
        out[m] = str(Path(file).expanduser().absolute())
    return FrozenMap(out)


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """timm's rule for a first convolution trained on ``weight.shape[1]`` channels (module docstring)."""
    c_file = weight.shape[1]
    if in_chans == c_file:
        return weight
    w = weight.float()
    if in_chans == 1:
        out = w.sum(dim=1, keepdim=True)
    else:
        reps = math.ceil(in_chans / c_file)
        out = w.repeat(1, reps, 1, 1)[:, :in_chans] * (c_file / in_chans)
    return out.to(weight.dtype)


def _describe(keys: list[str]) -> str:
    shown = ", ".join(keys[:4])
    return shown + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def load_into(module: nn.Module, path: Path, key: str) -> int:
    """Load ``path`` into ``module`` (a backbone in the torchvision layout); returns the tensor count."""
    ignored = getattr(module, "ignored_prefixes", ("fc.",))
    state = {k: v for k, v in read_state_dict(path, key).items() if not k.startswith(ignored)}
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    arch = getattr(module, "arch", type(module).__name__)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_describe(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_describe(unexpected)})")
        raise ConfigError(key, f"{path} does not match a {arch}: " + "; ".join(parts))
    first = getattr(module, "first_conv", "conv1.weight")
    if first in state:
        state[first] = adapt_input_conv(state[first], own[first].shape[1])
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if wrong:
        raise ConfigError(key, f"{path} does not match this {arch} (another width?): shape of "
                          + _describe(wrong))
    merged = {k: state.get(k, v) for k, v in own.items()}
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in merged.items()})
    return len(state)


def load_pretrained(model: nn.Module, pretrained: Mapping[str, str],
                    prefix: str = "model.pretrained") -> dict[str, int]:
    """Load each modality's file into its backbone (``model.backbone_module(m)``)."""
    loaded = {}
    for m, file in pretrained.items():
        key = f"{prefix}.{m}"
        backbone = model.backbone_module(m)  # type: ignore[operator]
        if backbone is None:
            raise ConfigError(key, f"modality {m!r} has no backbone that takes pretrained weights "
                              "(model.backbone must be a resnet, and the modality an image)")
        loaded[m] = load_into(backbone, Path(file).expanduser(), key)
    return loaded
