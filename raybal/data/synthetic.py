"""``synthetic_aerial``: seeded EO + SAR (+ optional IR) chips rendered from one shared scene.

Each sample is one aerial scene: a smooth terrain field and one object (10 shape classes,
random position, size and rotation). Every modality is a different sensor looking at the
same scene, as on NTIRE-21 MAVOC (Singh et al. 2023 use it as their EO/SAR benchmark):

* **EO** (3 ch): terrain colours plus the object painted in a class-typical colour with
  shading. Colour and shape both identify the class, so EO alone is nearly perfect and it
  is learned first: ordinary fusion training leans on it (the greedy behaviour that
  Wu et al. 2022 describe).
* **SAR** (1 ch): the object's backscatter (shape only, no colour) over terrain clutter,
  multiplied by fully developed speckle (Gamma with ``sar_looks`` looks). Clearly weaker
  alone, but informative.
* **IR** (1 ch, optional via ``extra_modalities``): a blurred thermal blob whose
  temperature depends weakly on the class.

``informativeness.<modality>`` scales the object-to-background contrast of that sensor
(1 = the calibrated default, 0 = the modality carries no object at all).

``profile`` names a set of knob values (:data:`PROFILES`; a knob written in the run file wins):

* ``default``: the knobs' own defaults (EO alone ~100 %, SAR alone ~76 %, vanilla fusion ~94 % on EO);
* ``ntire21``: calibrated, inputs only, to the NTIRE-21 figures of DESIGN.md §1 (EO alone 97.5 %,
  SAR alone 84.9 %) before any balancing method ran on it: class colours closer together (hue
  jitter 0.02), EO trained under stronger sensor noise (0.2) and SAR with 4 looks. Its measured
  calibration table, and the figures it cannot reach, are in docs/flagship.md.

The segmentation variant (``task = "segmentation"``) renders 1-3 objects per scene and
returns per-pixel masks (0 = background, 1..10 = the object classes). Per pixel, SAR's bright
returns alone separate objects from terrain, so with the classification defaults a vanilla U-Net
leans on EO much less than a vanilla classifier does. The segmentation defaults make SAR a
single-look image (``sar_looks = 1``) with a 3-pixel resolution cell (``sar_resolution = 3``), as
real SAR is coarser and noisier per pixel than EO: EO alone is clearly better than SAR alone and
vanilla fusion leans on EO (``benchmarks/calibrate_aerial.py --task segmentation``).
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from raybal.config import ConfigError, FrozenMap, knob
from raybal.data.base import DATASETS
from raybal.data.pipeline import LoaderKnobs
from raybal.data.store import Chunked

CLASS_NAMES = ("disk", "square", "triangle", "ring", "plus", "bar", "ell", "diamond", "dumbbell", "frame")
KNOWN_EXTRA = ("ir",)


PROFILES: dict[str, dict[str, object]] = {
    "default": {},
    "ntire21": {"eo_color_jitter": 0.02, "eo_sensor_noise": 0.2, "sar_looks": 4.0},
}


@dataclass(frozen=True)
class SyntheticAerialParams(LoaderKnobs):
    PROFILES: ClassVar[dict[str, dict[str, object]]] = PROFILES

    profile: Literal["default", "ntire21"] = knob("default", doc="a named set of knob values (a knob set in the "
                                                  "file wins): ntire21 = calibrated to the NTIRE-21 figures "
                                                  "(docs/flagship.md)")
    task: Literal["classification", "segmentation"] = "classification"
    n_train: int = knob(4000, ge=10)
    n_val: int = knob(1000, ge=10)
    n_test: int = knob(1000, ge=10)
    image_size: int = knob(32, ge=16, le=256)
    seed: int = knob(0, ge=0)
    extra_modalities: tuple[str, ...] = ()
    informativeness: FrozenMap = knob({}, ge=0.0, le=4.0)
    sar_looks: float | None = knob(None, gt=0.0, doc="speckle looks; fewer = noisier SAR; unset = 2 (classification), "
                                   "1 (segmentation: single-look; the module docstring says why)")
    eo_sensor_noise: float = knob(0.1, ge=0.0, le=0.5, doc="std of EO sensor noise in training data")
    eo_color_jitter: float = knob(0.01, ge=0.0, le=0.5, doc="hue jitter of the class colour")
    object_scale: tuple[float, ...] = knob((0.28, 0.4), gt=0.0, le=0.6, doc="object radius range / image size")
    sar_distractors: int = knob(0, ge=0, le=8, doc="bright clutter scatterers per SAR scene that are no "
                                       "object (rocks, buildings))")
    sar_resolution: int | None = knob(None, ge=1, le=9, doc="SAR ground resolution in pixels (box blur of the "
                                      "backscatter before speckle); unset = 1 (classification), 3 (segmentation)")

    def modality_names(self) -> tuple[str, ...]:
        return ("eo", "sar", *self.extra_modalities)

    def cacheable(self) -> bool:
        return True

    def validate(self, prefix: str) -> None:
        for i, m in enumerate(self.extra_modalities):
            if m not in KNOWN_EXTRA:
                raise ConfigError(f"{prefix}.extra_modalities[{i}]",
                                  f"unknown modality {m!r} (known: {', '.join(KNOWN_EXTRA)})")
        if len(set(self.extra_modalities)) != len(self.extra_modalities):
            raise ConfigError(f"{prefix}.extra_modalities", "lists a modality twice")
        for m in self.informativeness:
            if m not in self.modality_names():
                raise ConfigError(f"{prefix}.informativeness.{m}",
                                  f"unknown modality {m!r} (data set has: {', '.join(self.modality_names())})")
        if len(self.object_scale) != 2 or self.object_scale[0] > self.object_scale[1]:
            raise ConfigError(f"{prefix}.object_scale", "must be [low, high] with low <= high")


def _shape_masks(label: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Binary masks of the 10 classes in object coordinates (u, v), radius 1 = object size."""
    r = np.sqrt(u ** 2 + v ** 2)
    au, av = np.abs(u), np.abs(v)
    shapes = [
        r < 0.85,                                                   # disk
        np.maximum(au, av) < 0.72,                                  # square
        (v > -0.55) & (v < 0.8 - 1.6 * au),                        # triangle
        (r > 0.5) & (r < 0.95),                                     # ring
        ((au < 0.28) & (av < 0.95)) | ((av < 0.28) & (au < 0.95)),  # plus
        (au < 0.95) & (av < 0.32),                                  # bar
        ((u > -0.8) & (u < -0.25) & (av < 0.9)) | ((v > 0.35) & (v < 0.9) & (au < 0.9)),  # ell
        (au + av) < 0.95,                                           # diamond
        (np.sqrt((u - 0.5) ** 2 + v ** 2) < 0.42) | (np.sqrt((u + 0.5) ** 2 + v ** 2) < 0.42)
        | ((au < 0.5) & (av < 0.12)),                               # dumbbell
        (np.maximum(au, av) < 0.9) & (np.maximum(au, av) > 0.5),   # frame
    ]
    out = np.zeros_like(u, dtype=bool)
    for c, m in enumerate(shapes):
        sel = label == c
        out[sel] = m[sel]
    return out


