"""Real-data loaders: the NTIRE MAVOC folder layout and a generic Parquet manifest.

``mavoc_folder`` reads ``root/<MODALITY>/<class>/<prefix>_<id>.<ext>`` (modality folders
matched case-insensitively, e.g. ``EO/3/EO_1234.png`` and ``SAR/3/SAR_1234.png``) and pairs
the chips of one sample by ``<id>``. ``manifest`` reads a Parquet file with a label column
and one column per modality holding either a path (image or ``.npy``) or a nested-list array.
Every problem (missing folder, empty folder, unpaired chip, unreadable image, missing
column, mismatched shapes) is a :class:`DataError` naming the file, column or row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raybal.config import ConfigError, FrozenMap, knob
from raybal.data.base import DATASETS, DataError, MultiModalData, Split, split_indices

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy"}


@dataclass(frozen=True)
class FileParams:
    task: str = "classification"
    modalities: tuple[str, ...] = ("eo", "sar")
    image_size: int = knob(32, ge=4, le=1024, doc="chips are resized to image_size x image_size")
    channels: FrozenMap = knob({}, ge=1, le=4, doc="modality -> channels (default: eo 3, others 1)")
    val_fraction: float = knob(0.15, ge=0.0, lt=0.5)
    test_fraction: float = knob(0.15, gt=0.0, lt=0.5)
    seed: int = knob(0, ge=0)

    def modality_names(self) -> tuple[str, ...]:
        return self.modalities

    def cacheable(self) -> bool:
        return False  # files may change under the same config: read them every time

    def n_channels(self, m: str) -> int:
        return int(self.channels.get(m, 3 if m == "eo" else 1))

    def validate(self, prefix: str) -> None:
        if self.task != "classification":
            raise ConfigError(f"{prefix}.task", "file loaders read classification data")
        if len(self.modalities) < 2 or len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"{prefix}.modalities", "needs two or more distinct modalities")


def _require_path(key: str, value: str, what: str, *, folder: bool) -> None:
    if not value:
        raise ConfigError(key, f"required: {what}")
    p = Path(value).expanduser()
    if not (p.is_dir() if folder else p.is_file()):
        raise ConfigError(key, f"{'folder' if folder else 'file'} not found: {value}")


@dataclass(frozen=True)
class MavocParams(FileParams):
    root: str = ""

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        _require_path(f"{prefix}.root", self.root, "the MAVOC folder", folder=True)


@dataclass(frozen=True)
class ManifestParams(FileParams):
    path: str = ""
    label_column: str = "label"
    split_column: str = "split"

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        _require_path(f"{prefix}.path", self.path, "the manifest Parquet file", folder=False)


def read_image(path: Path, channels: int, size: int) -> np.ndarray:
    """One chip as float32 (C, size, size) in [0, 1]."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False).astype(np.float32)
        except Exception as exc:
            raise DataError(f"{path}: not a readable .npy array ({exc})") from None
        if arr.ndim == 2:
            arr = arr[None]
        t = torch.from_numpy(arr)[None]
        return torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0].numpy()
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L").resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not an image ({exc.__class__.__name__})") from None
    return arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None]


def _split_data(p: FileParams, x: dict[str, torch.Tensor], y: torch.Tensor, names: tuple[str, ...],
                fixed: dict[str, torch.Tensor] | None = None) -> MultiModalData:
    full = Split(x, y)
    if fixed is not None:
        parts = [fixed["train"], fixed["val"], fixed["test"]]
    else:
        parts = list(split_indices(len(y), p.val_fraction, p.test_fraction, p.seed))
    if len(parts[1]) == 0:  # no validation split asked for: validate on test
        parts[1] = parts[2]
    num_classes = int(y.max()) + 1
    tr, va, te = (full.subset(i) for i in parts)
    return MultiModalData(tr, va, te, p.modality_names(), num_classes, "classification", names)


def _mod_dirs(root: Path, modalities: tuple[str, ...]) -> dict[str, Path]:
    entries = {d.name.lower(): d for d in root.iterdir() if d.is_dir()}
    out = {}
    for m in modalities:
        if m.lower() not in entries:
            raise DataError(f"{root}: no folder for modality {m!r} (found: {', '.join(sorted(entries)) or 'nothing'})")
        out[m] = entries[m.lower()]
    return out


def _sample_id(path: Path) -> str:
    return path.stem.rsplit("_", 1)[-1]


