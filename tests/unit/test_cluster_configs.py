"""cluster/gpu.yaml and cluster/local.yaml pass Ray's own cluster-config validation (offline, as `ray up`
does before it starts anything), keep the dashboard on the head's localhost, keep token auth on, keep
trial work off the head. What the nodes install and advertise: test_cluster_setup.py."""

import copy
import pathlib

import pytest
import yaml

pytest.importorskip("jsonschema")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
FILES = ["cluster/gpu.yaml", "cluster/local.yaml"]


def load(name):
    return yaml.safe_load((ROOT / name).read_text())


def commands(config, key):
    return " ".join(config.get(key, []))


@pytest.mark.parametrize("name", FILES)
def test_passes_ray_validation(name):
    prepared = prepare_config(copy.deepcopy(load(name)))
    validate_config(prepared)


@pytest.mark.parametrize("name", FILES)
def test_dashboard_on_localhost_and_auth_on(name):
    config = load(name)
    head = commands(config, "head_start_ray_commands")
    assert "ray start --head" in head
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    # `ray start` turns token auth on only when told or when a token file exists: both, on every node.
    assert "RAY_AUTH_MODE=disabled" not in (ROOT / name).read_text()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "RAY_AUTH_MODE=token" in commands(config, key)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


@pytest.mark.parametrize("name", FILES)
def test_head_takes_no_trial_work(name):
    config = load(name)
    head = commands(config, "head_start_ray_commands")
    assert "--num-cpus=0" in head and "--num-gpus=0" in head
    if "available_node_types" in config:
        resources = config["available_node_types"][config["head_node_type"]]["resources"]
        assert resources == {"CPU": 0, "GPU": 0, "agd_head": 1000}  # and a label (test_cluster_setup.py)


def test_gpu_cluster_node_types():
    config = load("cluster/gpu.yaml")
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    assert set(types) == {"head", "gpu_worker", "cpu_worker"}
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    assert "GPU" not in types["cpu_worker"]["resources"]


def test_local_cluster_has_no_node_types():
    config = load("cluster/local.yaml")
    assert config["provider"]["type"] == "local"
    assert "available_node_types" not in config and "head_node_type" not in config
    assert config["provider"]["head_ip"] and config["provider"]["worker_ips"]