def _terrain(rng: np.random.Generator, n: int, size: int, cells: int = 5) -> np.ndarray:
    """Smooth random fields in [0, 1] of shape (n, size, size): upsampled coarse noise."""
    coarse = torch.from_numpy(rng.random((n, 1, cells, cells), dtype=np.float32))
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[:, 0].numpy()
    lo = field.min(axis=(1, 2), keepdims=True)
    hi = field.max(axis=(1, 2), keepdims=True)
    return (field - lo) / np.maximum(hi - lo, 1e-6)


def _class_colors(jitter: float, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    hues = (labels / 10.0 + rng.normal(0.0, jitter, size=labels.shape)) % 1.0
    sat = rng.uniform(0.75, 1.0, size=labels.shape)
    val = rng.uniform(0.75, 1.0, size=labels.shape)
    return np.array([colorsys.hsv_to_rgb(h, s, v) for h, s, v in zip(hues, sat, val)], dtype=np.float32).reshape(-1, 3)


def _render_objects(rng: np.random.Generator, labels: np.ndarray, size: int, scale: tuple[float, float],
                    supersample: int = 2) -> np.ndarray:
    """Anti-aliased coverage in [0, 1], shape (n, size, size), of one object per label."""
    n = len(labels)
    hi = size * supersample
    coords = (np.arange(hi, dtype=np.float32) + 0.5) / supersample
    X, Y = np.meshgrid(coords, coords, indexing="xy")
    radius = rng.uniform(scale[0], scale[1], size=n).astype(np.float32) * size
    margin = radius * 0.7
    cx = rng.uniform(margin, size - margin).astype(np.float32)
    cy = rng.uniform(margin, size - margin).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi, size=n).astype(np.float32)
    dx = X[None] - cx[:, None, None]
    dy = Y[None] - cy[:, None, None]
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u = (dx * c + dy * s) / radius[:, None, None]
    v = (-dx * s + dy * c) / radius[:, None, None]
    mask = _shape_masks(labels[:, None, None].repeat(hi, 1).repeat(hi, 2), u, v).astype(np.float32)
    return mask.reshape(n, size, supersample, size, supersample).mean(axis=(2, 4))


