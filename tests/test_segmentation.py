"""Segmentation end to end (issue 15): per-pixel metrics, per-pixel measures and methods, the
U-Net's per-modality logits, ignored pixels, and the Parquet columns a segmentation run writes."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

from raybal.balancing import METHODS
from raybal.config import ConfigError
from raybal.config.tasks import IGNORE_INDEX
from raybal.measure.metrics import metric_details, task_metric
from raybal.measure.utilization import fused_loss_and_stat
from raybal.results.tables import write_results
from raybal.training.loop import build_for, fit

SEG = {"data.task": "segmentation", "model.name": "unet", "model.width": 4, "model.depth": 2,
       "data.n_train": 64, "data.n_val": 32, "data.n_test": 32, "train.batch_size": 16}
# What each method needs on top of the defaults (None: refused at load for a U-Net, with the key it names).
PER_METHOD: dict[str, dict | str] = {
    "vanilla": {}, "mu_target": {"balance.target": {"eo": 0.6, "sar": 0.4}}, "ogm_ge": {}, "mmpareto": {},
    "agm": {}, "inforeg": {}, "modality_dropout": {"balance.p": 0.5}, "gblending": {},
    "greedy_guided": "model.name", "greedy_random": "model.name", "pmr": "model.name", "mla": "model.name",
    "dgl": {}, "reconboost": "balance.method",
}


def tiny_config(**over):  # noqa: ANN201
    """The tiny classification test config made a segmentation one (the U-Net has no model.stages)."""
    from raybal.resolve import default_config

    return default_config(**{**{k: v for k, v in TINY.items() if k != "model.stages"}, **over})


def test_every_method_is_covered() -> None:
    assert set(PER_METHOD) == set(METHODS)


def test_metric_details_of_a_known_confusion_matrix() -> None:
    conf = torch.tensor([[3, 1, 0], [1, 2, 0], [0, 0, 0]])  # rows: label, columns: prediction
    d = metric_details(conf, torch.tensor(0), "segmentation", ("bg", "a", "b"))
    assert d["pixel_accuracy"] == pytest.approx(5 / 7)
    assert d["iou.bg"] == pytest.approx(3 / 5) and d["iou.a"] == pytest.approx(2 / 4)
    assert d["iou.b"] is None  # in neither labels nor predictions: left out, as the mIoU leaves it out
    assert metric_details(torch.tensor(5), torch.tensor(7), "classification") == {}


def test_ignored_pixels_count_nowhere() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 5, 5, generator=g)
    y = torch.randint(0, 3, (4, 5, 5), generator=g)
    y_ign = y.clone()
    y_ign[:, :2] = IGNORE_INDEX
    conf, _ = task_metric(logits, y_ign, 3, "segmentation")
    assert int(conf.sum()) == 4 * 3 * 5  # only the labelled pixels
    ref, _ = task_metric(logits[:, :, 2:], y[:, 2:], 3, "segmentation")
    assert torch.equal(conf, ref)


def test_unet_modality_logits_are_the_decoder_with_the_other_skips_zeroed() -> None:
    cfg = tiny_config(**SEG)
    from raybal.data import load_data

    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_for(cfg, data)
    xb = {m: t[:8] for m, t in data.train.x.items()}
    model.train()

    def running() -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}

    s0 = running()
    out = model(xb)
    s1 = running()
    alone = out.modality_logits
    assert alone is not None and list(alone) == ["eo", "sar"]
    eo = alone["eo"]  # decoded on first access, with autograd (mmpareto / inforeg train through it)
    assert eo.shape == out.logits.shape and eo.requires_grad
    s2 = running()
    assert any(not torch.equal(s0[k], s1[k]) for k in s0)  # the ordinary forward moves running statistics
    assert all(torch.equal(s1[k], s2[k]) for k in s1)  # the per-modality passes (altered data) do not
    model.eval()
    feats = model.encode(xb)
    zeroed = {"eo": feats["eo"], "sar": tuple(torch.zeros_like(f) for f in feats["sar"])}
    torch.testing.assert_close(model.fuse(feats).modality_logits["eo"], model.fuse(zeroed).logits)
    assert not torch.allclose(model.fuse(feats).modality_logits["eo"], model.fuse(feats).logits)


@pytest.mark.parametrize("name", sorted(PER_METHOD))
def test_every_method_trains_per_pixel_or_is_refused_at_load(name: str) -> None:
    spec = PER_METHOD[name]
    over = {**SEG, "balance.method": name, "train.epochs": 1, "robustness.enabled": False}
    if isinstance(spec, str):
        with pytest.raises(ConfigError) as err:
            tiny_config(**over)
        assert err.value.key == spec
        return
    res = fit(tiny_config(**over, **spec))
    f = res.final
    assert 0.0 <= f["final.test_miou"] <= 1.0 and math.isfinite(f["final.test_loss"])
    assert f["final.mu.eo"] + f["final.mu.sar"] == pytest.approx(1.0)
    assert 0.0 < f["final.test_pixel_accuracy"] <= 1.0


def test_mu_is_per_pixel_loss_with_whole_images_shuffled() -> None:
    """MU's shuffled loss for a dense model is the per-pixel cross-entropy with one modality's whole
    images (all its skip levels) moved to other samples: recomputed here by hand."""
    cfg = tiny_config(**SEG, **{"train.epochs": 1, "robustness.enabled": False})
    from raybal.data import load_data
    from raybal.measure.utilization import measure

    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_for(cfg, data).eval()
    mu = measure(model, data.val, num_classes=data.num_classes, task="segmentation", n_repeats=1, seed=3,
                 batch_size=len(data.val))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        feats = model.encode(data.val.x)
        perm_eo = torch.randperm(len(data.val), generator=g)
        shuffled = {"eo": tuple(f[perm_eo] for f in feats["eo"]), "sar": feats["sar"]}
        by_hand = F.cross_entropy(model.fuse(shuffled).logits, data.val.y).item()
        intact = F.cross_entropy(model.fuse(feats).logits, data.val.y).item()
    assert mu.loss == pytest.approx(intact, rel=1e-5)
    assert mu.shuffled_loss["eo"] == pytest.approx(by_hand, rel=1e-5)
    with torch.no_grad():
        loss, _, _ = fused_loss_and_stat(model, feats, data.val.y, data.num_classes, "segmentation")
    assert float(loss) / len(data.val) == pytest.approx(intact, rel=1e-5)


def test_a_segmentation_run_writes_miou_pixel_accuracy_and_class_iou(tmp_path) -> None:
    cfg = tiny_config(**SEG, **{"train.epochs": 2, "robustness.modalities": ["eo"],
                                "robustness.corruptions": ["gaussian"], "robustness.splits": ["test"]})
    res = fit(cfg)
    write_results(tmp_path, [res])
    trials = pd.read_parquet(tmp_path / "trials.parquet")
    epochs = pd.read_parquet(tmp_path / "epochs.parquet")
    rob = pd.read_parquet(tmp_path / "robustness.parquet")
    names = ("background", "disk", "square", "triangle", "ring", "plus", "bar", "ell", "diamond", "dumbbell", "frame")
    for split in ("val", "test"):
        for c in ("miou", "pixel_accuracy", *(f"iou.{n}" for n in names)):
            assert f"final.{split}_{c}" in trials.columns, (split, c)
    row = trials.iloc[0]
    ious = [row[f"final.test_iou.{n}"] for n in names if pd.notna(row[f"final.test_iou.{n}"])]
    assert row["final.test_miou"] == pytest.approx(sum(ious) / len(ious))  # the mean of the per-class IoUs
    assert {"miou", "pixel_accuracy", "iou.background"} <= set(epochs.columns)
    assert epochs["pixel_accuracy"].between(0, 1).all()
    assert {"miou", "pixel_accuracy"} <= set(rob.columns) and "accuracy" not in rob.columns
    clean = rob[rob["level"] == 0].iloc[0]
    assert clean["miou"] == pytest.approx(row["final.test_miou"])


# --- MCubeS (Liang et al. 2022) in its own layout, written here in the real formats -----------------

def _write_mcubes(root, ids: dict[str, list[str]], h: int = 20, w: int = 28) -> None:  # noqa: ANN001
    import numpy as np
    from PIL import Image

    for d in ("polL_color", "polL_aolp_sin", "polL_aolp_cos", "polL_dolp", "NIR_warped", "NIR_warped_mask", "GT",
              "list_folder"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, names in ids.items():
        (root / "list_folder" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
        for n in names:
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "polL_color" / f"{n}.png")
            ang = rng.uniform(0, np.pi, (h, w))
            np.save(root / "polL_aolp_sin" / f"{n}.npy", np.sin(2 * ang).astype(np.float32))
            np.save(root / "polL_aolp_cos" / f"{n}.npy", np.cos(2 * ang).astype(np.float32))
            np.save(root / "polL_dolp" / f"{n}.npy", rng.uniform(-0.05, 0.8, (h, w)).astype(np.float32))
            Image.fromarray(np.full((h, w), 32768, dtype=np.uint16)).save(root / "NIR_warped" / f"{n}.png")
            mask = np.zeros((h, w), dtype=np.uint8)
            mask[:, -3:] = 255  # the right edge has no valid NIR
            Image.fromarray(mask).save(root / "NIR_warped_mask" / f"{n}.png")
            gt = rng.integers(0, 20, (h, w)).astype(np.uint8)
            gt[0, :] = 255  # an unlabelled row
            Image.fromarray(gt).save(root / "GT" / f"{n}.png")


@pytest.fixture()
def mcubes_root(tmp_path):  # noqa: ANN001, ANN201
    root = tmp_path / "multimodal_dataset"
    _write_mcubes(root, {"train": [f"outscene_{i}" for i in range(6)], "val": ["outscene_v0", "outscene_v1"],
                         "test": ["outscene_t0", "outscene_t1"]})
    return root


def _mcubes_config(root, **over):  # noqa: ANN001, ANN202
    from raybal.resolve import default_config

    return default_config(**{"data.name": "mcubes", "data.root": str(root), "data.image_size": 16, "data.crop_left": 4,
                             "model.name": "unet", "model.width": 4, "model.depth": 2, "train.batch_size": 3,
                             "train.epochs": 1, "train.mu_repeats": 1, "robustness.enabled": False, **over})


def test_mcubes_reads_its_layout_into_four_modalities_in_unit_range(mcubes_root) -> None:  # noqa: ANN001
    from raybal.data import LazySplit, load_data

    data = load_data(_mcubes_config(mcubes_root).data)
    assert data.modalities == ("rgb", "aolp", "dolp", "nir") and data.task == "segmentation"
    assert data.num_classes == 20 and data.class_names[0] == "asphalt" and data.class_names[-1] == "sky"
    assert (len(data.train), len(data.val), len(data.test)) == (6, 2, 2)
    assert isinstance(data.train, LazySplit)  # read image set by image set, never whole (issue 37)
    x, y = data.train.read_all()
    assert {m: tuple(t.shape[1:]) for m, t in x.items()} == {
        "rgb": (3, 16, 16), "aolp": (2, 16, 16), "dolp": (1, 16, 16), "nir": (1, 16, 16)}
    for t in x.values():
        assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert float(x["nir"].mean()) == pytest.approx(32768 / 65535, abs=1e-3)  # 16-bit NIR by its range
    assert y.shape == (6, 16, 16) and y.dtype == torch.int64
    assert bool((y[:, 0] == IGNORE_INDEX).all())  # the unlabelled (255) row
    assert bool((y[:, :, -1] == IGNORE_INDEX).all())  # no valid NIR there (NIR_warped_mask white)
    labelled = y[y != IGNORE_INDEX]
    assert int(labelled.min()) >= 0 and int(labelled.max()) < 20
    without_mask = load_data(_mcubes_config(mcubes_root, **{"data.nir_mask": False}).data)
    assert not bool((without_mask.train.read_all()[1][:, 1:, -1] == IGNORE_INDEX).any())


def test_mcubes_trains_toward_a_four_modality_target(mcubes_root) -> None:  # noqa: ANN001
    target = {"rgb": 0.4, "aolp": 0.2, "dolp": 0.2, "nir": 0.2}
    res = fit(_mcubes_config(mcubes_root, **{"balance.method": "mu_target", "balance.target": target}))
    f = res.final
    assert sum(f[f"final.mu.{m}"] for m in target) == pytest.approx(1.0)
    assert math.isfinite(f["final.test_loss"]) and 0.0 <= f["final.test_miou"] <= 1.0
    assert "final.target_error" in f and "final.test_iou.asphalt" in f


@pytest.mark.parametrize("damage, expect", [
    ("missing", "polL_dolp/outscene_2.npy: file not found"),
    ("label", "GT/outscene_2.png: label 30 is not a material id"),
    ("shape", "outscene_2"),
    ("truncated", "polL_color/outscene_2.png: not a readable image"),
    ("modality", "data.modalities[1]: unknown modality 'depth'"),
])
def test_mcubes_bad_files_name_the_file(mcubes_root, damage: str, expect: str) -> None:  # noqa: ANN001
    import numpy as np
    from PIL import Image

    from raybal.data import DataError, load_data

    over = {}
    if damage == "missing":
        (mcubes_root / "polL_dolp" / "outscene_2.npy").unlink()
    elif damage == "label":
        gt = np.zeros((20, 28), dtype=np.uint8)
        gt[3, 3] = 30
        Image.fromarray(gt).save(mcubes_root / "GT" / "outscene_2.png")
    elif damage == "shape":
        np.save(mcubes_root / "polL_dolp" / "outscene_2.npy", np.zeros((20, 27), dtype=np.float32))
    elif damage == "truncated":
        path = mcubes_root / "polL_color" / "outscene_2.png"
        path.write_bytes(path.read_bytes()[:60])
    else:
        over = {"data.modalities": ["rgb", "depth"]}
    with pytest.raises((DataError, ConfigError)) as err:  # a missing file when loading, a bad one when read
        for _ in load_data(_mcubes_config(mcubes_root, **over).data).train.batches(3):
            pass
    assert expect in str(err.value)


SEG_STUDY = """
[data]
task = "segmentation"
n_train = 64
n_val = 32
n_test = 32
image_size = 16
[model]
name = "unet"
width = 4
depth = 2
[balance]
method = "mu_target"
target = {eo = 0.7, sar = 0.3}
[train]
epochs = 2
batch_size = 16
mu_repeats = 1
[robustness]
modalities = ["eo"]
corruptions = ["gaussian"]
levels = {gaussian = [0.0, 0.12]}
splits = ["val", "test"]
[study]
name = "tiny-seg"
objective = "robust.val_mean_miou"
num_samples = 1
repeats = 2
scheduler = "fifo"
seed = 0
constraints = ["final.val_miou >= 0.0"]
[search]
"balance.target.eo" = {uniform = [0.5, 0.9]}
"""


def test_a_segmentation_study_ranks_by_miou_and_reports_it(tmp_path, capsys, local_ray) -> None:  # noqa: ANN001
    import json

    from raybal.cli import main

    study = tmp_path / "seg.toml"
    study.write_text(SEG_STUDY)
    out = tmp_path / "res"
    assert main(["study", "run", str(study), "--results", str(out), "--quiet"]) == 0
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 4 and (trials["status"] == "ok").all()  # (1 configuration + vanilla) x 2 seeds
    assert {"robust.val_mean_miou", "final.test_miou", "final.test_pixel_accuracy"} <= set(trials.columns)
    capsys.readouterr()
    assert main(["best", str(out), "--json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["metric"] == "robust.val_mean_miou" and best["interval"]["n"] == 2
    means = trials.groupby("config_id")["robust.val_mean_miou"].mean()  # the baseline is a candidate too
    assert best["value"] == pytest.approx(means.max())
    winner = trials.loc[trials["trial_id"] == best["trial_id"], "config_id"].iloc[0]
    assert means[winner] == means.max() and best["is_baseline"] == (winner in set(trials.loc[
        trials["role"] == "baseline", "config_id"]))
    assert main(["report", str(out)]) == 0
    report = out / "report"
    assert (report / "accuracy_vs_noise.png").is_file() and (report / "index.html").is_file()
    assert "miou" in (report / "index.html").read_text().lower()
    _run_notebooks(out)


def _run_notebooks(results) -> None:  # noqa: ANN001
    """Every notebook runs on the segmentation study's tables (they read the metric from the columns)."""
    import os
    from pathlib import Path

    import nbformat
    from nbclient import NotebookClient

    root = Path(__file__).resolve().parents[1] / "notebooks"
    env = {k: os.environ.get(k) for k in ("RAYBAL_RESULTS", "MPLBACKEND")}
    os.environ.update(RAYBAL_RESULTS=str(results), MPLBACKEND="Agg")
    try:
        for path in sorted(root.glob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            NotebookClient(nb, timeout=300, kernel_name="python3",
                           resources={"metadata": {"path": str(root)}}).execute()
            errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
            assert not errors, (path.name, errors[:1])
            text = "".join(str(o.get("text", "")) for c in nb.cells for o in c.get("outputs", []))
            if path.name.startswith(("01", "02")):
                assert "metric: miou" in text, path.name
    finally:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_segmentation_calibration(seed: int) -> None:
    """The segmentation variant's calibration (benchmarks/calibrate_aerial.py --task segmentation): EO
    alone clearly better than SAR alone, vanilla fusion leaning on EO (MU share > 0.9), EO noise of
    variance 0.12 degrading the fused model rather than erasing it. ~5 minutes per seed on 2 cores."""
    from raybal.resolve import default_config

    base = {"data.task": "segmentation", "model.name": "unet", "data.n_train": 1500, "data.n_val": 500,
            "data.n_test": 500, "data.seed": seed, "train.seed": seed, "train.mu_every": 8}
    eo = fit(default_config(**base, **{"data.informativeness": {"sar": 0.0}, "robustness.enabled": False}))
    sar = fit(default_config(**base, **{"data.informativeness": {"eo": 0.0}, "robustness.enabled": False}))
    fused = fit(default_config(**{**base, "train.mu_every": 1}, **{
        "robustness.modalities": ["eo"], "robustness.corruptions": ["gaussian"], "robustness.splits": ["test"],
        "robustness.levels": {"gaussian": [0.0, 0.12]}, "robustness.measure_mu": False}))
    assert eo.final["final.test_miou"] > sar.final["final.test_miou"] + 0.3  # measured: 0.60-0.78 vs 0.14-0.15
    assert fused.final["final.mu.eo"] > 0.9  # measured: 0.925-0.970
    noisy = fused.final["robust.test_miou.eo.gaussian.0.12"]
    assert sar.final["final.test_miou"] < noisy < fused.final["final.test_miou"] - 0.05  # measured: 0.36-0.52
