"""``so2sat``: So2Sat LCZ42 (Zhu et al., IEEE GRSM 2020), read lazily from its own HDF5 files.

Layout (as published, version 2/3): a folder with ``training.h5``, ``validation.h5`` and
``testing.h5``, each holding ``sen1`` (N, 32, 32, 8: Sentinel-1 real / imaginary parts of VH and VV,
their intensities and the Lee-filtered covariance terms), ``sen2`` (N, 32, 32, 10: Sentinel-2 bands
B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12 as reflectance) and ``label`` (N, 17 one-hot local climate
zones). 400,673 patches in all: nothing is loaded whole. Each sample is read by index; the files are
opened once per process on first read (h5py handles do not survive a fork, so a DataLoader worker
opens its own).

Modalities ``sen1`` and ``sen2`` (the files' names), with ``bands.<modality>`` selecting channels by
index. The values are the files' own (S1 is not in [0, 1]): set ``normalize = true`` (docs/data.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raybal.config import ConfigError, FrozenMap, knob
from raybal.data.base import DATASETS, DataError, MultiModalData, check_band_indices, check_modalities, check_root
from raybal.data.pipeline import LazySplit, LoaderKnobs

LCZ = ("compact_high_rise", "compact_mid_rise", "compact_low_rise", "open_high_rise", "open_mid_rise",
       "open_low_rise", "lightweight_low_rise", "large_low_rise", "sparsely_built", "heavy_industry",
       "dense_trees", "scattered_trees", "bush_scrub", "low_plants", "bare_rock_or_paved", "bare_soil_or_sand",
       "water")
CHANNELS = {"sen1": 8, "sen2": 10}


@dataclass(frozen=True)
class So2SatParams(LoaderKnobs):
    root: str = ""
    task: str = "classification"
    modalities: tuple[str, ...] = ("sen1", "sen2")
    bands: FrozenMap = knob({}, ge=0, doc="modality -> channel indices to keep (default: all; sen1 8, sen2 10)")
    train_file: str = "training.h5"
    val_file: str = "validation.h5"
    test_file: str = "testing.h5"
    limit: int = knob(0, ge=0, doc="use at most this many patches per split (0 = all), for a quick look")

    def modality_names(self) -> tuple[str, ...]:
        return self.modalities

    def cacheable(self) -> bool:
        return False  # files: read on demand

    def validate(self, prefix: str) -> None:
        if self.task != "classification":
            raise ConfigError(f"{prefix}.task", "So2Sat LCZ42 is a classification task (17 local climate zones)")
        root = check_root(prefix, self.root, "the So2Sat LCZ42 folder (with training.h5, ...)")
        for key in ("train_file", "val_file", "test_file"):
            if not (root / getattr(self, key)).is_file():
                raise ConfigError(f"{prefix}.{key}", f"file not found: {root / getattr(self, key)}")
        check_modalities(prefix, self.modalities, CHANNELS, "So2Sat")
        check_band_indices(prefix, self.bands, self.modalities, CHANNELS)


class H5Source:
    """Samples of one So2Sat file, read by index; the handle is opened per process."""

    def __init__(self, path: Path, modalities: tuple[str, ...], bands: dict[str, list[int] | None], limit: int) -> None:
        self.path, self.modalities, self.bands = path, modalities, bands
        self._h5: Any = None
        self._pid = -1
        f = self._file()
        for key in ("label", *modalities):
            if key not in f:
                raise DataError(f"{path}: no dataset {key!r} (found: {', '.join(sorted(f.keys()))})")
        n = f["label"].shape[0]
        if f["label"].ndim != 2 or f["label"].shape[1] != len(LCZ):
            raise DataError(f"{path}: 'label' has shape {f['label'].shape}, expected (N, {len(LCZ)}) one-hot")
        for m in modalities:
            shape = f[m].shape
            if len(shape) != 4 or shape[0] != n or shape[3] != CHANNELS[m]:
                raise DataError(f"{path}: {m!r} has shape {shape}, expected ({n}, H, W, {CHANNELS[m]})")
            if not np.issubdtype(f[m].dtype, np.floating):
                raise DataError(f"{path}: {m!r} holds {f[m].dtype}, expected floating point")
        self.n = min(n, limit) if limit else n

    def _file(self) -> Any:
        if self._h5 is None or self._pid != os.getpid():
            import h5py

            try:
                self._h5 = h5py.File(self.path, "r")
            except OSError as exc:
                raise DataError(f"{self.path}: not a readable HDF5 file ({str(exc).splitlines()[0]})") from None
            self._pid = os.getpid()
        return self._h5

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_h5": None, "_pid": -1}

    def __len__(self) -> int:
        return self.n

    def read(self, i: int) -> tuple[dict[str, np.ndarray], int]:
        f = self._file()
        x = {}
        for m in self.modalities:
            a = np.asarray(f[m][i], dtype=np.float32).transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
            sel = self.bands.get(m)
            x[m] = a[sel] if sel is not None else a
        onehot = np.asarray(f["label"][i])
        if onehot.sum() != 1:
            raise DataError(f"{self.describe(i)}: label is not one-hot ({onehot.tolist()})")
        return x, int(onehot.argmax())

    def describe(self, i: int) -> str:
        return f"{self.path} sample {i}"

    def fingerprint(self) -> str:
        st = self.path.stat()
        return f"{self.path}:{st.st_size}:{st.st_mtime_ns}:{self.n}"


@DATASETS.register("so2sat", So2SatParams)
def build_so2sat(p: So2SatParams) -> MultiModalData:
    """So2Sat LCZ42: Sentinel-1 and Sentinel-2 patches labelled with 17 local climate zones, read from HDF5."""
    root = Path(p.root).expanduser()
    bands = {m: ([int(b) for b in p.bands[m]] if m in p.bands else None) for m in p.modalities}
    splits = [LazySplit(H5Source(root / f, p.modalities, bands, p.limit)) for f in (p.train_file, p.val_file,
                                                                                     p.test_file)]
    return MultiModalData(*splits, modalities=p.modalities, num_classes=len(LCZ), task="classification",
                          class_names=LCZ)