# Pixels rendered at once (4,096 chips of 32 x 32): bounds peak memory whatever the split's size. Chunk 0
# draws from the split's own stream (seed), chunk k > 0 from its own (seed, k): a split of at most one
# chunk is rendered exactly as in one piece.
CHUNK_PIXELS = 4096 * 32 * 32


def chunk_size(image_size: int) -> int:
    return max(64, CHUNK_PIXELS // (image_size * image_size))


def render_chunks(p: SyntheticAerialParams, n: int,
                  seed: int) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    step = chunk_size(p.image_size)
    for k, start in enumerate(range(0, n, step)):
        rng = np.random.default_rng(seed if k == 0 else [seed, k])
        yield _render(p, min(step, n - start), rng)


def _render(p: SyntheticAerialParams, n: int, rng: np.random.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    size = p.image_size
    info = {m: float(p.informativeness.get(m, 1.0)) for m in p.modality_names()}
    k_objects = 1 if p.task == "classification" else 3
    labels = rng.integers(0, 10, size=(n, k_objects))
    if p.task == "segmentation":
        present = rng.random((n, k_objects)) < np.array([1.0, 0.6, 0.4])
    else:
        present = np.ones((n, k_objects), dtype=bool)
    terrain = _terrain(rng, n, size)
    rough = _terrain(rng, n, size, cells=9)

    # EO: vegetation / soil mix + mild sensor noise, objects painted on top.
    green = np.array([0.25, 0.45, 0.2], dtype=np.float32)
    soil = np.array([0.55, 0.45, 0.3], dtype=np.float32)
    eo = terrain[..., None] * green + (1 - terrain[..., None]) * soil
    eo = eo * (0.85 + 0.3 * rough[..., None])
    # SAR: clutter backscatter from terrain roughness.
    sar = 0.12 + 0.18 * rough
    ir = 0.3 + 0.1 * terrain
    seg = np.zeros((n, size, size), dtype=np.int64)
    for k in range(k_objects):
        lab = labels[:, k]
        cov = _render_objects(rng, lab, size, p.object_scale) * present[:, k, None, None]
        color = _class_colors(p.eo_color_jitter, rng, lab)
        shade = 0.85 + 0.3 * rough[..., None]
        a = np.clip(cov * info["eo"], 0.0, 1.0)[..., None]
        eo = eo * (1 - a) + a * color[:, None, None, :] * shade
        # Strong returns from man-made objects; brightness barely depends on class.
        sar = sar + info["sar"] * cov * rng.uniform(0.5, 0.7, size=(n, 1, 1))
        temp = 0.5 + 0.03 * lab + rng.normal(0, 0.05, size=n)
        ir = ir + info.get("ir", 1.0) * cov * temp[:, None, None]
        seg = np.where(cov > 0.5, lab[:, None, None] + 1, seg)
    n_dis = p.sar_distractors
    if n_dis:  # bright non-object scatterers: SAR alone cannot tell them from objects, EO can
        coords = (np.arange(size, dtype=np.float32) + 0.5)
        X, Y = np.meshgrid(coords, coords, indexing="xy")
        for _ in range(n_dis):
            r = rng.uniform(0.08, 0.2, size=n).astype(np.float32) * size
            cx, cy = rng.uniform(0, size, size=n).astype(np.float32), rng.uniform(0, size, size=n).astype(np.float32)
            d2 = (X[None] - cx[:, None, None]) ** 2 + (Y[None] - cy[:, None, None]) ** 2
            blob = np.exp(-d2 / (2 * r[:, None, None] ** 2))
            sar = sar + info["sar"] * blob * rng.uniform(0.4, 0.7, size=(n, 1, 1))
    eo = eo + rng.normal(0.0, p.eo_sensor_noise, size=eo.shape)
    res = p.sar_resolution or (1 if p.task == "classification" else 3)
    if res > 1:  # a coarser SAR resolution cell: object edges spread over `res` pixels
        sar = F.avg_pool2d(torch.from_numpy(sar.astype(np.float32))[:, None], res, stride=1, padding=res // 2,
                           count_include_pad=False)[:, 0, :size, :size].numpy()
    looks = p.sar_looks or (2.0 if p.task == "classification" else 1.0)
    speckle = rng.gamma(shape=looks, scale=1.0 / looks, size=sar.shape)
    sar = np.sqrt(sar * speckle)  # amplitude image
    x: dict[str, torch.Tensor] = {
        "eo": torch.from_numpy(np.clip(eo, 0, 1).astype(np.float32)).permute(0, 3, 1, 2).contiguous(),
        "sar": torch.from_numpy(np.clip(sar, 0, 1).astype(np.float32))[:, None].contiguous(),
    }
    if "ir" in p.extra_modalities:
        blurred = F.avg_pool2d(torch.from_numpy(ir.astype(np.float32))[:, None], 5, stride=1, padding=2,
                               count_include_pad=False)
        x["ir"] = (blurred + torch.from_numpy(rng.normal(0, 0.08, size=blurred.shape).astype(np.float32))).clamp(0, 1)
    y = torch.from_numpy(labels[:, 0].astype(np.int64)) if p.task == "classification" else torch.from_numpy(seg)
    return x, y


@DATASETS.register("synthetic_aerial", SyntheticAerialParams)
def build_synthetic_aerial(p: SyntheticAerialParams) -> Chunked:
    """Seeded aerial EO + SAR (+ optional IR) chips of one shared scene, generated on first use.

    The three splits come from independent seeded streams (test is never seen in training), rendered
    chunk by chunk into the data cache (:mod:`raybal.data.store`)."""
    sizes = {"train": (p.n_train, 1), "val": (p.n_val, 2), "test": (p.n_test, 3)}
    splits = {s: (n, partial(render_chunks, p, n, p.seed * 1000 + k)) for s, (n, k) in sizes.items()}
    num_classes = 10 if p.task == "classification" else 11
    names = CLASS_NAMES if p.task == "classification" else ("background", *CLASS_NAMES)
    return Chunked(splits, p.modality_names(), num_classes, p.task, names)
