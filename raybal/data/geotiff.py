"""Reading GeoTIFF chips (rasterio, whose wheels bundle GDAL): one place for the checks every
GeoTIFF loader needs, so a missing band or an unreadable file is one line naming the file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raybal.data.pipeline import DataError

_ENV: dict[int, object] = {}  # pid -> the rasterio.Env this process reads in


def _env() -> None:
    """Enter one GDAL environment per process and keep it: ``rasterio.open`` outside an Env builds and
    tears one down on every call, and GDAL lists a chip's folder on open unless told not to (SEN12MS
    folders hold hundreds of chips): without this, every chip opened would pay for both."""
    import os

    pid = os.getpid()
    if pid not in _ENV:
        import rasterio

        env = rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", GDAL_NUM_THREADS="1")
        env.__enter__()
        _ENV[pid] = env


def band_count(path: Path) -> int:
    import rasterio

    _env()
    try:
        with rasterio.open(path) as src:
            return int(src.count)
    except rasterio.errors.RasterioIOError as exc:
        raise DataError(f"{path}: not a readable GeoTIFF ({str(exc).splitlines()[0]})") from None


def read_bands(path: Path, bands: Sequence[int] | None = None, *, expect: int | None = None) -> np.ndarray:
    """Bands of one GeoTIFF as float32 (C, H, W). ``bands``: 0-based indices (None: all); ``expect``:
    the band count the format has (a file with fewer is refused, naming it)."""
    import rasterio

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    _env()
    try:
        with rasterio.open(path) as src:
            if expect is not None and src.count < expect:
                raise DataError(f"{path}: {src.count} band(s), expected {expect}")
            want = list(range(src.count)) if bands is None else list(bands)
            missing = [b for b in want if b >= src.count]
            if missing:
                raise DataError(f"{path}: no band {missing[0] + 1} (the file has {src.count})")
            arr = src.read([b + 1 for b in want])
    except rasterio.errors.RasterioIOError as exc:
        raise DataError(f"{path}: not a readable GeoTIFF ({str(exc).splitlines()[0]})") from None
    return arr.astype(np.float32, copy=False)


def resize(arr: np.ndarray, size: int, *, labels: bool = False) -> np.ndarray:
    """(C, H, W) images bilinearly (antialiased), (H, W) labels by nearest neighbour; size 0 keeps them."""
    if not size or arr.shape[-1] == size and arr.shape[-2] == size:
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if labels:
        return F.interpolate(t[None, None].double(), size=(size, size), mode="nearest")[0, 0].long().numpy()
    return F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0].numpy()
