"""Issue 17, items 4 and 1: what the nodes of cluster/gpu.yaml and cluster/local.yaml install, and the custom
resources their `ray start` advertises.

The setup commands run here for real in bash, in a scratch HOME where `~/agd-ray` is this checkout, with a `pip`
that records its arguments instead of installing, on a GPU node (an `nvidia-smi` on PATH) and on a CPU node. Every
install must be one that `make` does (the lock, the project without its dependencies, pip itself), or the lock's
own torch version first (its CUDA build on a GPU node): a cluster never runs other versions than the tests did.
The start commands run with a `ray` that records them: each node type advertises its resource.
"""

import json
import pathlib
import re
import shlex
import shutil
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
FILES = ["cluster/gpu.yaml", "cluster/local.yaml"]
# The node types' custom resources (tests/cluster/cluster_nodes.py places actors by them).
HEAD, GPU_WORKER, CPU_WORKER = "agd_head", "agd_gpu_worker", "agd_cpu_worker"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


def load(name):
    return yaml.safe_load((ROOT / name).read_text())


def locked_torch() -> str:
    pins = [line for line in (ROOT / "requirements.lock").read_text().splitlines() if line.startswith("torch==")]
    assert len(pins) == 1
    return pins[0].partition("==")[2]


def run_recorded(commands: list[str], home: pathlib.Path, *, gpu: bool, recorder: str) -> list[list[str]]:
    """Run `commands` one by one in bash as a node's setup would (HOME=`home`), with `recorder` (pip or ray) a
    script that records its arguments; returns one argument list per call."""
    bin_dir = home / "fakebin"  # the whole PATH: the tools the commands use, and a GPU driver or none
    bin_dir.mkdir(exist_ok=True)
    for tool in ("bash", "grep", "cut"):
        if not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(shutil.which(tool))
    log = home / f"{recorder}.log"
    log.write_text("")
    script = f'#!/bin/sh\nprintf "%s\\0" "$@" >> {log}\nprintf "\\n" >> {log}\n'
    targets = [home / "agd-venv" / "bin" / "pip"] if recorder == "pip" else [bin_dir / "ray"]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(script)
        target.chmod(0o755)
    python = home / "agd-venv" / "bin" / "python"  # `test -x` finds the venv: no real venv is made
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    nvidia = bin_dir / "nvidia-smi"
    if gpu:
        nvidia.write_text("#!/bin/sh\n")
        nvidia.chmod(0o755)
    elif nvidia.exists():
        nvidia.unlink()
    env = {"HOME": str(home), "PATH": str(bin_dir), "RAY_HEAD_IP": "192.0.2.10"}
    for command in commands:
        done = subprocess.run([str(bin_dir / "bash"), "-c", command], env=env, capture_output=True, text=True,
                              cwd=home)
        assert done.returncode == 0, (command, done.stderr)
    calls = [line for line in log.read_text().split("\n") if line]
    return [call.rstrip("\0").split("\0") for call in calls]


@pytest.fixture
def home(tmp_path):
    (tmp_path / "agd-ray").symlink_to(ROOT)  # the file_mounts: this checkout at ~/agd-ray
    return tmp_path


