"""``mcubes``: the MCubeS multimodal material segmentation set (Liang et al., CVPR 2022), the
segmentation benchmark of Singh et al. 2024, read from its own folder layout::

    multimodal_dataset/
      polL_color/<id>.png        RGB (8- or 16-bit)                   -> ``rgb``  (3 channels)
      polL_aolp_sin/<id>.npy     sin of the angle of linear polarisation -> ``aolp`` (2 channels:
      polL_aolp_cos/<id>.npy     cos of it                                    sin, cos)
      polL_dolp/<id>.npy         degree of linear polarisation        -> ``dolp`` (1 channel)
      NIR_warped/<id>.png        near infrared (8- or 16-bit)         -> ``nir``  (1 channel)
      NIR_warped_mask/<id>.png   white = no valid NIR: those pixels are left out of loss and metrics
      GT/<id>.png                material ids 0..19, 255 = unlabelled (left out)
      list_folder/train.txt, val.txt, test.txt   the ids of each split

Every modality is scaled into [0, 1] (AoLP's sin / cos from [-1, 1], DoLP clipped, 8- / 16-bit
images by their range), the ``crop_left`` columns where the NIR camera sees nothing are dropped (the
authors' loaders drop 192), and each image is resized to ``image_size`` x ``image_size`` (bilinear;
labels nearest). Image sets are read lazily, one by one when the pipeline asks for them (by
``data.num_workers`` DataLoader processes), like the other public sets' loaders; ``raybal prepare``
packs them once into record shards. Left-out pixels carry :data:`raybal.config.tasks.IGNORE_INDEX`.
A missing file is named when the data are loaded; an unreadable one, a shape that differs between
modalities or a label outside the 20 materials is a :class:`DataError` naming the file when it is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from raybal.config import knob
from raybal.config.tasks import IGNORE_INDEX
from raybal.data.base import DATASETS, DataError, MultiModalData, check_modalities, check_root
from raybal.data.pipeline import LazySplit, LoaderKnobs

MATERIALS = ("asphalt", "concrete", "metal", "road_marking", "fabric", "glass", "plaster", "plastic", "rubber",
             "sand", "gravel", "ceramic", "cobblestone", "brick", "grass", "wood", "leaf", "water", "human", "sky")
KNOWN = ("rgb", "aolp", "dolp", "nir")
VOID = 255


@dataclass(frozen=True)
class MCubeSParams(LoaderKnobs):
    root: str = ""
    task: Literal["segmentation"] = "segmentation"
    modalities: tuple[str, ...] = KNOWN
    image_size: int = knob(128, ge=16, le=1024, doc="images are resized to image_size x image_size")
    crop_left: int = knob(192, ge=0, le=1024, doc="columns dropped on the left (no NIR there)")
    nir_mask: bool = knob(True, doc="leave pixels without valid NIR (NIR_warped_mask white) out of loss and metrics")
    limit: int = knob(0, ge=0, doc="read at most this many ids per split (0 = all), for a quick look")

    def modality_names(self) -> tuple[str, ...]:
        return self.modalities

    def cacheable(self) -> bool:
        return False  # files: read them every time

    def validate(self, prefix: str) -> None:
        check_root(prefix, self.root, "the MCubeS folder (multimodal_dataset/)")
        check_modalities(prefix, self.modalities, KNOWN, "MCubeS")


def _read_png(path: Path) -> np.ndarray:
    """An 8- or 16-bit PNG as float32 in [0, 1], (H, W) or (H, W, C)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
    if arr.dtype == np.uint16 or arr.dtype == np.int32:  # PIL reads 16-bit grey as I;16 / I
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == bool:
        return arr.astype(np.float32)
    raise DataError(f"{path}: unexpected pixel type {arr.dtype} (expected 8- or 16-bit)")


def _read_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc.__class__.__name__})") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{path}: expected a 2-d float array, got {arr.dtype} {arr.shape}")
    return arr.astype(np.float32)


