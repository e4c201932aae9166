"""Issue 6, item 4: the driver is killed (SIGKILL) mid-run; `agd-ray train --resume DIR` continues.

`agd-ray train --preset tiny --checkpoint-every 1` runs as a subprocess in its own process group (its embedded
Ray included); once a checkpoint exists the whole group is SIGKILLed, then `--resume` runs to a few hundred
more env steps. The metrics file is appended, its env steps and iterations strictly increase across the
resume, and the world-model update count continues from the checkpoint (not reset, no second prefill).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration

AGD_RAY = [sys.executable, "-m", "agd_ray.cli"]
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc), so that the test can kill exactly what it started."""
    children: dict[int, list[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _rows(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_sigkilled_driver_resumes_from_checkpoint(tmp_path):
    out = tmp_path / "run"
    marker = out / "checkpoint" / "agd-ray-checkpoint.json"
    driver = subprocess.Popen(
        [*AGD_RAY, "train", "--env", "InvertedPendulum-v5", "--preset", "tiny", "--env-steps", "1000000",
         "--checkpoint-every", "1", "--num-cpus", "2", "--output", str(out),
         "--config", "imagination.termination=env"],
        env=_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started = set()
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 90 s"
            time.sleep(0.2)
        started = _descendants(driver.pid)
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its process group, mid-run
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        _kill(started | _descendants(driver.pid))  # Ray processes that left the group, if any
        driver.stderr.close()
    saved = json.loads(marker.read_text())
    before = _rows(out / "metrics.jsonl")

    target = saved["env_steps"] + 400
    resumed = subprocess.run([*AGD_RAY, "train", "--resume", str(out), "--env-steps", str(target),
                              "--num-cpus", "2"], env=_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {out / 'checkpoint'} at iteration {saved['iteration']}" in resumed.stdout
    assert "preset=tiny imagination.termination=env seed=0" in resumed.stdout  # --config came back from config.json

    rows = _rows(out / "metrics.jsonl")
    kept = [r for r in before if r["training_iteration"] <= saved["iteration"]]
    assert rows[: len(kept)] == kept  # appended; rows logged after the checkpoint are redone, not repeated
    assert len(rows) > len(kept)
    iterations = [r["training_iteration"] for r in rows]
    env_steps = [r["agd/env_steps_lifetime"] for r in rows]
    updates = [r["world_model/num_updates"] for r in rows]
    assert iterations == list(range(1, len(rows) + 1))
    assert all(b > a for a, b in zip(env_steps, env_steps[1:])), env_steps
    assert all(b > a for a, b in zip(updates, updates[1:])), updates  # continues, not reset
    first = rows[len(kept)]
    assert first["agd/env_steps_lifetime"] - saved["env_steps"] == 200  # one batch: no second prefill
    assert env_steps[-1] >= target
    assert all(r["replay/size"] == r["agd/env_steps_lifetime"] for r in rows)  # replay came back whole

    # The finished checkpoint evaluates (mean action, no Ray): the mean is that of the episodes, and the same
    # seed gives the same returns.
    evaluations = [subprocess.run([*AGD_RAY, "evaluate", str(out / "checkpoint"), "--episodes", "2", "--seed", "3"],
                                  env=_env(), capture_output=True, text=True, timeout=60) for _ in range(2)]
    assert all(e.returncode == 0 for e in evaluations), evaluations[0].stderr[-2000:]
    lines = [e.stdout.strip().splitlines() for e in evaluations]
    assert lines[0] == lines[1]
    returns = [float(line.split("return ")[1]) for line in lines[0] if line.startswith("episode ")]
    assert len(returns) == 2 and all(r >= 1 for r in returns)  # InvertedPendulum pays 1 per step alive
    assert lines[0][-1].startswith(f"mean return {sum(returns) / 2:.1f} ")

    # A checkpoint of another format version is refused before Ray starts: exit 2, one line naming it.
    format_file = out / "checkpoint" / "agd" / "format.json"
    assert json.loads(format_file.read_text())["version"] == 1
    format_file.write_text(json.dumps({"format": "agd-ray-checkpoint", "version": 999}))
    refused = subprocess.run([*AGD_RAY, "train", "--resume", str(out)], env=_env(), capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "version=999" in refused.stderr and "reads version 1" in refused.stderr

    # A corrupt checkpoint is refused before Ray starts: exit 2, one line naming it.
    (out / "checkpoint" / "agd" / "counters.json").write_text("{not json")
    refused = subprocess.run([*AGD_RAY, "train", "--resume", str(out)], env=_env(), capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and str(out / "checkpoint") in refused.stderr
