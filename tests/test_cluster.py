"""cluster.yaml is a valid Ray autoscaler config (Ray's own validation) and matches the package pins."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import fillout_defaults, validate_config

import raybal

ROOT = Path(__file__).resolve().parents[1]


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_cluster_yaml_passes_ray_validation() -> None:
    validate_config(fillout_defaults(load("cluster.yaml")))


def test_ray_validation_catches_a_bad_field() -> None:
    bad = load("cluster.yaml")
    bad["available_node_types"]["gpu_worker"]["max_worker"] = 3  # typo of max_workers
    with pytest.raises(jsonschema.ValidationError):
        validate_config(fillout_defaults(copy.deepcopy(bad)))


def test_cluster_shape_and_pins() -> None:
    cfg = load("cluster.yaml")
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))
    workers = [v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]]
    assert any(w["node_config"]["InstanceType"].startswith(("g", "p")) and w["max_workers"] > w["min_workers"]
               for w in workers)
    setup = "\n".join(cfg["setup_commands"])
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for pin in (d for d in deps if "==" in d):
        name, version = re.split(r"(?:\[[^\]]*\])?==", pin)
        assert re.search(rf"{re.escape(name)}(\[[^\]]*\])?=={re.escape(version)}", setup), pin
    assert f"__version__ == '{raybal.__version__}'" in setup
    assert "mount" in setup and "/mnt/raybal" in setup  # shared storage for results


def test_the_cluster_is_shut_to_the_outside() -> None:
    """The dashboard's job API runs any code for whoever reaches it: it listens on the head's private
    address, every node requires Ray's token, and the security group lets in SSH from one address only."""
    cfg = load("cluster.yaml")
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    head = next(c for c in cfg["head_start_ray_commands"] if "--head" in c)
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in "\n".join(starts)
    for c in (c for c in starts if "ray start" in c):
        assert "RAY_AUTH_MODE=token" in c and "RAY_AUTH_TOKEN_PATH=" in c, c
    token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", head).group(1)
    assert token_path in cfg["file_mounts"]  # the token reaches every node, from outside the checkout
    assert not cfg["file_mounts"][token_path].startswith(".")
    rules = cfg["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    assert all(ip["CidrIp"] != "0.0.0.0/0" and ip["CidrIp"].endswith("/32") for r in rules for ip in r["IpRanges"])


def test_kuberay_rayjob_manifest() -> None:
    job = load("deploy/rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["entrypoint"].startswith("raybal study run ")
    spec = job["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == re.search(r"ray\[[^\]]*\]==([\d.]+)", (ROOT / "pyproject.toml").read_text()).group(1)
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["authOptions"]["mode"] == "token"  # every request needs the operator's token
    assert "dashboard-host" not in spec["headGroupSpec"]["rayStartParams"]  # no public listener asked for
    assert "serviceType" not in spec["headGroupSpec"]  # ClusterIP: no LoadBalancer / NodePort
    gpu = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "1"