@DATASETS.register("mavoc_folder", MavocParams)
def build_mavoc(p: MavocParams) -> MultiModalData:
    root = Path(p.root).expanduser()
    dirs = _mod_dirs(root, p.modality_names())
    index: dict[str, dict[tuple[str, str], Path]] = {}
    for m, d in dirs.items():
        files: dict[tuple[str, str], Path] = {}
        for cls_dir in sorted(x for x in d.iterdir() if x.is_dir()):
            for f in sorted(cls_dir.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    key = (cls_dir.name, _sample_id(f))
                    if key in files:
                        raise DataError(f"{f}: duplicate sample id {key[1]!r} in class {key[0]!r} (also {files[key]})")
                    files[key] = f
        if not files:
            raise DataError(f"{d}: empty folder (expected <class>/<prefix>_<id>.<ext> chips)")
        index[m] = files
    first = p.modality_names()[0]
    keys = set(index[first])
    for m in p.modality_names()[1:]:
        for k in sorted(set(index[m]) ^ keys):
            f = index[m].get(k) or index[first][k]
            other = first if k in index[m] else m
            raise DataError(f"{f}: unpaired chip (no {other} chip with id {k[1]!r} in class {k[0]!r})")
    keys_sorted = sorted(keys, key=lambda k: (k[0], k[1]))
    classes = sorted({k[0] for k in keys_sorted}, key=lambda c: (len(c), c))
    cls_index = {c: i for i, c in enumerate(classes)}
    x = {m: torch.from_numpy(np.stack([read_image(index[m][k], p.n_channels(m), p.image_size) for k in keys_sorted]))
         for m in p.modality_names()}
    y = torch.tensor([cls_index[k[0]] for k in keys_sorted], dtype=torch.int64)
    return _split_data(p, x, y, tuple(classes))


def _cell_array(value: Any, base: Path, p: FileParams, m: str, row: int, col: str) -> np.ndarray:
    if isinstance(value, str):
        path = Path(value)
        return read_image(path if path.is_absolute() else base / path, p.n_channels(m), p.image_size)
    if value is None:
        raise DataError(f"column {col!r}, row {row}: missing value")
    try:
        arr = np.asarray(_to_nested(value), dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError(f"column {col!r}, row {row}: not a path or a numeric array") from None
    return arr


def _to_nested(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_to_nested(v) for v in value]
    return value


@DATASETS.register("manifest", ManifestParams)
def build_manifest(p: ManifestParams) -> MultiModalData:
    import pandas as pd

    path = Path(p.path).expanduser()
    try:
        df = pd.read_parquet(path)
    except Exception as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc.__class__.__name__})") from None
    if len(df) == 0:
        raise DataError(f"{path}: the manifest has no rows")
    for col in (p.label_column, *p.modality_names()):
        if col not in df.columns:
            raise DataError(f"{path}: missing column {col!r} (columns: {', '.join(map(str, df.columns))})")
    base = path.parent
    x = {}
    for m in p.modality_names():
        arrays = [_cell_array(v, base, p, m, i, m) for i, v in enumerate(df[m].tolist())]
        shape0 = arrays[0].shape
        for i, a in enumerate(arrays):
            if a.shape != shape0:
                raise DataError(f"{path}: column {m!r}, row {i}: shape {a.shape} differs from row 0's {shape0}")
        x[m] = torch.from_numpy(np.stack(arrays))
    labels = df[p.label_column]
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: column {p.label_column!r} must hold integer class ids")
    if int(labels.min()) < 0:
        raise DataError(f"{path}: column {p.label_column!r} has a negative class id")
    y = torch.tensor(labels.to_numpy(), dtype=torch.int64)
    fixed = None
    if p.split_column in df.columns:
        sp = df[p.split_column].astype(str).to_numpy()
        bad = sorted(set(sp) - {"train", "val", "test"})
        if bad:
            raise DataError(f"{path}: column {p.split_column!r} has values other than train/val/test: {bad[:3]}")
        fixed = {s: torch.from_numpy(np.flatnonzero(sp == s)) for s in ("train", "val", "test")}
        if len(fixed["train"]) == 0 or len(fixed["test"]) == 0:
            raise DataError(f"{path}: column {p.split_column!r} needs train and test rows")
    return _split_data(p, x, y, tuple(str(i) for i in range(int(y.max()) + 1)), fixed)
