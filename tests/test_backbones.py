"""ResNet backbones in the torchvision layout, pretrained weights from a file, any image size."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import tiny_config

from raybal.config import ConfigError
from raybal.data import load_data
from raybal.models.pretrained import adapt_input_conv, load_pretrained
from raybal.models.resnet import ResNet
from raybal.training.loop import DistContext, _set_up, build_for, check_pretrained, fit
from raybal.training.steps import to_device

# torchvision's documented parameter counts (ImageNet heads: fc = 512 or 2048 x 1000 + 1000).
TORCHVISION_PARAMS = {"resnet18": (11_689_512, 512), "resnet34": (21_797_672, 512), "resnet50": (25_557_032, 2048)}


@pytest.mark.parametrize("arch", list(TORCHVISION_PARAMS))
def test_resnets_have_torchvision_parameter_counts_and_names(arch: str) -> None:
    total, dim = TORCHVISION_PARAMS[arch]
    net = ResNet(arch, 3)
    assert sum(p.numel() for p in net.parameters()) + dim * 1000 + 1000 == total
    assert net.dim == dim
    keys = set(net.state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.running_mean", "layer4.1.bn2.weight"} <= keys
    assert ("layer3.5.conv3.weight" in keys) == (arch == "resnet50")


def test_convnext_tiny_has_timms_parameter_count_and_names() -> None:
    from raybal.models.convnext import ConvNeXt

    net = ConvNeXt("convnext_tiny", 3)
    # timm's convnext_tiny: 28,589,128 with its head (LayerNorm 768 x 2, fc 768 x 1000 + 1000).
    assert sum(p.numel() for p in net.parameters()) + 2 * 768 + 768 * 1000 + 1000 == 28_589_128
    keys = set(net.state_dict())
    assert {"stem.0.weight", "stem.1.bias", "stages.0.blocks.0.gamma", "stages.1.downsample.0.weight",
            "stages.1.downsample.1.weight", "stages.2.blocks.8.mlp.fc2.weight", "stages.3.blocks.2.norm.bias"} <= keys
    assert not any(k.startswith("stages.0.downsample") for k in keys)


def test_a_timm_convnext_file_loads_with_its_stem_adapted(tmp_path) -> None:
    from raybal.models.convnext import ConvNeXt

    g = torch.Generator().manual_seed(4)
    state = {k: torch.randn(v.shape, generator=g) for k, v in ConvNeXt("convnext_tiny", 3, 8).state_dict().items()}
    state.update({"head.norm.weight": torch.ones(64), "head.fc.weight": torch.zeros(1000, 64)})
    path = tmp_path / "cnx.pth"
    torch.save(state, path)
    cfg = _tiny_resnet(**{"model.backbone": "convnext_tiny", "model.width": 8,
                          "model.pretrained": {"eo": str(path), "sar": str(path)}})
    model = build_for(cfg, load_data(cfg.data))
    load_pretrained(model, cfg.model.params.pretrained)
    eo, sar = model.backbone_module("eo").state_dict(), model.backbone_module("sar").state_dict()
    assert torch.equal(eo["stages.2.blocks.1.mlp.fc1.weight"], state["stages.2.blocks.1.mlp.fc1.weight"])
    assert torch.equal(eo["stem.0.weight"], state["stem.0.weight"])
    assert torch.allclose(sar["stem.0.weight"], state["stem.0.weight"].sum(1, keepdim=True))


def _tiny_resnet(**over):
    return tiny_config(**{"model.backbone": "resnet18", "model.width": 4, "model.stages": 4, **over})


def _file_state(arch: str, in_chans: int, width: int, seed: int) -> dict[str, torch.Tensor]:
    """A state_dict as torchvision would save it: random values, an fc head, BN statistics."""
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in ResNet(arch, in_chans, width).state_dict().items()}
    state["fc.weight"] = torch.randn(1000, ResNet(arch, in_chans, width).dim, generator=g)
    state["fc.bias"] = torch.zeros(1000)
    return state


@pytest.mark.parametrize("fmt", ["pth_wrapped", "safetensors"])
def test_pretrained_file_round_trips_into_every_backbone(tmp_path, fmt: str) -> None:
    cfg0 = _tiny_resnet()
    data = load_data(cfg0.data)
    assert data.shapes["eo"][0] == 3 and data.shapes["sar"][0] == 1
    state = _file_state("resnet18", 3, 4, seed=1)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "r18.safetensors"
        save_file(state, str(path))
    else:  # a training checkpoint: {"state_dict": ...} with DDP's "module." prefix
        path = tmp_path / "r18.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    cfg = _tiny_resnet(**{"model.pretrained": {"eo": str(path), "sar": str(path)}})
    model = build_for(cfg, data)
    loaded = load_pretrained(model, cfg.model.params.pretrained)
    assert loaded == {"eo": len(state) - 2, "sar": len(state) - 2}  # fc.* ignored
    eo, sar = model.backbone_module("eo").state_dict(), model.backbone_module("sar").state_dict()
    for k, v in state.items():
        if k.startswith("fc."):
            continue
        assert torch.equal(eo[k], v), k
        if k != "conv1.weight":
            assert torch.equal(sar[k], v), k
    # One SAR channel: timm's rule, the sum of the RGB kernels.
    assert torch.allclose(sar["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))


def test_first_conv_adaptation_keeps_the_response_to_a_constant_image() -> None:
    w = torch.randn(8, 3, 7, 7)
    for c in (1, 3, 6, 9):  # exact for one channel and for multiples of 3; for others, the same rule:
        a = adapt_input_conv(w, c)
        assert a.shape == (8, c, 7, 7)
        ref = torch.nn.functional.conv2d(torch.full((1, 3, 9, 9), 0.7), w)
        got = torch.nn.functional.conv2d(torch.full((1, c, 9, 9), 0.7), a)
        assert torch.allclose(got, ref, atol=1e-4), c
    assert torch.allclose(adapt_input_conv(w, 2), w[:, :2] * 1.5)
    a5 = adapt_input_conv(w, 5)
    assert torch.allclose(a5[:, 3:5], a5[:, 0:2]) and torch.allclose(a5[:, :3], w * 3 / 5)


@pytest.mark.parametrize("case, match", [
    ("missing", "file not found"),
    ("bigger", "unexpected keys .*layer1.0.conv3.weight"),
    ("narrower", "another width"),
    ("truncated", "cannot read weights"),
    ("partial", "missing keys .*layer4"),
])
def test_bad_pretrained_files_are_one_error_naming_the_key(tmp_path, case: str, match: str) -> None:
    path = tmp_path / "w.pth"
    if case == "bigger":
        torch.save(_file_state("resnet50", 3, 4, 0), path)
    elif case == "narrower":
        torch.save(_file_state("resnet18", 3, 2, 0), path)
    elif case == "truncated":
        torch.save(_file_state("resnet18", 3, 4, 0), path)
        path.write_bytes(path.read_bytes()[:500])
    elif case == "partial":
        torch.save({k: v for k, v in _file_state("resnet18", 3, 4, 0).items() if not k.startswith("layer4")}, path)
    cfg = _tiny_resnet(**{"model.pretrained": {"eo": str(path)}})
    with pytest.raises(ConfigError, match=match) as err:
        check_pretrained(cfg, load_data(cfg.data))
    assert err.value.key == "model.pretrained.eo"


@pytest.mark.parametrize("over, key", [
    ({"model.pretrained": {"eo": "w.pth"}, "model.backbone": "cnn", "model.stages": 3}, "model.pretrained"),
    ({"model.pretrained": {"lidar": "w.pth"}}, "model.pretrained.lidar"),
    ({"model.pretrained": {"eo": "w.onnx"}}, "model.pretrained.eo"),
    ({"model.stages": 3}, "model.stages"),
])
def test_bad_backbone_config_names_the_key(over, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        _tiny_resnet(**over)
    assert err.value.key == key


def test_cli_refuses_a_missing_weights_file_before_writing(tmp_path) -> None:
    results = tmp_path / "res"
    run = tmp_path / "run.toml"
    run.write_text(f"[data]\nn_train = 64\nn_val = 32\nn_test = 32\n[model]\nbackbone = 'resnet18'\n"
                   f"pretrained = {{ eo = '{tmp_path / 'nope.pth'}' }}\n")
    proc = subprocess.run([sys.executable, "-m", "raybal.cli", "train", str(run), "--results", str(results), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "model.pretrained.eo" in lines[0] and "file not found" in lines[0], proc.stderr
    assert not results.exists()


def test_fit_starts_from_the_pretrained_weights(tmp_path) -> None:
    state = _file_state("resnet18", 3, 4, seed=2)
    path = tmp_path / "eo.pth"
    torch.save(state, path)
    # lr so small that a step moves no weight measurably: the trained encoder is the file's.
    cfg = _tiny_resnet(**{"model.pretrained": {"eo": str(path)}, "train.epochs": 1, "train.lr": 1e-12,
                          "train.lr_schedule": "constant"})
    fit(cfg, checkpoint_dir=tmp_path / "ck")
    saved = torch.load(tmp_path / "ck" / "model.pt", weights_only=False)
    weights = saved["model"] if "model" in saved else saved
    for k in ("conv1.weight", "layer3.1.conv2.weight"):
        assert torch.allclose(weights[f"encoders.eo.{k}"], state[k], atol=1e-6), k
    assert not torch.allclose(weights["encoders.sar.layer3.1.conv2.weight"], state["layer3.1.conv2.weight"])


MODELS = [("late", "cnn"), ("late", "resnet18"), ("sum", "resnet34"), ("mmtm", "cnn"), ("mmtm", "resnet18"),
          ("late", "resnet50"), ("late", "convnext_tiny"), ("mmtm", "convnext_tiny"), ("unet", "unet"),
          ("unet", "resnet18")]


@pytest.mark.parametrize("size", [32, 64, 256])
@pytest.mark.parametrize("name, backbone", MODELS)
def test_every_model_trains_on_32_to_256_px(name: str, backbone: str, size: int) -> None:
    from raybal.resolve import default_config

    over = {"model.name": name, "model.backbone": backbone, "model.width": 4, "data.image_size": size,
            "data.n_train": 10, "data.n_val": 10, "data.n_test": 10}
    over.update({"data.task": "segmentation"} if name == "unet" else {"model.stages": 4})
    cfg = default_config(**over)
    data = load_data(cfg.data)
    model = build_for(cfg, data)
    xb, yb = next(data.train.batches(4))
    out = model(xb)
    expect = (4, data.num_classes) if name != "unet" else (4, data.num_classes, size, size)
    assert tuple(out.logits.shape) == expect
    torch.nn.functional.cross_entropy(out.logits, yb).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_resnet_fusion_runs_every_measure_end_to_end_in_fp32_and_bf16() -> None:
    # The GPU path's settings (bf16 autocast, channels-last) exercised on the CPU beside fp32.
    cfgs = {name: _tiny_resnet(**{"model.name": "mmtm", "balance.method": "mu_target",
                                  "balance.target": {"eo": 0.6, "sar": 0.4},
                                  "train.epochs": 2, "data.image_size": 32, **extra})
            for name, extra in (("fp32", {}),
                                ("bf16", {"train.precision": "bf16", "train.memory_format": "channels_last"}))}
    # One forward pass of the same initial weights, as fit sets it up: bf16 rounds, it does not change the
    # computation. Measured max |logit difference| / max |logit|: 0.012-0.015 over 3 initial seeds (bf16
    # keeps 8 significant bits, eps 0.0078); a wrong cast or layout is off by the logits' own size, and 0
    # would mean bf16 was never applied.
    logits = {}
    for name, cfg in cfgs.items():
        run = _set_up(cfg, "t", None, DistContext(), None)
        run.model.eval()
        xb, _ = next(run.data.train.batches(32))
        with torch.no_grad(), run.autocast:
            logits[name] = run.model(to_device(xb, run.device, run.channels_last)).logits.float()
    rel = float((logits["bf16"] - logits["fp32"]).abs().max() / logits["fp32"].abs().max())
    assert 0 < rel < 0.05, rel
    for name, cfg in cfgs.items():
        res = fit(cfg)
        train = [r["loss"] for r in res.epochs if r["split"] == "train"]
        assert train[-1] < train[0] - 0.05, (name, train)  # it learns
        assert abs(sum(res.final[f"final.mu.{m}"] for m in ("eo", "sar")) - 1.0) < 1e-6
        assert res.final["final.test_cond_util.eo"] is not None


def test_a_shallow_resnet_unet_loads_a_full_file_and_trains_every_weight(tmp_path) -> None:
    from raybal.resolve import default_config

    state = _file_state("resnet18", 3, 4, seed=3)
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    cfg = default_config(**{"model.name": "unet", "model.backbone": "resnet18", "model.width": 4, "model.depth": 2,
                            "model.pretrained": {"eo": str(path)}, "data.task": "segmentation",
                            "data.n_train": 10, "data.n_val": 10, "data.n_test": 10, "data.image_size": 32})
    data = load_data(cfg.data)
    model = build_for(cfg, data)
    load_pretrained(model, cfg.model.params.pretrained)
    eo = model.backbone_module("eo")
    assert not hasattr(eo, "layer3") and torch.equal(eo.state_dict()["layer2.1.conv2.weight"],
                                                     state["layer2.1.conv2.weight"])
    xb, yb = next(data.train.batches(4))
    torch.nn.functional.cross_entropy(model(xb).logits, yb).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_pretrained_paths_become_absolute_so_ray_workers_read_the_same_file(tmp_path, monkeypatch) -> None:
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    cfg = _tiny_resnet(**{"model.pretrained": {"eo": "weights/R18.PTH"}})
    assert cfg.model.params.pretrained["eo"] == str(tmp_path / "weights" / "R18.PTH")
    assert Path(cfg.model.params.pretrained["eo"]).is_absolute()
