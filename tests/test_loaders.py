"""The public EO/SAR sets' loaders (issue 14), each on small files this module writes in the real
format: So2Sat LCZ42 (HDF5), SEN12MS (GeoTIFF). Read lazily, split as documented, bad files named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from raybal.cli import main
from raybal.data import DataError, LazySplit, load_data
from raybal.resolve import default_config

# ----------------------------------------------------------------------------------------- So2Sat


def write_so2sat(root: Path, sizes: tuple[int, int, int] = (48, 16, 16), seed: int = 0) -> Path:
    """So2Sat-shaped files whose class shows in sen2 (a per-class level in band 0) and weakly in sen1."""
    import h5py

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in zip(("training.h5", "validation.h5", "testing.h5"), sizes):
        y = np.arange(n) % 4
        sen2 = rng.normal(0.1, 0.02, (n, 32, 32, 10))
        sen2[..., :3] += 0.1 * y[:, None, None, None]
        sen1 = rng.normal(0.0, 0.5, (n, 32, 32, 8))
        sen1[..., 4] += 0.2 * y[:, None, None]
        onehot = np.zeros((n, 17))
        onehot[np.arange(n), y] = 1
        with h5py.File(root / name, "w") as f:
            f["sen1"], f["sen2"], f["label"] = sen1, sen2, onehot
    return root


def test_so2sat_reads_lazily_with_band_selection(tmp_path: Path) -> None:
    root = write_so2sat(tmp_path / "so2sat")
    cfg = default_config(**{"data.name": "so2sat", "data.root": str(root), "data.bands": {"sen2": [3, 0]}})
    data = load_data(cfg.data)
    assert isinstance(data.train, LazySplit) and (len(data.train), len(data.val), len(data.test)) == (48, 16, 16)
    assert data.shapes == {"sen1": (8, 32, 32), "sen2": (2, 32, 32)} and data.num_classes == 17
    xb, yb = next(iter(data.test.batches(16)))
    import h5py

    with h5py.File(root / "testing.h5") as f:
        want = torch.from_numpy(f["sen2"][:16][..., [3, 0]].transpose(0, 3, 1, 2).astype(np.float32))
        labels = f["label"][:16].argmax(1)
    assert torch.equal(xb["sen2"], want) and yb.tolist() == labels.tolist()


def test_so2sat_trains_end_to_end_with_the_readme_section(tmp_path: Path) -> None:
    root = write_so2sat(tmp_path / "so2sat", sizes=(96, 16, 16))
    run = tmp_path / "run.toml"
    run.write_text(f'[data]\nname = "so2sat"\nroot = "{root}"\nnormalize = true\n'
                   "[model]\nwidth = 8\nstages = 3\n[train]\nepochs = 4\nbatch_size = 16\nlr = 1e-2\nmu_repeats = 1\n"
                   '[robustness]\nmodalities = ["sen2"]\ncorruptions = ["blackout"]\nsplits = ["test"]\n')
    assert main(["train", str(run), "--results", str(tmp_path / "res"), "--quiet"]) == 0
    t = pd.read_parquet(tmp_path / "res" / "trials.parquet")
    assert t.loc[0, "status"] == "ok" and t.loc[0, "final.test_accuracy"] > 0.5  # chance is 0.25 (4 classes used)
    assert {"final.mu.sen1", "final.mu.sen2"} <= set(t.columns)


def test_so2sat_bad_input_names_the_key_or_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_so2sat(tmp_path / "so2sat", sizes=(8, 4, 4))
    run = tmp_path / "run.toml"
    run.write_text(f'[data]\nname = "so2sat"\nroot = "{root}"\nbands = {{sen1 = [8]}}\n')
    assert main(["train", str(run), "--results", str(tmp_path / "r1")]) == 2
    assert "data.bands.sen1" in capsys.readouterr().err
    assert not (tmp_path / "r1").exists()
    (root / "validation.h5").write_bytes(b"not hdf5")
    run.write_text(f'[data]\nname = "so2sat"\nroot = "{root}"\n')
    assert main(["train", str(run), "--results", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "validation.h5" in err and "HDF5" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------- SEN12MS


def _tif(path: Path, arr: np.ndarray) -> None:
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=arr.shape[1], width=arr.shape[2], count=arr.shape[0],
                       dtype=arr.dtype.name) as dst:
        dst.write(arr)


def write_sen12ms(root: Path, scenes: int = 6, patches: int = 4, size: int = 16, s2_bands: int = 13) -> Path:
    """ROIs1158_spring and ROIs1868_summer, `scenes` scenes each split over both, `patches` patches per
    scene. The IGBP class of a patch is 1 + (patch % 3) * 5 (simplified: forest, grassland, urban), and
    it shows in S2 band 3 and S1 band 0."""
    rng = np.random.default_rng(0)
    for s in range(scenes):
        roi = root / ("ROIs1158_spring" if s % 2 == 0 else "ROIs1868_summer")
        for k in range(patches):
            igbp = 1 + (k % 3) * 5  # 1 forest, 6 shrubland, 11 wetlands
            stem = f"{roi.name}_{{}}_{s}_p{k}.tif"
            s1 = rng.normal(-15, 2, (2, size, size)).astype(np.float32)
            s1[0] += 3 * (k % 3)
            s2 = rng.integers(500, 1500, (s2_bands, size, size)).astype(np.uint16)
            s2[min(3, s2_bands - 1)] += np.uint16(2000 * (k % 3))
            lc = np.full((4, size, size), igbp, np.uint8)
            lc[0, :2] = 10  # a strip of grassland: the majority is still igbp
            _tif(roi / f"s1_{s}" / stem.format("s1"), s1)
            _tif(roi / f"s2_{s}" / stem.format("s2"), s2)
            _tif(roi / f"lc_{s}" / stem.format("lc"), lc)
    return root


def test_sen12ms_splits_by_scene_and_reads_its_bands(tmp_path: Path) -> None:
    root = write_sen12ms(tmp_path / "sen12ms")
    cfg = default_config(**{"data.name": "sen12ms", "data.root": str(root), "data.bands": {"s2": [1, 2, 3]},
                            "data.val_fraction": 0.2, "data.test_fraction": 0.2})
    data = load_data(cfg.data)
    src = data.train.source
    scenes = {s: {src.triplets[int(i)].scene for i in data.split(s).indices} for s in ("train", "val", "test")}
    assert not (scenes["train"] & scenes["val"]) and not (scenes["train"] & scenes["test"])
    assert sum(len(data.split(s)) for s in ("train", "val", "test")) == 24
    assert data.shapes == {"s1": (2, 16, 16), "s2": (3, 16, 16)} and data.num_classes == 10
    xb, yb = next(iter(data.train.batches(64)))
    assert float(xb["s1"].min()) >= 0 and float(xb["s1"].max()) <= 1 and float(xb["s2"].max()) <= 1
    # majority IGBP class -> simplified: 1 -> forest (0), 6 -> shrubland (1), 11 -> wetlands (4)
    assert set(yb.tolist()) == {0, 1, 4}
    spring = default_config(**{"data.name": "sen12ms", "data.root": str(root), "data.seasons": ["spring"],
                               "data.val_fraction": 0.34, "data.test_fraction": 0.34})
    d2 = load_data(spring.data)
    assert all("spring" in t.scene for t in d2.train.source.triplets) and len(d2.train.source.triplets) == 12


def test_sen12ms_segmentation_keeps_the_per_pixel_map(tmp_path: Path) -> None:
    root = write_sen12ms(tmp_path / "sen12ms", patches=3)
    cfg = default_config(**{"data.name": "sen12ms", "data.root": str(root), "data.task": "segmentation",
                            "data.labels": "igbp", "data.image_size": 8, "model.name": "unet"})
    data = load_data(cfg.data)
    xb, yb = next(iter(data.train.batches(4)))
    assert yb.shape[1:] == (8, 8) and xb["s2"].shape[1:] == (13, 8, 8) and data.num_classes == 17
    assert 9 in yb.unique().tolist()  # the grassland strip (IGBP 10 -> class 9) survives per pixel


def test_sen12ms_trains_end_to_end(tmp_path: Path) -> None:
    root = write_sen12ms(tmp_path / "sen12ms", scenes=9, patches=6)
    run = tmp_path / "run.toml"
    run.write_text(f'[data]\nname = "sen12ms"\nroot = "{root}"\nbands = {{s2 = [1, 2, 3, 7]}}\nnum_workers = 1\n'
                   "[model]\nwidth = 8\nstages = 3\n[train]\nepochs = 3\nbatch_size = 8\nlr = 3e-3\nmu_repeats = 1\n"
                   "[robustness]\nenabled = false\n")
    assert main(["train", str(run), "--results", str(tmp_path / "res"), "--quiet"]) == 0
    t = pd.read_parquet(tmp_path / "res" / "trials.parquet")
    assert t.loc[0, "status"] == "ok" and t.loc[0, "final.test_accuracy"] > 0.5  # 3 classes


def test_sen12ms_missing_band_or_partner_is_named(tmp_path: Path) -> None:
    root = write_sen12ms(tmp_path / "short", scenes=3, patches=1, s2_bands=12)
    cfg = default_config(**{"data.name": "sen12ms", "data.root": str(root), "data.num_workers": 0})
    data = load_data(cfg.data)
    with pytest.raises(DataError, match=r"_s2_\d+_p0\.tif: 12 band\(s\), expected 13"):
        next(iter(data.train.batches(4)))
    root = write_sen12ms(tmp_path / "unpaired", scenes=3, patches=1)
    next((root / "ROIs1868_summer" / "lc_1").iterdir()).unlink()
    with pytest.raises(DataError, match=r"_s1_1_p0\.tif: no partner chip .*_lc_1_p0\.tif"):
        load_data(default_config(**{"data.name": "sen12ms", "data.root": str(root)}).data)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_truncated_geotiff_mid_epoch_stops_the_run_naming_it(tmp_path: Path, workers: int) -> None:
    root = write_sen12ms(tmp_path / "sen12ms", scenes=3, patches=2)
    cfg = default_config(**{"data.name": "sen12ms", "data.root": str(root), "data.num_workers": workers})
    data = load_data(cfg.data)
    victim = data.train.source.triplets[int(data.train.indices[-1])].s2
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(DataError, match=str(victim.name)):
        for _ in data.train.batches(2):
            pass


# ------------------------------------------------------------------------------------ BigEarthNet-MM

LABELS = ("Coniferous forest", "Pastures", "Water bodies", "Airports")  # 19-class: 9, 4, 17, (none)


def write_bigearthnet(root: Path, n: tuple[int, int, int] = (60, 20, 20), size: int = 12) -> Path:
    """BigEarthNet-MM's layout with per-band GeoTIFFs at their native resolutions (10 m: size, 20 m:
    size / 2, 60 m: size / 6). Coniferous forest brightens S2 B08, pastures S2 B04, water darkens S1 VV;
    airports (no 19-class counterpart) come and go at random."""
    import json

    rng = np.random.default_rng(1)
    s2_root, s1_root = root / "BigEarthNet-v1.0", root / "BigEarthNet-S1-v1.0"
    res = {"B01": 6, "B09": 6, "B05": 2, "B06": 2, "B07": 2, "B8A": 2, "B11": 2, "B12": 2}
    k = 0
    for split, count in zip(("train", "val", "test"), n):
        lines = []
        for _ in range(count):
            present = rng.random(4) < (0.5, 0.5, 0.4, 0.3)
            if not present[:3].any():
                present[k % 3] = True
            s2, s1 = f"S2A_MSIL2A_20170613T101031_{k}_{k % 7}", f"S1A_IW_GRDH_1SDV_20170613T165043_{k}"
            k += 1
            for band in ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"):
                side = size // res.get(band, 1)
                a = rng.integers(800, 1200, (1, side, side)).astype(np.uint16)
                a += np.uint16(2500 * present[0] if band == "B08" else 2500 * present[1] if band == "B04" else 0)
                _tif(s2_root / s2 / f"{s2}_{band}.tif", a)
            for band in ("VV", "VH"):
                a = rng.normal(-10, 1.5, (1, size, size)).astype(np.float32)
                a -= 8 * present[2] if band == "VV" else 0
                _tif(s1_root / s1 / f"{s1}_{band}.tif", a)
            (s2_root / s2 / f"{s2}_labels_metadata.json").write_text(
                json.dumps({"labels": [LABELS[i] for i in range(4) if present[i]], "tile_source": "x"}))
            lines.append(f"{s2},{s1}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def test_bigearthnet_reads_multi_hot_labels_and_resamples_bands(tmp_path: Path) -> None:
    root = write_bigearthnet(tmp_path / "ben", n=(8, 4, 4))
    data = load_data(default_config(**{"data.name": "bigearthnet_mm", "data.root": str(root),
                                       "data.image_size": 12}).data)
    assert data.task == "multilabel" and data.num_classes == 19 and len(data.train) == 8
    assert data.shapes == {"s1": (2, 12, 12), "s2": (10, 12, 12)}  # 20 m bands resampled to the 10 m grid
    xb, yb = next(iter(data.train.batches(8)))
    assert yb.dtype == torch.float32 and yb.shape == (8, 19) and set(yb.unique().tolist()) <= {0.0, 1.0}
    assert set(torch.nonzero(yb.sum(0)).flatten().tolist()) <= {4, 9, 17}  # airports has no 19-class label
    d43 = load_data(default_config(**{"data.name": "bigearthnet_mm", "data.root": str(root), "data.classes": 43,
                                      "data.s2_bands": ["B04", "B08"], "data.image_size": 12}).data)
    _, y43 = next(iter(d43.train.batches(8)))
    assert y43.shape == (8, 43) and d43.shapes["s2"] == (2, 12, 12) and "airports" in d43.class_names


def test_bigearthnet_trains_a_multilabel_run_with_its_own_columns(tmp_path: Path) -> None:
    root = write_bigearthnet(tmp_path / "ben")
    run = tmp_path / "run.toml"
    run.write_text(f'[data]\nname = "bigearthnet_mm"\nroot = "{root}"\nimage_size = 12\n'
                   "[model]\nwidth = 8\nstages = 2\n[train]\nepochs = 4\nbatch_size = 10\nlr = 1e-2\nmu_repeats = 1\n"
                   '[robustness]\nmodalities = ["s2"]\ncorruptions = ["blackout"]\nsplits = ["test"]\n')
    assert main(["train", str(run), "--results", str(tmp_path / "res"), "--quiet"]) == 0
    t = pd.read_parquet(tmp_path / "res" / "trials.parquet")
    assert t.loc[0, "status"] == "ok"
    assert t.loc[0, "final.test_map"] > 0.7 and t.loc[0, "final.test_micro_f1"] > 0.5, t.filter(like="final.test_")
    assert {"final.test_macro_f1", "final.test_ap.coniferous_forest", "final.mu.s1", "final.mu.s2"} <= set(t.columns)
    e = pd.read_parquet(tmp_path / "res" / "epochs.parquet")
    assert {"map", "micro_f1", "macro_f1"} <= set(e.columns) and "accuracy" not in e.columns
    r = pd.read_parquet(tmp_path / "res" / "robustness.parquet")
    assert "map" in r.columns and r["map"].notna().all()
    # blacking out S2 removes two of the three classes' evidence: mAP falls
    assert r.loc[r["level"] == 1, "map"].iloc[0] < t.loc[0, "final.test_map"] - 0.1


def test_bigearthnet_refuses_a_single_label_method_and_names_a_missing_band(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    root = write_bigearthnet(tmp_path / "ben", n=(4, 2, 2))
    run = tmp_path / "run.toml"
    run.write_text(f'[data]\nname = "bigearthnet_mm"\nroot = "{root}"\n[balance]\nmethod = "pmr"\n')
    assert main(["train", str(run), "--results", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err
    assert "balance.method" in err and "multilabel" in err
    victim = next((root / "BigEarthNet-v1.0").glob("*_3_*/*_B11.tif"))
    victim.unlink()
    cfg = default_config(**{"data.name": "bigearthnet_mm", "data.root": str(root), "data.num_workers": 0})
    data = load_data(cfg.data)
    with pytest.raises(DataError, match=f"{victim.name}: file not found"):
        for _ in data.train.batches(2):
            pass
