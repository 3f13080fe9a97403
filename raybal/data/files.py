"""Real-data loaders: the NTIRE MAVOC folder layout and a generic Parquet manifest.

``mavoc_folder`` reads ``root/<MODALITY>/<class>/<prefix>_<id>.<ext>`` (modality folders
matched case-insensitively, e.g. ``EO/3/EO_1234.png`` and ``SAR/3/SAR_1234.png``) or the challenge's
own ``root/<class>/<MODALITY>_<id>.<ext>`` (``train_images/3/EO_1234.png`` beside ``SAR_1234.png``),
and pairs the chips of one sample by ``<id>``. ``manifest`` reads a Parquet file with a label column
and one column per modality holding either a path (image or ``.npy``) or a nested-list array.
Both are lazy: the files are indexed (and one sample read, to fail early on an unreadable format)
when the data loads; every chip is read on demand by the split's DataLoader. ``.tif`` / ``.tiff``
chips are read with rasterio (any number of bands, values as stored: set ``normalize``), other
images with Pillow (scaled into [0, 1]), ``.npy`` arrays as they are.
Every problem (missing folder, empty folder, unpaired chip, unreadable image, missing
column, mismatched shapes) is a :class:`DataError` naming the file, column or row, at load time
where that is cheap, else when the sample is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raybal.config import ConfigError, FrozenMap, knob
from raybal.data.base import DATASETS, DataError, MultiModalData, split_indices
from raybal.data.pipeline import LazySplit, LoaderKnobs

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy"}


@dataclass(frozen=True)
class FileParams(LoaderKnobs):
    task: str = "classification"
    modalities: tuple[str, ...] = ("eo", "sar")
    image_size: int = knob(32, ge=4, le=1024, doc="chips are resized to image_size x image_size")
    channels: FrozenMap = knob({}, ge=1, le=64, doc="modality -> channels (default: eo 3, others 1; GeoTIFF: the "
                               "first that many bands)")
    val_fraction: float = knob(0.15, ge=0.0, lt=0.5)
    test_fraction: float = knob(0.15, gt=0.0, lt=0.5)
    seed: int = knob(0, ge=0)
    check_files: bool = knob(True, doc="open every file's header when the data loads (~0.1 ms a file: a bad file "
                             "fails before anything is written); false: only the first sample's, the rest when read")

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
    if path.suffix.lower() in (".tif", ".tiff"):
        from raybal.data.geotiff import read_bands, resize

        return resize(read_bands(path, range(channels), expect=channels), size)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L").resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not an image ({exc.__class__.__name__})") from None
    return arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None]


def check_file(path: Path) -> None:
    """A cheap look at a chip without decoding it: its image header, .npy header or GeoTIFF header."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        if suffix == ".npy":
            np.load(path, mmap_mode="r", allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            from raybal.data.geotiff import band_count

            band_count(path)
        else:
            from PIL import Image

            with Image.open(path):
                pass
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not an image ({exc.__class__.__name__})") from None


def _split_data(p: FileParams, source: Any, n: int, num_classes: int, names: tuple[str, ...],
                fixed: dict[str, torch.Tensor] | None = None) -> MultiModalData:
    """Lazy splits over ``source`` (samples read on demand, by index)."""
    if fixed is not None:
        parts = [fixed["train"], fixed["val"], fixed["test"]]
    else:
        parts = list(split_indices(n, p.val_fraction, p.test_fraction, p.seed))
    if len(parts[1]) == 0:  # no validation split asked for: validate on test
        parts[1] = parts[2]
    tr, va, te = (LazySplit(source, i) for i in parts)
    return MultiModalData(tr, va, te, p.modality_names(), num_classes, "classification", names)


class FileSource:
    """One sample per key: a chip file per modality (read and resized on demand) and a class id."""

    def __init__(self, files: list[dict[str, Path]], labels: list[int], p: FileParams) -> None:
        self.files, self.labels, self.p = files, labels, p

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> tuple[dict[str, np.ndarray], int]:
        return {m: read_image(f, self.p.n_channels(m), self.p.image_size) for m, f in self.files[i].items()}, \
            self.labels[i]

    def describe(self, i: int) -> str:
        return ", ".join(str(f) for f in self.files[i].values())

    def fingerprint(self) -> str:
        first, last = self.files[0], self.files[-1]
        return f"{len(self)}:" + ":".join(f"{f}:{f.stat().st_mtime_ns}" for d in (first, last) for f in d.values())


def _mod_dirs(root: Path, modalities: tuple[str, ...]) -> dict[str, Path]:
    entries = {d.name.lower(): d for d in root.iterdir() if d.is_dir()}
    out = {}
    for m in modalities:
        if m.lower() not in entries:
            raise DataError(f"{root}: no folder for modality {m!r} (found: {', '.join(sorted(entries)) or 'nothing'})")
        out[m] = entries[m.lower()]
    return out


def _add(files: dict[tuple[str, str], Path], key: tuple[str, str], f: Path) -> None:
    if key in files:
        raise DataError(f"{f}: duplicate sample id {key[1]!r} in class {key[0]!r} (also {files[key]})")
    files[key] = f


def _index_by_modality_folder(root: Path, p: MavocParams) -> dict[str, dict[tuple[str, str], Path]]:
    """``root/<MODALITY>/<class>/<prefix>_<id>.<ext>``."""
    index: dict[str, dict[tuple[str, str], Path]] = {}
    for m, d in _mod_dirs(root, p.modality_names()).items():
        files: dict[tuple[str, str], Path] = {}
        for cls_dir in sorted(x for x in d.iterdir() if x.is_dir()):
            for f in sorted(cls_dir.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    _add(files, (cls_dir.name, _sample_id(f)), f)
        if not files:
            raise DataError(f"{d}: empty folder (expected <class>/<prefix>_<id>.<ext> chips)")
        index[m] = files
    return index


def _index_by_prefix(root: Path, p: MavocParams) -> dict[str, dict[tuple[str, str], Path]]:
    """The challenge's own layout, ``root/<class>/<MODALITY>_<id>.<ext>``: one folder per class holding
    every modality's chips, told apart by their prefix (case-insensitive)."""
    index: dict[str, dict[tuple[str, str], Path]] = {m: {} for m in p.modality_names()}
    prefixes = {m.lower(): m for m in p.modality_names()}
    classes = sorted(x for x in root.iterdir() if x.is_dir())
    for cls_dir in classes:
        for f in sorted(cls_dir.iterdir()):
            if f.is_file() and not f.name.startswith(".") and "_" in f.stem:
                m = prefixes.get(f.stem.rsplit("_", 1)[0].lower())
                if m is not None:
                    _add(index[m], (cls_dir.name, _sample_id(f)), f)
    if not any(index.values()):
        raise DataError(f"{root}: no chips found (expected <MODALITY>/<class>/<MODALITY>_<id>.png or "
                        f"<class>/<MODALITY>_<id>.png for modalities {', '.join(p.modality_names())})")
    for m, files in index.items():
        if not files:
            raise DataError(f"{root}: no {m} chips (<class>/{m.upper()}_<id>.<ext>) in {len(classes)} class folders")
    return index


def _sample_id(path: Path) -> str:
    return path.stem.rsplit("_", 1)[-1]


@DATASETS.register("mavoc_folder", MavocParams)
def build_mavoc(p: MavocParams) -> MultiModalData:
    """NTIRE-21 MAVOC-style EO/SAR image folders, one class folder per label, chips paired by id."""
    root = Path(p.root).expanduser()
    folders = {d.name.lower() for d in root.iterdir() if d.is_dir()}
    by_folder = any(m.lower() in folders for m in p.modality_names())
    index = _index_by_modality_folder(root, p) if by_folder else _index_by_prefix(root, p)
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
    for m in p.modality_names():  # one chip per modality read now: an unreadable format fails before training
        read_image(index[m][keys_sorted[0]], p.n_channels(m), p.image_size)
    files = [{m: index[m][k] for m in p.modality_names()} for k in keys_sorted]
    if p.check_files:
        for sample in files:
            for f in sample.values():
                check_file(f)
    labels = [cls_index[k[0]] for k in keys_sorted]
    return _split_data(p, FileSource(files, labels, p), len(files), len(classes), tuple(classes))


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


class ManifestSource:
    """Rows of a manifest: each cell a path (read on demand) or an inline array."""

    def __init__(self, path: Path, cells: dict[str, list[Any]], base: Path, p: FileParams) -> None:
        self.path, self.cells, self.base, self.p = path, cells, base, p
        self.labels: list[int] = []
        self.expect: dict[str, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(next(iter(self.cells.values())))

    def cell(self, i: int, m: str) -> np.ndarray:
        return _cell_array(self.cells[m][i], self.base, self.p, m, i, m)

    def read_cell_checked(self, i: int, m: str) -> np.ndarray:
        a = self.cell(i, m)
        if self.expect and a.shape != self.expect[m]:
            raise DataError(f"{self.path}: column {m!r}, row {i}: shape {a.shape} differs from row 0's "
                            f"{self.expect[m]}")
        return a

    def read(self, i: int) -> tuple[dict[str, np.ndarray], int]:
        return {m: self.read_cell_checked(i, m) for m in self.cells}, self.labels[i]

    def describe(self, i: int) -> str:
        paths = [str(v) for v in (c[i] for c in self.cells.values()) if isinstance(v, str)]
        return f"{self.path}, row {i}" + (f" ({', '.join(paths)})" if paths else "")

    def fingerprint(self) -> str:
        st = self.path.stat()
        return f"{self.path}:{st.st_size}:{st.st_mtime_ns}"


@DATASETS.register("manifest", ManifestParams)
def build_manifest(p: ManifestParams) -> MultiModalData:
    """Any image set listed in a Parquet manifest: one row per sample, a file column per modality, a label."""
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
    cells = {m: df[m].tolist() for m in p.modality_names()}
    source = ManifestSource(path, cells, base, p)
    source.expect = {m: source.cell(0, m).shape for m in p.modality_names()}  # row 0 fixes each modality's shape
    for m, col in cells.items():  # inline arrays are in memory already: every row's shape is checked now
        for i, v in enumerate(col):
            if isinstance(v, str):
                if p.check_files:
                    check_file(Path(v) if Path(v).is_absolute() else base / v)
            else:
                source.read_cell_checked(i, m)
    labels = df[p.label_column]
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: column {p.label_column!r} must hold integer class ids")
    if int(labels.min()) < 0:
        raise DataError(f"{path}: column {p.label_column!r} has a negative class id")
    source.labels = labels.to_numpy().astype(np.int64).tolist()
    y = torch.tensor(source.labels, dtype=torch.int64)
    fixed = None
    if p.split_column in df.columns:
        sp = df[p.split_column].astype(str).to_numpy()
        bad = sorted(set(sp) - {"train", "val", "test"})
        if bad:
            raise DataError(f"{path}: column {p.split_column!r} has values other than train/val/test: {bad[:3]}")
        fixed = {s: torch.from_numpy(np.flatnonzero(sp == s)) for s in ("train", "val", "test")}
        if len(fixed["train"]) == 0 or len(fixed["test"]) == 0:
            raise DataError(f"{path}: column {p.split_column!r} needs train and test rows")
    ncls = int(y.max()) + 1
    return _split_data(p, source, len(y), ncls, tuple(str(i) for i in range(ncls)), fixed)
