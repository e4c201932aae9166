"""Issue 6, item 4 (sweeps): `agd-ray sweep` is SIGKILLed mid-sweep (its whole process group, embedded Ray
included) once the first trial has checkpointed; `agd-ray sweep --resume` finishes every trial, the killed one
from its checkpoint (its iterations continue, none is run twice in the result history), and writes the summary.
"""

import os
import signal
import subprocess
import time

import pytest
import yaml

from test_resume import AGD_RAY, ROOT, _descendants, _env, _kill

pytestmark = pytest.mark.integration

ITERATIONS = 6


def test_sigkilled_sweep_resumes(tmp_path):
    from agd_ray.sweep import trial_history

    spec = yaml.safe_load((ROOT / "tune_configs" / "smoke.yaml").read_text())
    spec.update(name="resume", max_iterations=ITERATIONS, env_steps=200 * ITERATIONS, checkpoint_every=1,
                eval_interval=3)
    spec["resources"]["max_concurrent_trials"] = 1  # the second trial waits for the first
    sweep_file = tmp_path / "resume.yaml"
    sweep_file.write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweeps"
    command = [*AGD_RAY, "sweep", str(sweep_file), "--output", str(out), "--num-cpus", "2"]

    driver = subprocess.Popen(command, env=_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    started = set()
    try:
        deadline = time.monotonic() + 120
        while not list((out / "resume").glob("*/checkpoint_000001")):
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no trial checkpoint within 120 s"
            time.sleep(0.2)
        started = _descendants(driver.pid)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        _kill(started | _descendants(driver.pid))
        driver.stderr.close()
    assert not (out / "resume" / "summary.csv").exists()  # it did not finish

    resumed = subprocess.run([*command, "--resume"], env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = sorted(p for p in (out / "resume").iterdir() if p.is_dir() and (p / "result.json").exists())
    assert len(trials) == 2
    for trial in trials:
        history = trial_history(trial)
        assert [r["training_iteration"] for r in history] == list(range(1, ITERATIONS + 1)), trial.name
        steps = [r["agd"]["env_steps_lifetime"] for r in history]
        assert all(b > a for a, b in zip(steps, steps[1:])), steps  # continued, not restarted
    summary = (out / "resume" / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and all(",done" in line for line in summary[1:])
