"""`agd-ray` bad input: non-zero exit and one line naming the value, before Ray (or any actor) starts
(cross-field errors included: `build_config` runs the config's validation)."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_cli(*args, timeout=60):
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_AUTH_MODE="disabled",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               RAY_ADDRESS="")  # never join a cluster from a test
    return subprocess.run([sys.executable, "-m", "agd_ray.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.parametrize(
    "args, named, allowed",
    [
        (["--env", "CartPole-v1"], "CartPole-v1", "InvertedPendulum-v5"),
        (["--temperature", "-1"], "temperature=-1.0", "> 0"),
        (["--temperature", "0"], "temperature=0.0", "> 0"),
        (["--temperature", "hot"], "temperature='hot'", "> 0"),
        (["--guide", "magic"], "guide='magic'", "sag"),
        (["--horizon", "1"], "horizon=1", ">= 2"),
        (["--preset", "huge"], "preset='huge'", "cpu"),
        (["--scale", "-2"], "scale=-2.0", ">= 0"),
        (["--config", "imagination.termination=learned"], "termination='learned'", "'model', 'env'"),
        (["--config", "world_model.horizonn=4"], "world_model.horizonn", "world_model.horizon"),
        # cross-field: each key is fine alone, the combination is not (AGDConfig's check, then RLlib's)
        (["--preset", "tiny", "--config", "training.minibatch_size=100"], "minibatch_size=100",
         "<= imagined transitions per update"),
        (["--preset", "tiny", "--config", "training.minibatch_size=100000"], "(100000)",
         "<= `train_batch_size_per_learner` (200)"),
    ],
)
def test_train_bad_input_exits_nonzero_with_one_line(tmp_path, args, named, allowed):
    out = tmp_path / "run"
    result = run_cli("train", "--env-steps", "10", "--output", str(out), *args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert named in lines[0] and allowed in lines[0]
    assert not out.exists()  # nothing written, nothing started


def test_evaluate_missing_checkpoint(tmp_path):
    result = run_cli("evaluate", str(tmp_path / "nope"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nope" in lines[0]


def test_help_documents_every_flag():
    result = run_cli("train", "--help")
    assert result.returncode == 0
    for flag in ("--env", "--guide", "--temperature", "--env-steps", "--seed", "--output", "--preset", "--address",
                 "--horizon", "--scale", "--num-env-runners", "--eval-interval", "--checkpoint-every", "--config",
                 "--num-cpus", "--resume", "--overwrite", "--no-tuned"):
        assert flag in result.stdout
