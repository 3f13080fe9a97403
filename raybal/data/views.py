"""``digit_views``: a small multi-view **vector** data set built from scikit-learn's bundled
8x8 handwritten digits (1,797 images on disk with scikit-learn; no download).

Each digit is seen through feature extractors of different strength, in the spirit of the UCI
"Multiple Features" digits (Fourier, profile, pixel views of one handwritten digit):

* ``pixels``  (64): the raw intensities;
* ``profile`` (16): the row sums and the column sums (where the ink is, not its shape);
* ``fourier`` (16): magnitudes of the 4x4 lowest 2-D DFT frequencies (shift-invariant: loses where
  the strokes are, keeps their periodicity).

No noise or label information is added: the imbalance between views (``pixels`` dominates a
vanilla fusion) is the data's own. Each feature is scaled to [0, 1] by the training split's
minimum and maximum (the package's input convention; other splits may fall slightly outside).
``views`` picks a subset (at least two); the default fractions give 1,365 training, 216
validation and 216 test samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raybal.config import ConfigError, knob
from raybal.data.base import DATASETS, MultiModalData, Split, split_indices
from raybal.data.pipeline import LoaderKnobs

VIEWS = ("pixels", "profile", "fourier")


def _features(images: np.ndarray) -> dict[str, np.ndarray]:
    """The views of (N, 8, 8) digits in [0, 1]."""
    n = len(images)
    spectrum = np.abs(np.fft.fft2(images))[:, :4, :4]
    return {"pixels": images.reshape(n, -1),
            "profile": np.concatenate([images.sum(axis=2), images.sum(axis=1)], axis=1),
            "fourier": spectrum.reshape(n, -1)}


@dataclass(frozen=True)
class DigitViewsParams(LoaderKnobs):
    task: str = "classification"
    views: tuple[str, ...] = VIEWS
    val_fraction: float = knob(0.12, gt=0.0, lt=0.5)
    test_fraction: float = knob(0.12, gt=0.0, lt=0.5)
    seed: int = knob(0, ge=0)

    def modality_names(self) -> tuple[str, ...]:
        return tuple(self.views)

    def cacheable(self) -> bool:
        return True

    def validate(self, prefix: str) -> None:
        if self.task != "classification":
            raise ConfigError(f"{prefix}.task", "digit_views is a classification task")
        for i, v in enumerate(self.views):
            if v not in VIEWS:
                raise ConfigError(f"{prefix}.views[{i}]", f"unknown view {v!r} (known: {', '.join(VIEWS)})")
        if len(set(self.views)) != len(self.views):
            raise ConfigError(f"{prefix}.views", "lists a view twice")
        if len(self.views) < 2:
            raise ConfigError(f"{prefix}.views", "a fusion needs at least two views")


@DATASETS.register("digit_views", DigitViewsParams)
def build_digit_views(p: DigitViewsParams) -> MultiModalData:
    """Digit views: three vector views (pixels, profile, Fourier) of the same handwritten digit."""
    from sklearn.datasets import load_digits

    d = load_digits()
    feats = _features((d.images / 16.0).astype(np.float64))
    y = torch.from_numpy(d.target.astype(np.int64))
    tr, va, te = split_indices(len(y), p.val_fraction, p.test_fraction, p.seed)
    tr_np = tr.numpy()
    views: dict[str, torch.Tensor] = {}
    for v in p.views:
        f = feats[v]
        lo, hi = f[tr_np].min(axis=0), f[tr_np].max(axis=0)
        views[v] = torch.from_numpy(((f - lo) / np.where(hi - lo > 1e-8, hi - lo, 1.0)).astype(np.float32))
    splits = {name: Split({v: t[idx] for v, t in views.items()}, y[idx])
              for name, idx in (("train", tr), ("val", va), ("test", te))}
    return MultiModalData(splits["train"], splits["val"], splits["test"], tuple(p.views), 10,
                          "classification", tuple(str(i) for i in range(10)))
