"""``bigearthnet_mm``: BigEarthNet-MM (Sumbul et al., IEEE GRSM 2021), a multi-label task, read lazily.

Layout (as published, v1.0): ``root/BigEarthNet-v1.0/<S2 patch>/<S2 patch>_B01.tif ... _B12.tif`` (12
single-band GeoTIFFs: 120 x 120 at 10 m, 60 x 60 at 20 m, 20 x 20 at 60 m) with
``<S2 patch>_labels_metadata.json`` (``"labels"``: CORINE Land Cover names, the 43-class nomenclature),
and ``root/BigEarthNet-S1-v1.0/<S1 patch>/<S1 patch>_VV.tif`` / ``_VH.tif`` (120 x 120, dB). The
official multi-modal splits are CSV files of ``<S2 patch>,<S1 patch>`` lines (``train.csv``,
``val.csv``, ``test.csv`` of the BigEarthNet-MM models repository; the patches under seasonal snow,
cloud or shadow are already left out there). 590,326 pairs: nothing is loaded whole.

* Labels: multi-hot over the 19-class nomenclature (Sumbul et al. 2020; the official 43 -> 19 mapping,
  under which a patch may keep no class at all) or the original 43 (``classes = 43``). The task is
  ``multilabel``: binary cross-entropy, mAP / micro and macro F1 (:mod:`raybal.measure.metrics`).
* Bands: ``s2_bands`` (default the ten 10 m and 20 m bands) resampled bilinearly to ``image_size``,
  ``s1_bands`` (VV, VH). Scaling into [0, 1] as for SEN12MS: S2 / 10,000, S1 dB clipped to [-25, 0].
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raybal.config import ConfigError, knob
from raybal.data.base import DATASETS, DataError, MultiModalData, check_modalities, check_root
from raybal.data.geotiff import read_bands, resize
from raybal.data.pipeline import LazySplit, LoaderKnobs

S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
S1_BANDS = ("VV", "VH")
CLC43 = (
    "Continuous urban fabric", "Discontinuous urban fabric", "Industrial or commercial units",
    "Road and rail networks and associated land", "Port areas", "Airports", "Mineral extraction sites",
    "Dump sites", "Construction sites", "Green urban areas", "Sport and leisure facilities",
    "Non-irrigated arable land", "Permanently irrigated land", "Rice fields", "Vineyards",
    "Fruit trees and berry plantations", "Olive groves", "Pastures", "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest", "Natural grassland",
    "Moors and heathland", "Sclerophyllous vegetation", "Transitional woodland/shrub", "Beaches, dunes, sands",
    "Bare rock", "Sparsely vegetated areas", "Burnt areas", "Inland marshes", "Peatbogs", "Salt marshes", "Salines",
    "Intertidal flats", "Water courses", "Water bodies", "Coastal lagoons", "Estuaries", "Sea and ocean")
CLC19 = (
    "Urban fabric", "Industrial or commercial units", "Arable land", "Permanent crops", "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland and sparsely vegetated areas", "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub", "Beaches, dunes, sands", "Inland wetlands", "Coastal wetlands",
    "Inland waters", "Marine waters")
# 43-class index -> 19-class index (the nomenclature's definition); the 43 classes not listed have no
# 19-class counterpart (e.g. port areas, airports, bare rock, burnt areas, intertidal flats).
TO19 = {0: 0, 1: 0, 2: 1, 11: 2, 12: 2, 13: 2, 14: 3, 15: 3, 16: 3, 18: 3, 17: 4, 19: 5, 20: 6, 21: 7, 22: 8, 23: 9,
        24: 10, 25: 11, 31: 11, 26: 12, 27: 12, 28: 13, 29: 14, 33: 15, 34: 15, 35: 16, 36: 16, 38: 17, 39: 17,
        40: 18, 41: 18, 42: 18}
_INDEX43 = {name: i for i, name in enumerate(CLC43)}


def _slug(name: str) -> str:
    """A class name as a column suffix: ``final.test_ap.beaches_dunes_sands``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@dataclass(frozen=True)
