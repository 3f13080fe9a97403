"""``colored_digits``: the colored-and-gray digits task of Wu et al. 2022 (§5.1).

Two modalities of the same digit: ``gray`` (1 ch) and ``color`` (3 ch, the digit painted in
a colour). In training the colour is the class's own colour with probability ``shortcut``
(a label shortcut that greedy fusion learns first). Validation is carved out of the
*training* distribution (same shortcut), as in Wu et al., so best-validation selection and
per-epoch MU / conditional utilization are measured where the model was trained; in test the
colour is random (the distribution shift), so a model that leaned on it fails there. Report both.
The digits come from scikit-learn's bundled 8x8 digits (on disk, no download), or from MNIST IDX
files when ``root`` points to a folder holding ``train-images-idx3-ubyte`` /
``train-labels-idx1-ubyte`` (optionally .gz).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raybal.config import knob
from raybal.data.base import DATASETS, DataError, MultiModalData, Split, split_indices
from raybal.data.pipeline import LoaderKnobs

# Ten well separated colours (class c -> PALETTE[c]).
PALETTE = np.array([
    [0.90, 0.10, 0.10], [0.10, 0.70, 0.10], [0.15, 0.25, 0.95], [0.95, 0.85, 0.10], [0.85, 0.15, 0.85],
    [0.10, 0.85, 0.85], [0.95, 0.55, 0.10], [0.55, 0.30, 0.10], [0.60, 0.60, 0.60], [0.50, 0.10, 0.60],
], dtype=np.float32)


@dataclass(frozen=True)
class ColoredDigitsParams(LoaderKnobs):
    task: str = "classification"
    root: str | None = None
    image_size: int = knob(16, ge=8, le=64)
    shortcut: float = knob(1.0, ge=0.0, le=1.0, doc="P(colour = class colour) in training")
    gray_noise: float = knob(0.1, ge=0.0, le=1.0, doc="std of Gaussian noise on the gray digit")
    max_samples: int = knob(0, ge=0, doc="use at most this many digits (0 = all)")
    val_fraction: float = knob(0.2, gt=0.0, lt=0.5)
    test_fraction: float = knob(0.2, gt=0.0, lt=0.5)
    seed: int = knob(0, ge=0)

    def modality_names(self) -> tuple[str, ...]:
        return ("gray", "color")

    def cacheable(self) -> bool:
        return self.root is None

    def validate(self, prefix: str) -> None:
        from raybal.config import ConfigError

        if self.task != "classification":
            raise ConfigError(f"{prefix}.task", "colored_digits is a classification task")
        if self.root is not None and not Path(self.root).expanduser().is_dir():
            raise ConfigError(f"{prefix}.root", f"folder not found: {self.root}")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:  # type: ignore[operator]
        raw = fh.read()
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise DataError(f"{path}: IDX type {dtype_code:#x} not supported (need unsigned bytes)")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file ({data.size} values, header says {int(np.prod(dims))})")
    return data.reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for cand in (root / stem, root / f"{stem}.gz", root / stem.replace("-idx", ".idx")):
        if cand.is_file():
            return cand
    raise DataError(f"{root}: missing MNIST file {stem} (or {stem}.gz)")


def _load_digits(p: ColoredDigitsParams) -> tuple[np.ndarray, np.ndarray]:
    """Gray digits in [0, 1], shape (N, H, W), and labels."""
    if p.root is None:
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)
    root = Path(p.root).expanduser()
    images = _read_idx(_find(root, "train-images-idx3-ubyte"))
    labels = _read_idx(_find(root, "train-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{root}: MNIST images {images.shape} and labels {labels.shape} do not match")
    return (images / 255.0).astype(np.float32), labels.astype(np.int64)


@DATASETS.register("colored_digits", ColoredDigitsParams)
def build_colored_digits(p: ColoredDigitsParams) -> MultiModalData:
    """Colored-and-gray digits (Wu et al. 2022): a colour shortcut in training that greedy fusion learns first."""
    images, labels = _load_digits(p)
    if p.max_samples:
        images, labels = images[:p.max_samples], labels[:p.max_samples]
    rng = np.random.default_rng(p.seed)
    x = torch.from_numpy(images)[:, None]
    x = F.interpolate(x, size=(p.image_size, p.image_size), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.from_numpy(labels)
    tr, va, te = split_indices(len(y), p.val_fraction, p.test_fraction, p.seed)
    splits = {}
    for name, idx in (("train", tr), ("val", va), ("test", te)):
        digit = x[idx]
        lab = y[idx].numpy()
        if name in ("train", "val"):
            # Validation is carved out of the training distribution (the colour still predicts the label),
            # as Wu et al.'s validation is carved from training data; test has random colour (the shift).
            keep = rng.random(len(lab)) < p.shortcut
            col = np.where(keep, lab, rng.integers(0, 10, len(lab)))
        else:
            col = rng.integers(0, 10, len(lab))
        colour = torch.from_numpy(PALETTE[col])[:, :, None, None]
        gray = (digit + p.gray_noise * torch.from_numpy(
            rng.standard_normal(digit.shape).astype(np.float32))).clamp(0, 1)
        splits[name] = Split({"gray": gray, "color": digit * colour}, y[idx])
    return MultiModalData(splits["train"], splits["val"], splits["test"], ("gray", "color"), 10,
                          "classification", tuple(str(i) for i in range(10)))
