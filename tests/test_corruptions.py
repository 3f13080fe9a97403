"""The sensor-fault corruptions (issue 34): each one's defining property at severities 1-5."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config

from raybal.noise import CORRUPTIONS, CorruptionError
from raybal.noise.atmosphere import COVERAGE, TRANSMISSION, cloud_mask
from raybal.noise.optics import SIGMA, gaussian_kernel
from raybal.noise.registration import DIRECTIONS, SHIFT, shift


def corrupt(name: str, x: torch.Tensor, level: float, seed: int = 0) -> torch.Tensor:
    return CORRUPTIONS.get(name).obj(x, level, torch.Generator().manual_seed(seed))


def images(n: int = 6, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_a_cloud_mask_covers_its_severitys_fraction(severity: int) -> None:
    mask = cloud_mask(8, 48, 40, COVERAGE[severity], torch.Generator().manual_seed(severity))
    covered = (mask > 0).flatten(1).float().mean(1)
    assert torch.allclose(covered, torch.full_like(covered, COVERAGE[severity]), atol=0.02)
    assert float(mask.max()) == pytest.approx(1.0) and float(mask.min()) == 0.0
    soft = ((mask > 0) & (mask < 1)).flatten(1).float().mean(1)
    assert bool((soft > 0).all())  # soft edges, not a hard cut


def test_clouds_brighten_the_covered_pixels_and_shadows_darken_others() -> None:
    x = images(4, size=32) * 0.5 + 0.1
    y = corrupt("clouds", x, 3)
    assert y.shape == x.shape and not torch.equal(x, y)
    bright = x.amax(dim=(2, 3), keepdim=True)
    assert bool((y <= bright + 1e-6).all())
    changed = (y != x).any(1).flatten(1).float().mean(1)
    assert bool((changed >= COVERAGE[3] - 0.02).all())  # the cloud, and its shadow beside it
    assert bool(((y < x - 1e-6).any(1).flatten(1).any(1)).all())  # every chip has some shadow


def test_haze_is_the_scattering_model() -> None:
    x = images()
    for s in (1, 5):
        t = TRANSMISSION[s]
        expect = x * t + x.amax(dim=(2, 3), keepdim=True) * (1 - t)
        assert torch.allclose(corrupt("haze", x, s), expect)


def test_blur_keeps_a_flat_image_and_spreads_a_point_with_its_sigma() -> None:
    flat = torch.full((1, 2, 24, 24), 0.7)
    assert torch.allclose(corrupt("blur", flat, 4), flat, atol=1e-6)
    point = torch.zeros(1, 1, 41, 41)
    point[0, 0, 20, 20] = 1.0
    out = corrupt("blur", point, 3)[0, 0]
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)
    r = torch.arange(41.0) - 20
    var = float((out.sum(0) * r ** 2).sum())
    assert math.sqrt(var) == pytest.approx(SIGMA[3], rel=0.02)
    assert float(gaussian_kernel(2.0).sum()) == pytest.approx(1.0)


def test_resolution_averages_blocks() -> None:
    x = torch.zeros(1, 1, 16, 16)
    x[..., ::2, ::2] = 1.0  # a pattern finer than the coarse sensor resolves
    y = corrupt("resolution", x, 1)  # factor 2
    assert torch.allclose(y, torch.full_like(y, 0.25), atol=1e-6)
    blocks = torch.kron(torch.rand(1, 1, 4, 4), torch.ones(4, 4))  # already coarse at factor 4
    assert float((corrupt("resolution", blocks, 3) - blocks).abs().mean()) < float(blocks.std()) / 2


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_misregistration_moves_content_by_exactly_k_pixels_and_nothing_else(severity: int) -> None:
    k = SHIFT[severity]
    x = images(16, c=2, size=24, seed=severity)
    y = corrupt("misregistration", x, severity, seed=4)
    seen = set()
    for i in range(len(x)):
        fill = x[i].mean(dim=(1, 2), keepdim=True)
        hits = [d for d in DIRECTIONS if torch.equal(y[i], shift(x[i], k * d[0], k * d[1], fill))]
        assert len(hits) == 1, "each sample is the input moved by k pixels in one compass direction"
        dy, dx = hits[0]
        seen.add(hits[0])
        h, w = x.shape[-2:]
        inner_src = x[i][:, max(0, -k * dy):h - max(0, k * dy), max(0, -k * dx):w - max(0, k * dx)]
        inner_dst = y[i][:, max(0, k * dy):h - max(0, -k * dy), max(0, k * dx):w - max(0, -k * dx)]
        assert torch.equal(inner_src, inner_dst)
    assert len(seen) > 2  # the direction is drawn per sample
    with pytest.raises(CorruptionError, match="not smaller than the 4x4 chip"):
        corrupt("misregistration", images(2, size=4), 4)


def test_a_missing_rate_drops_exactly_that_share_of_samples() -> None:
    x = images(100, c=1, size=8) + 0.1
    y = corrupt("missing", x, 0.3)
    gone = (y == 0).flatten(1).all(1)
    assert int(gone.sum()) == 30
    assert torch.equal(y[~gone], x[~gone])
    assert torch.equal(corrupt("missing", x, 0.0), x)


def test_band_drop_zeroes_whole_bands_and_keeps_one() -> None:
    x = images(20, c=5, size=8) + 0.1
    for s, k in ((1, 1), (3, 3), (5, 4)):
        y = corrupt("band_drop", x, s)
        dead = (y == 0).flatten(2).all(2)  # (N, C)
        assert bool((dead.sum(1) == k).all())
        assert torch.equal(y[~dead], x[~dead])
    with pytest.raises(CorruptionError, match="at least 2 bands"):
        corrupt("band_drop", images(2, c=1), 2)


@pytest.mark.parametrize("name", ["clouds", "haze", "blur", "resolution", "misregistration", "band_drop"])
def test_the_same_seed_gives_the_same_corruption_and_severities_are_checked(name: str) -> None:
    x = images(4)
    assert torch.equal(corrupt(name, x, 2, seed=5), corrupt(name, x, 2, seed=5))
    with pytest.raises(CorruptionError, match="severity"):
        corrupt(name, x, 2.5)
    seg = images(2, c=3, size=16)  # shapes only: the same corruption on a segmentation chip
    assert corrupt(name, seg, 5).shape == seg.shape


def test_a_run_sweeps_the_new_corruptions() -> None:
    from raybal.training.loop import fit

    cfg = tiny_config(**{"robustness.enabled": True, "robustness.modalities": ["eo"], "robustness.measure_mu": False,
                         "robustness.corruptions": ["clouds", "misregistration", "missing"],
                         "robustness.levels": {"clouds": [1, 5], "misregistration": [5], "missing": [0.5]},
                         "robustness.splits": ["test"]})
    r = fit(cfg)
    rows = {(p["corruption"], p["level"]): p["accuracy"] for p in r.robustness}
    assert set(rows) == {("clouds", 1.0), ("clouds", 5.0), ("misregistration", 5.0), ("missing", 0.5)}
    assert all(0.0 <= v <= 1.0 for v in rows.values())
    clean = r.final["final.test_accuracy"]
    assert r.final["robust.test_mra"] == pytest.approx(  # the mean over curves of each curve's mean RA
        ((rows[("clouds", 1.0)] + rows[("clouds", 5.0)]) / 2 / clean + rows[("misregistration", 5.0)] / clean
         + rows[("missing", 0.5)] / clean) / 3)
    assert 0 < r.final["robust.test_rel_robustness"] <= 1.5


def test_a_joint_corruption_steps_through_each_parts_levels_together() -> None:
    from raybal.noise import joint_corrupter, joint_steps

    levels = {"clouds": (1, 2, 3, 4, 5), "speckle": (0.0, 0.1, 0.2, 0.3)}
    steps = joint_steps({"eo": "clouds", "sar": "speckle"}, levels)
    assert steps == [[("eo", "clouds", 1.0), ("sar", "speckle", 0.1)], [("eo", "clouds", 2.0), ("sar", "speckle", 0.2)],
                     [("eo", "clouds", 3.0), ("sar", "speckle", 0.3)]]  # as many steps as the shorter part
    x = {"eo": images(4), "sar": images(4, c=1, seed=1), "ir": images(4, c=1, seed=2)}
    idx = torch.arange(4)
    y = joint_corrupter(steps[2], seed=3)(x, idx)
    assert not torch.equal(y["eo"], x["eo"]) and not torch.equal(y["sar"], x["sar"]) and torch.equal(y["ir"], x["ir"])
    assert all(torch.equal(y[m], joint_corrupter(steps[2], seed=3)(x, idx)[m]) for m in x)  # seeded


def test_a_run_sweeps_a_joint_corruption() -> None:
    from raybal.training.loop import fit

    cfg = tiny_config(**{"robustness.enabled": True, "robustness.modalities": ["eo"], "robustness.measure_mu": False,
                         "robustness.corruptions": ["haze"], "robustness.levels": {"haze": [5], "speckle": [0.3]},
                         "robustness.joint": {"storm": {"eo": "haze", "sar": "speckle"}},
                         "robustness.splits": ["test"]})
    r = fit(cfg)
    rows = {(p["modality"], p["corruption"], p["level"]): p["accuracy"] for p in r.robustness}
    assert set(rows) == {("eo", "haze", 5.0), ("eo+sar", "storm", 1.0)}


def _split_level(name: str) -> float:
    from raybal.noise import nonzero_levels

    return nonzero_levels(name)[-1]


@pytest.mark.parametrize("name", sorted(CORRUPTIONS.names()))
def test_a_samples_corruption_depends_on_the_seed_and_the_sample_only(name: str) -> None:
    """Whatever batches a split is cut into, in whatever order, and on 1 or 2 workers' shards: each sample
    is corrupted the same (its own draws, from (seed, grid point, sample))."""
    from raybal.data.pipeline import chunks, shard_order
    from raybal.noise import corrupter
    from raybal.noise.absence import band_mean

    n, level = 23, _split_level(name)
    x = {"eo": images(n, c=3, size=16, seed=1), "sar": images(n, c=2, size=16, seed=2)}
    means = {"eo": band_mean(x["eo"])}  # what `missing_mean` fills with (every other corruption ignores it)
    fn = corrupter("eo", name, level, seed=4, n=n, means=means)
    whole = fn(x, torch.arange(n))["eo"]
    assert not torch.equal(whole, x["eo"]), f"{name} at {level} left the split unchanged"

    def by_batches(order: torch.Tensor, size: int) -> dict[int, torch.Tensor]:
        out = {}
        for idx in chunks(order, size, drop_last=False):
            y = fn({m: t[idx] for m, t in x.items()}, idx)["eo"]
            out.update({int(i): y[k] for k, i in enumerate(idx)})
        return out

    g = torch.Generator().manual_seed(0)
    layouts = {"batches of 5": by_batches(torch.arange(n), 5), "one by one": by_batches(torch.arange(n), 1),
               "shuffled, batches of 7": by_batches(torch.randperm(n, generator=g), 7)}
    for rank in (0, 1):  # two workers' shards of a shuffled epoch
        order = shard_order(n, shuffle=True, generator=torch.Generator().manual_seed(1), rank=rank, world=2,
                            global_batch=8)
        layouts[f"worker {rank} of 2"] = by_batches(order, 4)
    for layout, rows in layouts.items():
        for i, row in rows.items():
            assert torch.allclose(row, whole[i], atol=1e-6), f"{name}: sample {i} differs ({layout})"
    # a corruption with draws (not blur, haze, resolution; not blackout at 1.0, a dead sensor) draws others
    if CORRUPTIONS.get(name).meta.get("draws", True) and not (name == "blackout" and level >= 1):
        other = corrupter("eo", name, level, seed=5, n=n, means=means)(x, torch.arange(n))["eo"]
        assert not torch.equal(other, whole), f"{name}: another seed drew the same corruption"


def test_a_missing_rate_is_a_share_of_the_split_whatever_its_batches() -> None:
    from raybal.noise import corrupter

    n = 101
    x = {"eo": images(n, c=1, size=8) + 0.1}
    fn = corrupter("eo", "missing", 0.3, seed=2, n=n)
    gone = []
    for start in range(0, n, 7):
        idx = torch.arange(start, min(start + 7, n))
        y = fn({"eo": x["eo"][idx]}, idx)["eo"]
        gone += [int(i) for k, i in enumerate(idx) if bool((y[k] == 0).all())]
    assert abs(len(gone) - 0.3 * n) <= 1  # round(0.3 x 101) = 30, in batches that each hold ~2
    whole = fn(x, torch.arange(n))["eo"]
    assert gone == [i for i in range(n) if bool((whole[i] == 0).all())]
    with pytest.raises(ValueError, match="split's size"):
        corrupter("eo", "missing", 0.3, seed=2)(x, torch.arange(n))


def test_a_training_corruption_is_the_same_on_one_and_two_workers() -> None:
    from raybal.data import load_data
    from raybal.data.pipeline import shard_order

    cfg = tiny_config(**{"data.augment.corruptions": {"eo": {"clouds": 0.5, "misregistration": 0.5}},
                         "data.augment.flip": False})
    train = load_data(cfg.data).train
    n = len(train)

    def corrupted(order: torch.Tensor) -> dict[int, torch.Tensor]:
        out = {}
        for k in range(0, len(order), 8):
            idx = order[k:k + 8]
            xb, _ = next(iter(train.batches(len(idx), order=idx, augment=(3, 2))))
            out.update({int(i): xb["eo"][j] for j, i in enumerate(idx)})
        return out

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    one = corrupted(perm)
    raw = {int(i): xb for i, xb in zip(perm[:8], next(iter(train.batches(8, order=perm[:8], raw=True)))[0]["eo"])}
    assert any(not torch.equal(one[i], raw[i]) for i in raw)  # the augmentation acted
    for rank in (0, 1):
        order = shard_order(n, shuffle=True, generator=torch.Generator().manual_seed(0), rank=rank, world=2,
                            global_batch=32)
        for i, row in corrupted(order).items():
            assert torch.equal(row, one[i]), f"sample {i} on worker {rank} of 2"


def test_a_missing_modality_filled_with_the_training_mean() -> None:
    from raybal.data import load_data
    from raybal.measure.robustness import train_means
    from raybal.noise import corrupter
    from raybal.training.loop import fit

    cfg = tiny_config()
    data = load_data(cfg.data)
    means = train_means(data, {"eo"})
    every = torch.cat([xb["eo"] for xb, _ in data.train.batches(37)]).double()  # by hand: per band
    assert torch.allclose(means["eo"].flatten(), every.mean(dim=(0, 2, 3)).float(), atol=1e-6)
    n = len(data.test)
    xb, _ = next(iter(data.test.batches(n)))
    y = corrupter("eo", "missing_mean", 0.3, seed=1, n=n, means=means)(xb, torch.arange(n))["eo"]
    filled = (y == means["eo"].expand_as(y)).flatten(1).all(1)
    assert abs(int(filled.sum()) - 0.3 * n) <= 1 and torch.equal(y[~filled], xb["eo"][~filled])
    z = corrupter("eo", "missing", 0.3, seed=1, n=n)(xb, torch.arange(n))["eo"]
    assert torch.equal((z == 0).flatten(1).all(1), filled)  # the same samples as `missing`: only the fill differs
    with pytest.raises(ValueError, match="training mean"):
        corrupter("eo", "missing_mean", 0.3, seed=1, n=n)(xb, torch.arange(n))
    r = fit(tiny_config(**{"robustness.enabled": True, "robustness.modalities": ["eo"], "robustness.splits": ["test"],
                           "robustness.corruptions": ["missing", "missing_mean"], "robustness.measure_mu": False,
                           "robustness.levels": {"missing": [1.0], "missing_mean": [1.0]}}))
    rows = {p["corruption"]: p["accuracy"] for p in r.robustness}
    assert set(rows) == {"missing", "missing_mean"} and all(0 <= v <= 1 for v in rows.values())


def test_named_bands_fail_in_every_sample_and_a_run_sweeps_them() -> None:
    from raybal.noise.absence import band_mask
    from raybal.training.loop import fit

    x = images(5, c=4, size=8) + 0.1
    y = corrupt("dead_bands", x, band_mask([0, 2]))
    assert bool((y[:, [0, 2]] == 0).all()) and torch.equal(y[:, [1, 3]], x[:, [1, 3]])
    with pytest.raises(CorruptionError, match="band 5 does not exist"):
        corrupt("dead_bands", x, band_mask([5]))
    r = fit(tiny_config(**{"robustness.enabled": True, "robustness.corruptions": [], "robustness.splits": ["test"],
                           "robustness.bands": {"dead_red": {"eo": [0]}, "storm": {"eo": [1], "sar": [0]}},
                           "robustness.measure_mu": False}))
    assert {(p["modality"], p["corruption"], p["level"]) for p in r.robustness} == {
        ("eo", "dead_red", 1.0), ("eo+sar", "storm", 1.0)}
