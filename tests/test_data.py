"""Data sets: the registry, shapes, seeding, caching and the real-data loaders' errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from raybal.config import ConfigError
from raybal.data import DATASETS, load_data
from raybal.data.base import DataError
from raybal.resolve import config_from_dict, default_config


def test_registry_lists_every_data_set() -> None:
    assert {"synthetic_aerial", "colored_digits", "mavoc_folder", "manifest"} <= set(DATASETS)
    with pytest.raises(ValueError, match="registered twice"):
        DATASETS.register("manifest")(object)


def test_synthetic_aerial_shapes_ranges_and_seed() -> None:
    cfg = tiny_config()
    data = load_data(cfg.data)
    assert data.modalities == ("eo", "sar")
    assert data.train.x["eo"].shape == (256, 3, 16, 16)
    assert data.train.x["sar"].shape == (256, 1, 16, 16)
    for t in data.train.x.values():
        assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert set(data.train.y.tolist()) == set(range(10))
    again = load_data(tiny_config(**{"data.seed": 0}).data)
    assert torch.equal(again.train.x["sar"], data.train.x["sar"])
    other = load_data(tiny_config(**{"data.seed": 1}).data)
    assert not torch.equal(other.train.x["sar"], data.train.x["sar"])
    assert not torch.equal(data.train.x["eo"][:50], data.test.x["eo"][:50])


def test_a_profile_sets_the_knobs_the_file_leaves_unset() -> None:
    from raybal.data.synthetic import PROFILES

    plain, cal = default_config(), default_config(**{"data.profile": "ntire21"})
    for k, v in PROFILES["ntire21"].items():
        assert getattr(cal.data.params, k) == v != getattr(plain.data.params, k)
    mixed = default_config(**{"data.profile": "ntire21", "data.sar_looks": 2.0})  # a value in the file wins
    assert mixed.data.params.sar_looks == 2.0 and mixed.data.params.eo_sensor_noise == PROFILES["ntire21"][
        "eo_sensor_noise"]
    assert mixed.data.params.profile == "ntire21" and cal.digest() != plain.digest()


def test_generated_data_is_cached_on_disk(tmp_path: Path) -> None:
    from raybal.data import _MEMO, data_key

    cfg = tiny_config(**{"data.cache_dir": str(tmp_path), "data.seed": 5})
    first = load_data(cfg.data)
    stores = list((tmp_path / "data").glob("synthetic_aerial-*"))  # chunked: a folder of .npy (data/store.py)
    assert len(stores) == 1 and data_key(cfg.data) in stores[0].name and (stores[0] / "val.x.eo.npy").is_file()
    _MEMO.clear()
    second = load_data(cfg.data)
    assert torch.equal(first.val.x["eo"], second.val.x["eo"])


def test_third_modality_and_segmentation_variant() -> None:
    data = load_data(tiny_config(**{"data.extra_modalities": ["ir"]}).data)
    assert data.modalities == ("eo", "sar", "ir") and data.train.x["ir"].shape[1] == 1
    seg = load_data(config_from_dict({"data": {"task": "segmentation", "n_train": 256, "n_val": 64, "n_test": 64,
                                                "image_size": 16}, "model": {"name": "unet"}}).data)
    assert seg.task == "segmentation" and seg.num_classes == 11
    assert seg.train.y.shape == (256, 16, 16)
    assert 0 < float((seg.train.y > 0).float().mean()) < 0.6


def test_colored_digits_shortcut_in_train_only() -> None:
    cfg = config_from_dict({"data": {"name": "colored_digits"}})
    data = load_data(cfg.data)
    assert data.modalities == ("gray", "color")

    def colour_ids(split):
        rgb = split.x["color"].sum(dim=(2, 3))
        rgb = rgb / rgb.sum(1, keepdim=True).clamp_min(1e-6)
        from raybal.data.digits import PALETTE

        pal = torch.from_numpy(PALETTE / PALETTE.sum(1, keepdims=True))
        return torch.cdist(rgb, pal).argmin(1)

    assert float((colour_ids(data.train) == data.train.y).float().mean()) > 0.95
    assert float((colour_ids(data.test) == data.test.y).float().mean()) < 0.3
    # validation follows the training distribution (Wu et al.): the colour still predicts the label
    assert float((colour_ids(data.val) == data.val.y).float().mean()) > 0.95
    half = load_data(config_from_dict({"data": {"name": "colored_digits", "shortcut": 0.5}}).data)
    assert 0.35 < float((colour_ids(half.val) == half.val.y).float().mean()) < 0.7


def _png(path: Path, mode: str, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3) if mode == "RGB" else (8, 8), value, dtype=np.uint8), mode).save(path)


def _mavoc(root: Path, n_per_class: int = 4) -> None:
    for c in ("0", "1", "2"):
        for i in range(n_per_class):
            sid = f"{c}{i:03d}"
            _png(root / "EO" / c / f"EO_{sid}.png", "RGB", 40 * int(c))
            _png(root / "SAR" / c / f"SAR_{sid}.png", "L", 60 * int(c))


def mavoc_cfg(root: Path):
    return config_from_dict({"data": {"name": "mavoc_folder", "root": str(root), "image_size": 8,
                                      "val_fraction": 0.2, "test_fraction": 0.2}})


def test_mavoc_folder_pairs_chips(tmp_path: Path) -> None:
    _mavoc(tmp_path)
    data = load_data(mavoc_cfg(tmp_path).data)
    assert data.num_classes == 3 and len(data.train) + len(data.val) + len(data.test) == 12
    assert data.shapes == {"eo": (3, 8, 8), "sar": (1, 8, 8)}
    # Pairing: the SAR value of each sample matches its EO class (read lazily, by index).
    for split in (data.train, data.test):
        x, y = split.read_all()
        eo = (x["eo"][:, 0, 0, 0] * 255 / 40).round()
        sar = (x["sar"][:, 0, 0, 0] * 255 / 60).round()
        assert torch.equal(eo, sar) and torch.equal(eo.long(), y)


def test_mavoc_errors_name_the_file(tmp_path: Path) -> None:
    _mavoc(tmp_path)
    (tmp_path / "SAR" / "1" / "SAR_1002.png").unlink()
    with pytest.raises(DataError, match=r"EO_1002\.png: unpaired chip"):
        load_data(mavoc_cfg(tmp_path).data)
    (tmp_path / "SAR" / "1" / "SAR_1002.png").write_text("not an image")
    with pytest.raises(DataError, match=r"SAR_1002\.png: not an image"):
        load_data(mavoc_cfg(tmp_path).data)
    empty = tmp_path / "empty"
    (empty / "EO").mkdir(parents=True)
    (empty / "SAR").mkdir()
    with pytest.raises(DataError, match="empty folder"):
        load_data(mavoc_cfg(empty).data)
    with pytest.raises(ConfigError, match=r"^data.root: folder not found"):
        mavoc_cfg(tmp_path / "nope")


def test_manifest_arrays_paths_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(20):
        _png(tmp_path / "img" / f"{i}.png", "RGB", 10 * (i % 4))
        rows.append({"label": i % 4, "eo": f"img/{i}.png", "sar": rng.random((1, 8, 8)).tolist(),
                     "split": "test" if i < 5 else "train"})
    path = tmp_path / "m.parquet"
    pd.DataFrame(rows).to_parquet(path)
    cfg = config_from_dict({"data": {"name": "manifest", "path": str(path), "image_size": 8}})
    data = load_data(cfg.data)
    assert len(data.test) == 5 and len(data.train) == 15
    x, _ = data.train.read_all()
    assert x["sar"].shape == (15, 1, 8, 8) and x["eo"].shape == (15, 3, 8, 8)

    pd.DataFrame(rows).drop(columns=["sar"]).to_parquet(path)
    with pytest.raises(DataError, match="missing column 'sar'"):
        load_data(cfg.data)
    bad = [dict(r) for r in rows]
    bad[3]["sar"] = rng.random((1, 4, 4)).tolist()
    pd.DataFrame(bad).to_parquet(path)
    with pytest.raises(DataError, match=r"column 'sar', row 3: shape \(1, 4, 4\) differs"):
        load_data(cfg.data)


def test_global_batch_k_holds_the_same_samples_on_any_number_of_workers() -> None:
    import torch

    from raybal.data.base import Split

    sp = Split({"a": torch.arange(100).float()[:, None]}, torch.zeros(100, dtype=torch.long))

    def step_sets(world: int, gb: int) -> list[set[int]]:
        per = gb // world if len(sp) >= gb else (len(sp) - len(sp) % world) // world
        orders = [sp.shard_order(shuffle=True, generator=torch.Generator().manual_seed(4), rank=r, world=world,
                                 global_batch=gb) for r in range(world)]
        steps = len(orders[0]) // per
        return [set().union(*(set(o[k * per:(k + 1) * per].tolist()) for o in orders)) for k in range(steps)]

    # plain fit: consecutive chunks of the one-worker permutation, the incomplete last one dropped
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(4))
    ref = [set(perm[k * 16:(k + 1) * 16].tolist()) for k in range(100 // 16)]
    assert step_sets(1, 16) == step_sets(2, 16) == step_sets(4, 16) == ref
    # a split smaller than the global batch: one step on all of it, less len % world
    assert [len(s) for s in step_sets(3, 128)] == [99]


def test_mavoc_reads_the_challenges_own_layout_lazily(tmp_path: Path) -> None:
    """train_images/<class>/EO_<id>.png beside SAR_<id>.png (the NTIRE-21 MAVOC layout, DESIGN.md §7)."""
    for c in ("0", "1", "2"):
        for i in range(4):
            _png(tmp_path / "train_images" / c / f"EO_{c}{i:03d}.png", "RGB", 40 * int(c))
            _png(tmp_path / "train_images" / c / f"SAR_{c}{i:03d}.png", "L", 60 * int(c))
    data = load_data(mavoc_cfg(tmp_path / "train_images").data)
    assert data.num_classes == 3 and len(data.train) + len(data.val) + len(data.test) == 12
    x, y = data.train.read_all()
    assert torch.equal((x["eo"][:, 0, 0, 0] * 255 / 40).round(), (x["sar"][:, 0, 0, 0] * 255 / 60).round())
    assert torch.equal((x["eo"][:, 0, 0, 0] * 255 / 40).round().long(), y)
    (tmp_path / "train_images" / "2" / "SAR_2001.png").unlink()
    with pytest.raises(DataError, match=r"EO_2001\.png: unpaired chip"):
        load_data(mavoc_cfg(tmp_path / "train_images").data)