def make_installs() -> list[list[str]]:
    """The pip installs of `make setup` (from `make -n`: printed, not run)."""
    printed = subprocess.run(["make", "-n", "-B", "setup", "VENV=/nonexistent-venv"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    calls = []
    for line in printed.splitlines():
        words = shlex.split(line)
        if "pip" in words and "install" in words:
            calls.append(words[words.index("install"):])
    return calls


def test_make_installs_the_lock_and_the_project():
    assert make_installs() == [["install", "--quiet", "--upgrade", "pip"],
                               ["install", "--quiet", "-r", "requirements.lock"],
                               ["install", "--quiet", "--no-deps", "--no-build-isolation", "-e", "."]]


def test_lock_pins_a_plain_torch_version():
    # The setup reads this pin to install torch's CUDA build on GPU nodes: a local label (+cpu, as `pip freeze`
    # writes it for the CPU wheel) would install the CPU build there. The same version as requirements.in's.
    version = locked_torch()
    assert re.fullmatch(r"\d+(\.\d+)+", version), version
    assert f"torch=={version}" in (ROOT / "requirements.in").read_text().splitlines()
    assert f'"torch=={version}"' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("gpu", [True, False], ids=["gpu-node", "cpu-node"])
def test_setup_installs_exactly_what_make_installs(name, gpu, home):
    config = load(name)
    assert config["file_mounts"]["~/agd-ray"] == "."
    assert not any("requirements" in pattern for pattern in config.get("rsync_exclude", []))
    lock, project = str(home / "agd-ray" / "requirements.lock"), str(home / "agd-ray")
    torch = ["install", "--quiet", f"torch=={locked_torch()}"] if gpu else \
        ["install", "--quiet", "--index-url", CPU_TORCH_INDEX, f"torch=={locked_torch()}"]
    expected = [["install", "--quiet", "--upgrade", "pip"], torch, ["install", "--quiet", "-r", lock],
                ["install", "--quiet", "--no-deps", "-e", project]]
    for key in ("head_setup_commands", "worker_setup_commands"):  # on top of setup_commands: nothing to install
        assert not config.get(key), f"{name}: {key} installs outside the lock: {config.get(key)}"
    assert run_recorded(config["setup_commands"], home, gpu=gpu, recorder="pip") == expected
    # The same sources as `make` (the lock, the project without its dependencies), pip upgraded as make does.
    from_make = {tuple(c[-2:]) for c in make_installs()}
    assert from_make == {("--upgrade", "pip"), ("-r", "requirements.lock"), ("-e", ".")}
    assert {tuple(c[-2:]) for c in expected if "torch" not in c[-1]} == {
        ("--upgrade", "pip"), ("-r", lock), ("-e", project)}


def test_the_lock_holds_the_cluster_extras():
    # Installed by every node from the lock, not on top of it: an unpinned `pip install boto3` on the head once
    # moved python-dateutil down a major version under pandas (botocore needs < 3).
    names = {line.partition("==")[0].lower() for line in (ROOT / "requirements.lock").read_text().splitlines()
             if "==" in line and not line.startswith("#")}
    for package in ("ray", "aiohttp", "aiohttp-cors", "opencensus", "prometheus_client", "py-spy", "boto3"):
        assert package in names, package
    assert "ray[default,rllib,tune]==" in (ROOT / "requirements.in").read_text()


def started_resources(calls: list[list[str]]) -> dict:
    (start,) = [c for c in calls if c[:1] == ["start"]]
    (value,) = [a.partition("=")[2] for a in start if a.startswith("--resources=")]
    return json.loads(value)


@pytest.mark.parametrize("gpu", [True, False], ids=["gpu-node", "cpu-node"])
def test_local_nodes_advertise_their_types_resource(gpu, home):
    config = load("cluster/local.yaml")
    head = run_recorded(config["head_start_ray_commands"], home, gpu=gpu, recorder="ray")
    assert started_resources(head) == {HEAD: 1000}
    worker = run_recorded(config["worker_start_ray_commands"], home, gpu=gpu, recorder="ray")
    assert started_resources(worker) == {GPU_WORKER if gpu else CPU_WORKER: 1000}
    assert ["stop"] in worker and ["stop"] in head  # ray stop first, as ray up does on a fresh node


def test_gpu_cluster_node_types_advertise_their_resources(home):
    config = load("cluster/gpu.yaml")
    types = config["available_node_types"]
    assert {name: {k: v for k, v in t["resources"].items() if k.startswith("agd_")} for name, t in types.items()} == {
        "head": {HEAD: 1000}, "gpu_worker": {GPU_WORKER: 1000}, "cpu_worker": {CPU_WORKER: 1000}}
    head = run_recorded(config["head_start_ray_commands"], home, gpu=False, recorder="ray")
    assert started_resources(head) == {HEAD: 1000}  # the head type's custom resource, repeated for `ray start`