def _read_labels(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
    if arr.ndim != 2:
        raise DataError(f"{path}: label masks are single-channel, got shape {arr.shape}")
    lab = arr.astype(np.int64)
    bad = (lab >= len(MATERIALS)) & (lab != VOID)
    if bad.any():
        raise DataError(f"{path}: label {int(lab[bad][0])} is not a material id (0..{len(MATERIALS) - 1}, or {VOID})")
    lab[lab == VOID] = IGNORE_INDEX
    return lab


def _modality(root: Path, m: str, sid: str) -> np.ndarray:
    """One modality of one image set as (C, H, W) in [0, 1]."""
    if m == "rgb":
        arr = _read_png(root / "polL_color" / f"{sid}.png")
        if arr.ndim != 3 or arr.shape[2] < 3:
            raise DataError(f"{root / 'polL_color' / f'{sid}.png'}: expected an RGB image, got shape {arr.shape}")
        return arr[..., :3].transpose(2, 0, 1)
    if m == "aolp":
        sin = _read_npy(root / "polL_aolp_sin" / f"{sid}.npy")
        cos = _read_npy(root / "polL_aolp_cos" / f"{sid}.npy")
        if sin.shape != cos.shape:
            raise DataError(f"{root / 'polL_aolp_cos' / f'{sid}.npy'}: shape {cos.shape} differs from the sin file's "
                            f"{sin.shape}")
        return (np.clip(np.stack([sin, cos]), -1.0, 1.0) + 1.0) / 2.0
    if m == "dolp":
        return np.clip(_read_npy(root / "polL_dolp" / f"{sid}.npy"), 0.0, 1.0)[None]
    arr = _read_png(root / "NIR_warped" / f"{sid}.png")
    return (arr.mean(axis=2) if arr.ndim == 3 else arr)[None]


def _resize(arr: np.ndarray, size: int, *, labels: bool = False) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(arr))[None]
    if labels:
        return F.interpolate(t[:, None].double(), size=(size, size), mode="nearest")[0, 0].long()
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def _files(root: Path, m: str, sid: str) -> list[Path]:
    """The files modality ``m`` of image set ``sid`` is read from."""
    return {"rgb": [root / "polL_color" / f"{sid}.png"],
            "aolp": [root / "polL_aolp_sin" / f"{sid}.npy", root / "polL_aolp_cos" / f"{sid}.npy"],
            "dolp": [root / "polL_dolp" / f"{sid}.npy"], "nir": [root / "NIR_warped" / f"{sid}.png"]}[m]


class MCubeSSource:
    """The image sets of one split, each read, cropped and resized when the pipeline asks for it."""

    def __init__(self, p: MCubeSParams, root: Path, ids: list[str]) -> None:
        self.p, self.root, self.ids = p, root, ids

    def __len__(self) -> int:
        return len(self.ids)

    def describe(self, i: int) -> str:
        return f"{self.root} id {self.ids[i]!r}"

    def fingerprint(self) -> str:
        st = (self.root / "GT" / f"{self.ids[0]}.png").stat()
        return f"{self.root}:{len(self.ids)}:{st.st_mtime_ns}"

    def read(self, i: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        p, root, sid = self.p, self.root, self.ids[i]
        gt_path = root / "GT" / f"{sid}.png"
        lab = _read_labels(gt_path)
        h, w = lab.shape
        if p.crop_left >= w:
            raise DataError(f"{gt_path}: crop_left = {p.crop_left} leaves nothing of a {w}-pixel-wide image")
        x = {}
        for m in p.modalities:
            arr = _modality(root, m, sid)
            if arr.shape[1:] != (h, w):
                raise DataError(f"{root} id {sid!r}: {m} is {arr.shape[1]}x{arr.shape[2]} but GT/{sid}.png is {h}x{w}")
            x[m] = _resize(arr[:, :, p.crop_left:], p.image_size).float().numpy()
        if p.nir_mask:
            mask_path = root / "NIR_warped_mask" / f"{sid}.png"
            if mask_path.is_file():
                invalid = _read_png(mask_path)
                invalid = invalid.mean(axis=2) if invalid.ndim == 3 else invalid
                if invalid.shape != (h, w):
                    raise DataError(f"{mask_path}: {invalid.shape[0]}x{invalid.shape[1]} but GT/{sid}.png is {h}x{w}")
                lab[invalid > 0.5] = IGNORE_INDEX
        return x, _resize(lab[:, p.crop_left:], p.image_size, labels=True).numpy()


def _split(p: MCubeSParams, root: Path, split: str) -> LazySplit:
    """A split's ids from its list file, every file they need checked to exist (a stat each, nothing read)."""
    listing = root / "list_folder" / f"{split}.txt"
    if not listing.is_file():
        raise DataError(f"{listing}: file not found (MCubeS lists each split's ids in list_folder/)")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{listing}: lists no ids")
    if p.limit:
        ids = ids[:p.limit]
    for sid in ids:
        for f in [root / "GT" / f"{sid}.png", *(f for m in p.modalities for f in _files(root, m, sid))]:
            if not f.is_file():
                raise DataError(f"{f}: file not found")
    return LazySplit(MCubeSSource(p, root, ids))


@DATASETS.register("mcubes", MCubeSParams)
def build_mcubes(p: MCubeSParams) -> MultiModalData:
    """MCubeS material segmentation (Liang et al. 2022): RGB, polarisation (AoLP, DoLP) and NIR per scene."""
    root = Path(p.root).expanduser()
    train, val, test = (_split(p, root, s) for s in ("train", "val", "test"))
    train.source.read(0)  # one image set read now: an unreadable format fails before training
    return MultiModalData(train, val, test, p.modalities, len(MATERIALS), "segmentation", MATERIALS)
