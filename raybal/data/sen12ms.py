"""``sen12ms``: SEN12MS (Schmitt et al., ISPRS Annals 2019), read lazily from its own GeoTIFFs.

Layout (as published): ``root/ROIs<id>_<season>/{s1,s2,lc}_<scene>/ROIs<id>_<season>_{s1,s2,lc}_<scene>_p<patch>.tif``,
180,662 triplets of 256 x 256 chips: ``s1`` 2 bands (VV, VH backscatter in dB), ``s2`` 13 bands
(B1-B12 with B8A, reflectance x 10,000), ``lc`` 4 land-cover bands (band 1: IGBP, classes 1-17).
Nothing is loaded whole: the folders are indexed once, each sample read by index.

* Scaling into [0, 1] as the SEN12MS baselines do: S1 dB clipped to [-25, 0], S2 to [0, 10,000].
* ``bands.<modality>``: 0-based band indices to keep (e.g. ``bands = {s2 = [1, 2, 3, 7]}`` for
  B2, B3, B4, B8).
* Labels from the IGBP band: ``labels = "igbp_simplified"`` (default: the 10-class scheme of the
  IEEE GRSS Data Fusion Contest 2020, built from SEN12MS) or ``"igbp"`` (17 classes).
  Classification takes each patch's majority class (Schmitt et al.'s single-label scene task);
  segmentation keeps the per-pixel map (pixels without a class are ignored).
* ``seasons`` / ``scenes`` keep a subset; splits are drawn by **scene** (seeded), so patches of one
  scene never sit on both sides of a split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from raybal.config import ConfigError, FrozenMap, knob
from raybal.config.tasks import IGNORE_INDEX
from raybal.data.base import DATASETS, DataError, MultiModalData, check_band_indices, check_modalities, check_root
from raybal.data.geotiff import read_bands, resize
from raybal.data.pipeline import LazySplit, LoaderKnobs

CHANNELS = {"s1": 2, "s2": 13}
SEASONS = ("spring", "summer", "fall", "winter")
IGBP = ("evergreen_needleleaf_forest", "evergreen_broadleaf_forest", "deciduous_needleleaf_forest",
        "deciduous_broadleaf_forest", "mixed_forest", "closed_shrublands", "open_shrublands", "woody_savannas",
        "savannas", "grasslands", "permanent_wetlands", "croplands", "urban_built_up", "cropland_natural_mosaic",
        "snow_ice", "barren", "water")
SIMPLIFIED = ("forest", "shrubland", "savanna", "grassland", "wetlands", "croplands", "urban_built_up", "snow_ice",
              "barren", "water")
# IGBP class (1-17; 0 = none) -> simplified class id (0-9; -1 = none): DFC 2020's scheme.
IGBP_TO_SIMPLIFIED = np.array([-1, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 5, 7, 8, 9])
_NAME = re.compile(r"^(ROIs\d+_[a-z]+)_s1_(\d+)_p(\d+)\.tif$", re.IGNORECASE)


@dataclass(frozen=True)
class Sen12MSParams(LoaderKnobs):
    root: str = ""
    task: Literal["classification", "segmentation"] = "classification"
    modalities: tuple[str, ...] = ("s1", "s2")
    bands: FrozenMap = knob({}, ge=0, doc="modality -> 0-based band indices to keep (default: all; s1 2, s2 13)")
    labels: Literal["igbp_simplified", "igbp"] = "igbp_simplified"
    seasons: tuple[str, ...] = ()
    scenes: tuple[int, ...] = ()
    image_size: int = knob(0, ge=0, le=256, doc="resize chips to this size (0 = keep 256)")
    val_fraction: float = knob(0.1, gt=0.0, lt=0.5, doc="share of scenes held out for validation")
    test_fraction: float = knob(0.1, gt=0.0, lt=0.5, doc="share of scenes held out for testing")
    seed: int = knob(0, ge=0)
    limit: int = knob(0, ge=0, doc="use at most this many patches (0 = all), for a quick look")

    def modality_names(self) -> tuple[str, ...]:
        return self.modalities

    def cacheable(self) -> bool:
        return False

    def classes(self) -> tuple[str, ...]:
        return SIMPLIFIED if self.labels == "igbp_simplified" else IGBP

    def validate(self, prefix: str) -> None:
        check_root(prefix, self.root, "the SEN12MS folder (with ROIs<id>_<season>/ folders)")
        check_modalities(prefix, self.modalities, CHANNELS, "SEN12MS")
        for i, s in enumerate(self.seasons):
            if s not in SEASONS:
                raise ConfigError(f"{prefix}.seasons[{i}]", f"unknown season {s!r} (one of {', '.join(SEASONS)})")
        check_band_indices(prefix, self.bands, self.modalities, CHANNELS)


@dataclass(frozen=True)
class Triplet:
    scene: str  # "ROIs1158_spring/7"
    s1: Path
    s2: Path
    lc: Path


def index_folder(p: Sen12MSParams) -> list[Triplet]:
    """Every (s1, s2, lc) triplet under ``root`` that the filters keep; an s1 chip without its s2 or lc
    partner is an error naming it."""
    root = Path(p.root).expanduser()
    out: list[Triplet] = []
    for roi in sorted(d for d in root.iterdir() if d.is_dir() and d.name.lower().startswith("rois")):
        season = roi.name.rsplit("_", 1)[-1].lower()
        if p.seasons and season not in p.seasons:
            continue
        for s1_dir in sorted(d for d in roi.iterdir() if d.is_dir() and d.name.startswith("s1_")):
            scene = s1_dir.name[3:]
            if p.scenes and (not scene.isdigit() or int(scene) not in p.scenes):
                continue
            for f in sorted(s1_dir.iterdir()):
                m = _NAME.match(f.name)
                if not m:
                    continue
                s2 = roi / f"s2_{scene}" / f.name.replace("_s1_", "_s2_")
                lc = roi / f"lc_{scene}" / f.name.replace("_s1_", "_lc_")
                for partner in (s2, lc):
                    if not partner.is_file():
                        raise DataError(f"{f}: no partner chip {partner}")
                out.append(Triplet(f"{roi.name}/{scene}", f, s2, lc))
    if not out:
        raise DataError(f"{root}: no SEN12MS chips found (expected ROIs<id>_<season>/s1_<scene>/*_s1_<scene>_p<k>.tif"
                        + (f" in seasons {list(p.seasons)}" if p.seasons else "") + ")")
    return out[:p.limit] if p.limit else out


class Sen12MSSource:
    """Triplets read by index."""

    def __init__(self, triplets: list[Triplet], p: Sen12MSParams) -> None:
        self.triplets = triplets
        self.modalities = p.modalities
        self.bands = {m: ([int(b) for b in p.bands[m]] if m in p.bands else None) for m in p.modalities}
        self.size = p.image_size
        self.simplified = p.labels == "igbp_simplified"
        self.dense = p.task == "segmentation"

    def __len__(self) -> int:
        return len(self.triplets)

    def read(self, i: int) -> tuple[dict[str, np.ndarray], int | np.ndarray]:
        t = self.triplets[i]
        x: dict[str, np.ndarray] = {}
        for m in self.modalities:
            path = t.s1 if m == "s1" else t.s2
            a = read_bands(path, self.bands[m], expect=CHANNELS[m])
            a = np.clip((a + 25.0) / 25.0, 0.0, 1.0) if m == "s1" else np.clip(a / 10_000.0, 0.0, 1.0)
            x[m] = resize(a, self.size)
        shapes = {m: a.shape[1:] for m, a in x.items()}
        if len(set(shapes.values())) > 1:
            raise DataError(f"{t.s1}: chips of one sample differ in size ({shapes})")
        igbp = read_bands(t.lc, [0], expect=1)[0]
        size = next(iter(shapes.values()))
        if not self.size and igbp.shape != tuple(size):
            raise DataError(f"{t.lc}: {igbp.shape[0]}x{igbp.shape[1]} but the image chips are {size[0]}x{size[1]}")
        cls = _classes(igbp, self.simplified)
        if self.dense:  # pixels without a class count nowhere
            mask = resize(cls, self.size, labels=True)
            return x, np.where(mask < 0, IGNORE_INDEX, mask)
        valid = cls[cls >= 0]
        if valid.size == 0:
            raise DataError(f"{t.lc}: no pixel has a land-cover class")
        return x, int(np.bincount(valid.ravel()).argmax())  # the majority class (ties: the lowest id)

    def describe(self, i: int) -> str:
        t = self.triplets[i]
        return f"{t.s1} (with {t.s2.name}, {t.lc.name})"

    def fingerprint(self) -> str:
        return f"{len(self.triplets)}:{self.triplets[0].s1}:{self.triplets[-1].s1}"


def _classes(igbp: np.ndarray, simplified: bool) -> np.ndarray:
    v = np.nan_to_num(igbp).astype(np.int64)
    v = np.where((v >= 1) & (v <= 17), v, 0)
    if simplified:
        return IGBP_TO_SIMPLIFIED[v]
    return v - 1  # -1: no class


@DATASETS.register("sen12ms", Sen12MSParams)
def build_sen12ms(p: Sen12MSParams) -> MultiModalData:
    """SEN12MS: Sentinel-1 SAR and Sentinel-2 optical chips with IGBP land cover, split by scene, read lazily."""
    triplets = index_folder(p)
    scenes = sorted({t.scene for t in triplets})
    if len(scenes) < 3:
        raise DataError(f"{p.root}: {len(scenes)} scene(s) found; splitting by scene needs at least 3")
    g = torch.Generator().manual_seed(p.seed)
    perm = [scenes[i] for i in torch.randperm(len(scenes), generator=g).tolist()]
    n_test = max(1, round(len(scenes) * p.test_fraction))
    n_val = max(1, round(len(scenes) * p.val_fraction))
    part = {s: "test" for s in perm[:n_test]} | {s: "val" for s in perm[n_test:n_test + n_val]}
    source = Sen12MSSource(triplets, p)
    idx = {s: torch.tensor([i for i, t in enumerate(triplets) if part.get(t.scene, "train") == s], dtype=torch.int64)
           for s in ("train", "val", "test")}
    for s, v in idx.items():
        if len(v) == 0:
            raise DataError(f"{p.root}: the {s} split has no patches (scenes: {len(scenes)})")
    train, val, test = (LazySplit(source, idx[s]) for s in ("train", "val", "test"))
    return MultiModalData(train, val, test, p.modalities, len(p.classes()), p.task, p.classes())