class BigEarthNetParams(LoaderKnobs):
    root: str = ""
    task: str = "multilabel"
    modalities: tuple[str, ...] = ("s1", "s2")
    s2_dir: str = "BigEarthNet-v1.0"
    s1_dir: str = "BigEarthNet-S1-v1.0"
    train_csv: str = "train.csv"
    val_csv: str = "val.csv"
    test_csv: str = "test.csv"
    s2_bands: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
    s1_bands: tuple[str, ...] = S1_BANDS
    classes: int = knob(19, ge=19, le=43, doc="19 (the 19-class nomenclature) or 43 (the original CLC classes)")
    image_size: int = knob(120, ge=8, le=120, doc="every band is resampled to image_size x image_size")
    limit: int = knob(0, ge=0, doc="use at most this many pairs per split (0 = all), for a quick look")

    def modality_names(self) -> tuple[str, ...]:
        return self.modalities

    def cacheable(self) -> bool:
        return False

    def class_names(self) -> tuple[str, ...]:
        return tuple(_slug(c) for c in (CLC19 if self.classes == 19 else CLC43))

    def validate(self, prefix: str) -> None:
        if self.task != "multilabel":
            raise ConfigError(f"{prefix}.task", "BigEarthNet-MM is a multilabel task")
        if self.classes not in (19, 43):
            raise ConfigError(f"{prefix}.classes", f"19 or 43, got {self.classes}")
        root = check_root(prefix, self.root, "the folder holding BigEarthNet-v1.0/, BigEarthNet-S1-v1.0/ and the "
                          "split CSVs")
        for key in ("s2_dir", "s1_dir"):
            if not (root / getattr(self, key)).is_dir():
                raise ConfigError(f"{prefix}.{key}", f"folder not found: {root / getattr(self, key)}")
        for key in ("train_csv", "val_csv", "test_csv"):
            if not (root / getattr(self, key)).is_file():
                raise ConfigError(f"{prefix}.{key}", f"file not found: {root / getattr(self, key)} (the official "
                                  "BigEarthNet-MM split lists '<S2 patch>,<S1 patch>' lines)")
        check_modalities(prefix, self.modalities, ("s1", "s2"), "BigEarthNet-MM")
        for key, known in (("s2_bands", S2_BANDS), ("s1_bands", S1_BANDS)):
            bands = getattr(self, key)
            bad = [b for b in bands if b not in known]
            if not bands or bad:
                raise ConfigError(f"{prefix}.{key}", f"unknown band {bad[0] if bad else '(none)'!r} "
                                  f"(known: {', '.join(known)})")


class BigEarthNetSource:
    """(S2 patch, S1 patch) pairs of one split, read by index."""

    def __init__(self, pairs: list[tuple[str, str]], p: BigEarthNetParams, csv: Path) -> None:
        root = Path(p.root).expanduser()
        self.s2_root, self.s1_root, self.csv = root / p.s2_dir, root / p.s1_dir, csv
        self.pairs, self.p = pairs, p

    def __len__(self) -> int:
        return len(self.pairs)

    def _files(self, i: int, m: str) -> list[Path]:
        s2, s1 = self.pairs[i]
        if m == "s2":
            return [self.s2_root / s2 / f"{s2}_{b}.tif" for b in self.p.s2_bands]
        return [self.s1_root / s1 / f"{s1}_{b}.tif" for b in self.p.s1_bands]

    def read(self, i: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        x = {}
        for m in self.p.modalities:
            bands = [resize(read_bands(f, [0], expect=1), self.p.image_size)[0] for f in self._files(i, m)]
            a = np.stack(bands)
            x[m] = np.clip((a + 25.0) / 25.0, 0.0, 1.0) if m == "s1" else np.clip(a / 10_000.0, 0.0, 1.0)
        return x, self.labels(i)

    def labels(self, i: int) -> np.ndarray:
        s2 = self.pairs[i][0]
        path = self.s2_root / s2 / f"{s2}_labels_metadata.json"
        try:
            names = json.loads(path.read_text())["labels"]
        except FileNotFoundError:
            raise DataError(f"{path}: file not found") from None
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}: not a BigEarthNet label file (a JSON object with 'labels')") from None
        y = np.zeros(self.p.classes, np.float32)
        for name in names:
            if name not in _INDEX43:
                raise DataError(f"{path}: unknown label {name!r} (not in the 43-class CORINE nomenclature)")
            k = _INDEX43[name]
            if self.p.classes == 43:
                y[k] = 1.0
            elif k in TO19:
                y[TO19[k]] = 1.0
        return y

    def describe(self, i: int) -> str:
        s2, s1 = self.pairs[i]
        return f"{self.s2_root / s2} (with {self.s1_root / s1}, listed in {self.csv.name})"

    def fingerprint(self) -> str:
        st = self.csv.stat()
        return f"{self.csv}:{st.st_size}:{st.st_mtime_ns}:{len(self.pairs)}"


def read_pairs(csv: Path, limit: int) -> list[tuple[str, str]]:
    pairs = []
    for n, line in enumerate(csv.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = [x.strip() for x in line.split(",")]
        if len(parts) != 2 or not all(parts):
            raise DataError(f"{csv}, line {n}: expected '<S2 patch>,<S1 patch>', got {line!r}")
        pairs.append((parts[0], parts[1]))
        if limit and len(pairs) >= limit:
            break
    if not pairs:
        raise DataError(f"{csv}: lists no patches")
    return pairs


@DATASETS.register("bigearthnet_mm", BigEarthNetParams)
def build_bigearthnet(p: BigEarthNetParams) -> MultiModalData:
    """BigEarthNet-MM: Sentinel-1 and Sentinel-2 patches with multi-label land-cover classes (19 or 43), read lazily."""
    root = Path(p.root).expanduser()
    splits = []
    for key in ("train_csv", "val_csv", "test_csv"):
        csv = root / getattr(p, key)
        source = BigEarthNetSource(read_pairs(csv, p.limit), p, csv)
        for m in p.modalities:  # the first pair's files, now: a wrong folder or band fails before training
            for f in source._files(0, m):
                if not f.is_file():
                    raise DataError(f"{f}: file not found (first patch of {csv.name})")
        source.labels(0)
        splits.append(LazySplit(source))
    return MultiModalData(*splits, modalities=p.modalities, num_classes=p.classes, task="multilabel",
                          class_names=p.class_names())
