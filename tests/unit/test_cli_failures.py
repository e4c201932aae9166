"""Issue 19: failures a user meets after the arguments were accepted, each one line with exit status 2 and nothing
on disk lost: a read-only or full --output at checkpoint time (the last complete checkpoint kept, the plot,
algo.stop() and ray.shutdown() still run), an unexpected error (the traceback only with --debug), a corrupt
checkpoint on --resume (refused before Ray starts), a GPU demand or a replay the machine cannot hold, `evaluate`
of a checkpoint with another env or damaged files, and sweep files that are not YAML text. Also what a resumed
run continues: metrics rows, wall time and TensorBoard steps without duplicates, the actors' snapshots under
--output and gone with the run, and the header naming the effective guide.

No Ray: `ray.init`/`ray.shutdown` are recorded and `AGDConfig.build_algo` returns `FakeAlgo`, which trains in
steps of 200 env steps and writes a checkpoint with the files `--resume` checks (world model zip, replay npz)."""

import errno
import json
import pathlib
import struct
import time

import pytest

from agd_ray import cli, results, rundir
from agd_ray.cli import main

TRAIN = ["train", "--env", "InvertedPendulum-v5", "--preset", "tiny"]
STEP = 200


class Killed(BaseException):
    """The driver dies here (nothing after it runs, as with SIGKILL, but Python's own unwinding)."""


class FakeAlgo:
    """What `_run_training` uses of AGD, without Ray; `fail_save` maps a save number (1, 2, ...) to an exception."""

    def __init__(self, config, logdir: pathlib.Path, fail_save=None, kill_at=None):
        self.config, self.logdir = config, str(logdir)
        logdir.mkdir(parents=True, exist_ok=True)  # as RLlib's Trainable makes ~/ray_results/<time>
        self.iteration, self._counters, self.saves, self.stopped = 0, {"env_steps": 0}, 0, False
        self.fail_save, self.kill_at = fail_save or {}, kill_at

    def train(self) -> dict:
        if self.iteration + 1 == self.kill_at:
            raise Killed
        self.iteration += 1
        self._counters["env_steps"] += STEP
        # a snapshot under recovery.snapshot_dir/<log directory name>, as AGD._snapshot_actors writes one
        snapshots = pathlib.Path(self.config.recovery_config.snapshot_dir) / pathlib.Path(self.logdir).name
        snapshots.mkdir(parents=True, exist_ok=True)
        (snapshots / "world_model.pt").write_bytes(b"snapshot")
        return {"training_iteration": self.iteration, "time_this_iter_s": 0.01, "time_total_s": 0.01 * self.iteration,
                "agd": {"env_steps_lifetime": self._counters["env_steps"], "evaluated": False},
                "env_runners": {"episode_return_mean": float(self.iteration)},
                "config": {"lr": 0.0003, "gamma": 0.99}}

    def save_to_path(self, path: str) -> str:
        import torch

        from agd_ray.algorithm import CHECKPOINT_FORMAT
        from agd_ray.replay.buffer import ReplayBuffer

        self.saves += 1
        root = pathlib.Path(path)
        (root / rundir.MODULE_SUBDIR).mkdir(parents=True)
        (root / "algorithm_state.pkl").write_bytes(b"rllib state " * 50)  # written before the disk fills up
        failure = self.fail_save.get(self.saves)
        if failure is not None:
            raise failure
        extra = root / "agd"
        extra.mkdir()
        (extra / "format.json").write_text(json.dumps(CHECKPOINT_FORMAT))
        (extra / "counters.json").write_text(json.dumps({**self._counters, "iteration": self.iteration}))
        torch.save({"weights": torch.arange(4.0)}, extra / "world_model.pt")
        ReplayBuffer(obs_dim=4, act_dim=1, qpos_dim=2, qvel_dim=2, capacity=8).save(extra / "replay")
        return path

    def restore_from_path(self, path: str) -> None:
        counters = json.loads((pathlib.Path(path) / "agd" / "counters.json").read_text())
        self.iteration = counters.pop("iteration")
        self._counters.update(counters)

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Ray and the algorithm replaced: returns a record of the algorithms built and of ray.init/shutdown calls."""
    import ray

    from agd_ray.config import AGDConfig

    record = {"algos": [], "ray": [], "options": {}}

    def build_algo(config, *args, **kwargs):
        algo = FakeAlgo(config, tmp_path / "ray_results" / f"run{len(record['algos'])}", **record["options"])
        record["algos"].append(algo)
        return algo

    monkeypatch.setattr(AGDConfig, "build_algo", build_algo)
    monkeypatch.setattr(ray, "init", lambda *a, **k: record["ray"].append("init"))
    monkeypatch.setattr(ray, "shutdown", lambda *a, **k: record["ray"].append("shutdown"))
    return record


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def _files(directory: pathlib.Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _tb_steps(directory: pathlib.Path) -> dict:
    """{tag: [steps]} over every event file in `directory`, in file order; each file must parse to its end."""
    from tensorboardX.proto.event_pb2 import Event

    steps = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = Event()
            event.ParseFromString(data[offset + 12:offset + 12 + length])
            offset += 16 + length
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
        assert offset == len(data), path
    return steps


# -- a read-only or full --output at checkpoint time ------------------------------------------------------------
def _full_disk(path: str) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", path)


def test_full_disk_at_a_checkpoint_keeps_the_last_complete_one_and_still_cleans_up(tmp_path, capsys, fake):
    out = tmp_path / "run"
    fake["options"] = {"fail_save": {2: _full_disk(str(out / "checkpoint.tmp" / "agd" / "world_model.pt"))}}
    assert main([*TRAIN, "--env-steps", "1000", "--checkpoint-every", "1", "--num-cpus", "1",
                 "--output", str(out)]) == 2
    line = _error_line(capsys)
    assert f"could not write the checkpoint to {out / 'checkpoint.tmp'}" in line
    assert "No space left on device (errno 28)" in line
    assert f"the last complete checkpoint, {out / 'checkpoint'}, is kept" in line
    assert not (out / "checkpoint.tmp").exists() and not (out / "checkpoint.old").exists()  # no partial save left
    saved = json.loads((out / "checkpoint" / rundir.CHECKPOINT_MARKER).read_text())
    assert saved == {"iteration": 1, "env_steps": STEP}  # the first save, whole
    assert rundir.check_checkpoint_data(out / "checkpoint", model_based=True) is None
    algo, = fake["algos"]
    assert algo.stopped and fake["ray"] == ["init", "shutdown"]
    assert (out / "learning_curve.png").stat().st_size > 0
    assert [r["iteration"] for r in results.read_rows(out / "metrics.csv")] == [1.0, 2.0]


def test_read_only_output_at_the_first_checkpoint_is_one_line(tmp_path, capsys, fake):
    out = tmp_path / "run"
    fake["options"] = {"fail_save": {1: OSError(errno.EROFS, "Read-only file system", str(out / "checkpoint.tmp"))}}
    assert main([*TRAIN, "--env-steps", "400", "--num-cpus", "1", "--output", str(out)]) == 2
    line = _error_line(capsys)
    assert "Read-only file system (errno 30)" in line and "no earlier checkpoint" in line
    assert not (out / "checkpoint").exists() and not (out / "checkpoint.tmp").exists()
    assert fake["algos"][0].stopped and fake["ray"] == ["init", "shutdown"]


def test_replay_actor_failing_to_write_is_the_same_one_line(tmp_path, capsys, fake):
    from ray.exceptions import RayTaskError

    out = tmp_path / "run"
    actor_error = RayTaskError("ReplayActor.save", "traceback", _full_disk(str(out / "x.npz"))).as_instanceof_cause()
    fake["options"] = {"fail_save": {1: actor_error}}
    assert main([*TRAIN, "--env-steps", "400", "--num-cpus", "1", "--output", str(out)]) == 2
    line = _error_line(capsys)
    assert "No space left on device (errno 28)" in line and str(out / "x.npz") in line


def test_a_failing_plot_does_not_skip_stop_and_shutdown(tmp_path, capsys, fake, monkeypatch):
    out = tmp_path / "run"
    fake["options"] = {"fail_save": {1: _full_disk(str(out / "checkpoint.tmp"))}}

    def full(*args, **kwargs):
        raise _full_disk(str(out / "learning_curve.png"))

    monkeypatch.setattr(cli, "plot_learning_curve", full)
    assert main([*TRAIN, "--env-steps", "400", "--num-cpus", "1", "--output", str(out)]) == 2
    assert "could not write the checkpoint" in _error_line(capsys)  # the first failure, not the plot's
    assert fake["algos"][0].stopped and fake["ray"] == ["init", "shutdown"]


def test_a_plot_failing_alone_is_one_line_after_the_checkpoint(tmp_path, capsys, fake, monkeypatch):
    out = tmp_path / "run"

    def full(*args, **kwargs):
        raise _full_disk(str(out / "learning_curve.png"))

    monkeypatch.setattr(cli, "plot_learning_curve", full)
    assert main([*TRAIN, "--env-steps", "400", "--num-cpus", "1", "--output", str(out)]) == 2
    line = _error_line(capsys)
    assert f"writing {out / 'learning_curve.png'} failed: No space left on device (errno 28)" in line
    assert (out / "checkpoint" / rundir.CHECKPOINT_MARKER).is_file()
    assert fake["algos"][0].stopped and fake["ray"] == ["init", "shutdown"]


@pytest.mark.parametrize("error, expected", [
    (OSError(errno.ENOSPC, "No space left on device", "/out/actor_snapshots/x/world_model.pt"),
     "could not write the run's outputs in {out}: No space left on device (errno 28): /out/actor_snapshots/x/"),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "error: ConnectionRefusedError: [Errno 111]"),
])
def test_an_os_error_during_training_is_one_line(tmp_path, capsys, fake, monkeypatch, error, expected):
    def fails(self):
        raise error

    monkeypatch.setattr(FakeAlgo, "train", fails)
    out = tmp_path / "run"
    assert main([*TRAIN, "--env-steps", "400", "--num-cpus", "1", "--output", str(out)]) == 2
    assert expected.format(out=out) in _error_line(capsys)  # a disk's errno names the output, any other the error
    assert fake["algos"][0].stopped and fake["ray"] == ["init", "shutdown"]
    assert (out / "config.json").is_file()


def test_an_unexpected_error_is_one_line_and_the_traceback_only_with_debug(tmp_path, capsys, fake, monkeypatch):
    from ray.exceptions import RayTaskError

    def dies(self):
        cause = RuntimeError("the world_model actor died after 3 restarts; recovery.max_actor_restarts=3\nmore")
        raise RayTaskError("WorldModelActor.train", "traceback", cause).as_instanceof_cause()

    monkeypatch.setattr(FakeAlgo, "train", dies)
    argv = [*TRAIN, "--env-steps", "400", "--num-cpus", "1"]
    assert main([*argv, "--output", str(tmp_path / "a")]) == 2
    line = _error_line(capsys)
    assert line == ("agd-ray train: error: RuntimeError: the world_model actor died after 3 restarts; "
                    "recovery.max_actor_restarts=3 (--debug shows the traceback)")
    assert fake["algos"][0].stopped and fake["ray"] == ["init", "shutdown"]
    with pytest.raises(RuntimeError) as raised:
        main([*argv, "--output", str(tmp_path / "b"), "--debug"])
    assert "max_actor_restarts=3" in str(raised.value.cause)
    assert fake["algos"][1].stopped and fake["ray"][2:] == ["init", "shutdown"]


# -- the effective settings, TensorBoard, snapshots -------------------------------------------------------------
def test_header_config_json_and_plot_name_the_effective_guide(tmp_path, capsys, fake, monkeypatch):
    out = tmp_path / "run"
    titles = []
    monkeypatch.setattr(cli, "plot_learning_curve", lambda rows, path, title: titles.append(title))
    assert main([*TRAIN, "--env-steps", "400", "--num-cpus", "1", "--output", str(out),
                 "--config", "guidance.kind=eag", "guidance.temperature=0.5"]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("agd-ray train: Inv"))
    assert "guide=eag temperature=0.5 " in header
    stored = json.loads((out / "config.json").read_text())
    assert stored["guide"] == "eag" and stored["guidance.temperature"] == 0.5
    assert titles == ["InvertedPendulum-v5 eag seed 0"]


def test_snapshots_live_under_output_and_go_with_the_run(tmp_path, fake):
    out = tmp_path / "run"
    assert main([*TRAIN, "--env-steps", "400", "--num-cpus", "1", "--output", str(out)]) == 0
    algo, = fake["algos"]
    assert algo.config.recovery_config.snapshot_dir == str((out / rundir.SNAPSHOT_DIR).resolve())
    # AGD.cleanup removes the run's own snapshot directory (FakeAlgo.stop does not): the base stays until then
    assert sorted(p.name for p in (out / rundir.SNAPSHOT_DIR).iterdir()) == ["run0"]
    assert not pathlib.Path(algo.logdir).exists()  # RLlib's empty log directory outside --output is removed
    assert json.loads((out / "config.json").read_text())["recovery.snapshot_dir"] is None  # the default: as above


def test_tensorboard_gets_the_config_once_as_text_not_as_scalars(tmp_path, fake):
    out = tmp_path / "run"
    assert main([*TRAIN, "--env-steps", "400", "--num-cpus", "1", "--output", str(out)]) == 0
    steps = _tb_steps(out / "tb")
    assert not [tag for tag in steps if tag.startswith("config/") and tag != "config/text_summary"]
    assert steps["config/text_summary"] == [0]
    assert steps["agd/env_steps_lifetime"] == [200, 400]
    assert '"config/lr": 0.0003' in (out / "metrics.jsonl").read_text()  # metrics.jsonl keeps every key


def test_resume_after_a_kill_continues_rows_wall_time_and_tensorboard_without_duplicates(tmp_path, capsys, fake):
    out = tmp_path / "run"
    fake["options"] = {"kill_at": 4}
    with pytest.raises(Killed):  # checkpoints at iterations 2; iteration 3 logged after it, then the driver dies
        main([*TRAIN, "--env-steps", "1000", "--checkpoint-every", "2", "--num-cpus", "1", "--output", str(out)])
    stale = out / rundir.SNAPSHOT_DIR / "run0"
    stale.mkdir(parents=True, exist_ok=True)
    (stale / "world_model.pt").write_bytes(b"from before the kill")  # a killed driver's snapshots stay behind
    assert _tb_steps(out / "tb")["agd/env_steps_lifetime"] == [200, 400, 600]
    wall_before = results.read_rows(out / "metrics.csv")[1]["wall_s"]
    capsys.readouterr()

    fake["options"] = {}
    assert main(["train", "--resume", str(out), "--env-steps", "1000"]) == 0
    assert f"resumed from {out / 'checkpoint'} at iteration 2, env steps 400" in capsys.readouterr().out
    rows = results.read_rows(out / "metrics.csv")
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5]  # iteration 3 redone, not repeated
    walls = [r["wall_s"] for r in rows]
    assert walls[1] == pytest.approx(wall_before) and all(b > a for a, b in zip(walls, walls[1:]))
    steps = _tb_steps(out / "tb")
    assert steps["agd/env_steps_lifetime"] == [200, 400, 600, 800, 1000]  # no second point at 600
    assert all(len(s) == len(set(s)) for s in steps.values())
    assert not stale.exists()  # the killed driver's snapshots are removed on --resume


def test_truncating_tensorboard_drops_later_steps_and_a_record_cut_short(tmp_path):
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    writer.add_text("config", "settings", 0)
    for step in (200, 400, 600):
        writer.add_scalar("a", step / 100, step)
        writer.add_scalar("b", -step, step)
    writer.close()
    path, = tmp_path.glob("events.out.tfevents.*")
    path.write_bytes(path.read_bytes() + b"\x40\x00\x00\x00\x00\x00")  # the kill cut a record short
    assert results.truncate_tensorboard(tmp_path, 400) == 2
    assert _tb_steps(tmp_path) == {"config/text_summary": [0], "a": [200, 400], "b": [200, 400]}
    assert not list(tmp_path.glob(".truncating*"))


@pytest.mark.parametrize("flags, named", [(["--env", "HalfCheetah-v5"], "--env"),  # the default, another env
                                          (["--seed", "0", "--guide", "sag"], "--guide, --seed"),  # the run's own
                                          (["--preset", "tiny"], "--preset")])  # the run's own value
def test_resume_refuses_every_other_flag_given_even_at_its_default(tmp_path, capsys, fake, flags, named):
    out = tmp_path / "run"
    _finished_checkpoint(out, fake, capsys)
    before = _files(out)
    assert main(["train", "--resume", str(out), "--env-steps", "800", *flags]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"agd-ray train: error: {named} cannot be given with --resume")
    assert fake["ray"] == [] and _files(out) == before


def test_resume_applies_a_resume_flag_given_at_its_default(tmp_path, capsys, fake):
    out = tmp_path / "run"
    assert main([*TRAIN, "--env-steps", "400", "--checkpoint-every", "1", "--num-cpus", "1", "--output", str(out)]) == 0
    assert fake["algos"][0].saves == 2  # after iteration 1 and at the end
    assert main(["train", "--resume", str(out), "--env-steps", "1000", "--checkpoint-every", "0"]) == 0
    assert fake["algos"][1].saves == 1  # --checkpoint-every 0 (the default) replaced the run's 1: only the last


# -- --resume of a damaged checkpoint: refused before Ray starts ------------------------------------------------
def _finished_checkpoint(out: pathlib.Path, fake, capsys) -> None:
    assert main([*TRAIN, "--env-steps", "400", "--num-cpus", "1", "--output", str(out)]) == 0
    capsys.readouterr()
    fake["ray"].clear()


def test_corrupt_replay_in_the_checkpoint_is_refused_quickly_with_the_reason(tmp_path, capsys, fake):
    out = tmp_path / "run"
    _finished_checkpoint(out, fake, capsys)
    npz, = (out / "checkpoint" / "agd" / "replay").glob("replay-*.npz")
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    before = _files(out)
    started = time.perf_counter()
    assert main(["train", "--resume", str(out), "--env-steps", "800"]) == 2
    assert time.perf_counter() - started < 5
    line = _error_line(capsys)
    assert str(npz) in line and "does not match" in line and "cannot resume" in line
    assert fake["ray"] == [] and _files(out) == before


def test_corrupt_world_model_in_the_checkpoint_is_refused_with_the_file(tmp_path, capsys, fake):
    out = tmp_path / "run"
    _finished_checkpoint(out, fake, capsys)
    world_model = out / "checkpoint" / "agd" / "world_model.pt"
    world_model.write_bytes(world_model.read_bytes()[:100])  # cut short
    before = _files(out)
    assert main(["train", "--resume", str(out), "--env-steps", "800"]) == 2
    line = _error_line(capsys)
    assert str(world_model) in line and "unreadable" in line and "cannot resume" in line
    assert fake["ray"] == [] and _files(out) == before


# -- GPUs --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("found, gpus, fits", [(0, "2", "world_model.num_gpus=0"), (1, "2", "world_model.num_gpus=1")])
def test_gpu_demand_over_the_machine_is_refused_with_the_numbers(tmp_path, capsys, fake, monkeypatch, found, gpus,
                                                                 fits):
    monkeypatch.setattr(cli, "local_ray_gpus", lambda: found)
    out = tmp_path / "run"
    assert main([*TRAIN, "--num-cpus", "1", "--output", str(out), "--config", f"world_model.num_gpus={gpus}"]) == 2
    line = _error_line(capsys)
    assert f"need {gpus} GPUs (world model 1 x {gpus}) but the local Ray has {found}" in line and fits in line
    assert not out.exists() and fake["ray"] == []


def test_gpu_demand_that_fits_starts(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(cli, "local_ray_gpus", lambda: 1)
    out = tmp_path / "run"
    assert main([*TRAIN, "--env-steps", "200", "--num-cpus", "1", "--output", str(out), "--config",
                 "world_model.num_gpus=0.5", "imagination.num_workers=2", "imagination.num_gpus_per_worker=0.25"]) == 0
    assert fake["ray"] == ["init", "shutdown"]


# -- replay memory ----------------------------------------------------------------------------------------------
def test_replay_estimate_is_what_the_buffer_allocates():
    from agd_ray.replay.buffer import ReplayBuffer

    buffer = ReplayBuffer(obs_dim=17, act_dim=6, qpos_dim=9, qvel_dim=9, capacity=10)
    allocated = sum(array.nbytes for array in buffer._slots.values())
    assert allocated == 10 * ReplayBuffer.bytes_per_transition(17, 6, 9, 9) == 10 * 342


def test_replay_larger_than_the_memory_is_refused_with_the_estimate(tmp_path, capsys, fake, monkeypatch):
    monkeypatch.setattr(cli, "available_memory", lambda: 2 * 1024 ** 3)
    out = tmp_path / "run"
    assert main([*TRAIN, "--num-cpus", "1", "--output", str(out), "--config", "replay.capacity=100000000"]) == 2
    line = _error_line(capsys)
    # InvertedPendulum: observations 4, action 1, qpos 2, qvel 2 -> 106 bytes a transition
    assert "replay.capacity=100000000 needs 9.87 GiB (106 bytes per InvertedPendulum-v5 transition)" in line
    assert "has 2 GiB of memory available" in line and "--config replay.capacity=10129000 (half of it)" in line
    assert not out.exists() and fake["ray"] == []
    assert main([*TRAIN, "--env-steps", "200", "--num-cpus", "1", "--output", str(out), "--config",
                 "replay.capacity=10129000"]) == 0  # the size it names fits


# -- evaluate ----------------------------------------------------------------------------------------------------
@pytest.fixture
def policy_checkpoint(tmp_path):
    """OUTPUT/checkpoint with an (untrained) InvertedPendulum policy, written without Ray, and its config.json."""
    from tiny_module import tiny_module_spec

    out = tmp_path / "run"
    tiny_module_spec(4, 1).build().save_to_path(str(out / "checkpoint" / rundir.MODULE_SUBDIR))
    (out / "config.json").write_text(json.dumps({"env": "InvertedPendulum-v5"}))
    return out / "checkpoint"


def test_evaluate_with_the_run_env_runs(policy_checkpoint, capsys):
    assert main(["evaluate", str(policy_checkpoint), "--episodes", "1"]) == 0
    assert "mean return" in capsys.readouterr().out


def test_evaluate_with_another_env_is_one_line_naming_both(policy_checkpoint, capsys):
    before = _files(policy_checkpoint.parent)
    assert main(["evaluate", str(policy_checkpoint), "--env", "HalfCheetah-v5", "--episodes", "1"]) == 2
    line = _error_line(capsys)
    assert "env='HalfCheetah-v5' does not fit the policy" in line and "trained on InvertedPendulum-v5" in line
    assert "(17,)" in line and "(4,)" in line and "give the --env it was trained on" in line
    assert _files(policy_checkpoint.parent) == before


@pytest.mark.parametrize("text", ["{not json", '{"env": 5}', "[]"])
def test_evaluate_with_a_corrupt_config_json_names_it(policy_checkpoint, capsys, text):
    config_file = policy_checkpoint.parent / "config.json"
    config_file.write_text(text)
    assert main(["evaluate", str(policy_checkpoint), "--episodes", "1"]) == 2
    line = _error_line(capsys)
    assert str(config_file) in line and "pass --env" in line
    assert config_file.read_text() == text


def test_evaluate_with_a_corrupt_module_state_names_the_policy(policy_checkpoint, capsys):
    directory = policy_checkpoint / rundir.MODULE_SUBDIR
    state, = directory.glob("module_state*")
    state.write_bytes(state.read_bytes()[:200])
    before = _files(policy_checkpoint.parent)
    assert main(["evaluate", str(policy_checkpoint), "--env", "InvertedPendulum-v5", "--episodes", "1"]) == 2
    line = _error_line(capsys)
    assert f"the policy in {directory} could not be loaded" in line
    assert _files(policy_checkpoint.parent) == before


# -- sweep files that are not YAML text --------------------------------------------------------------------------
@pytest.mark.parametrize("content, named", [
    (bytes(range(256)), "is not text (byte 0x80 at offset 128 is not UTF-8)"),
    (b"\xff\xfe\x00garbage", "is not text (byte 0xff at offset 0 is not UTF-8)"),
    (b"name: x\nseeds: [1, 2\nenv: y\n", "is not valid YAML: "),
    (b"name: x\x00\n", "is not valid YAML: character #x0000 at offset 7"),
])
def test_sweep_file_that_is_not_yaml_text_is_one_line_naming_it(tmp_path, capsys, content, named):
    path = tmp_path / "sweep.yaml"
    path.write_bytes(content)
    assert main(["sweep", str(path)]) == 2
    line = _error_line(capsys)
    assert str(path) in line and named in line


def test_sweep_file_that_is_a_directory_says_so(tmp_path, capsys):
    assert main(["sweep", str(tmp_path)]) == 2
    assert "is a directory" in _error_line(capsys)


def test_config_item_that_is_not_yaml_is_one_line(tmp_path, capsys):
    assert main([*TRAIN, "--output", str(tmp_path / "run"), "--config", "training.lr=[1"]) == 2
    line = _error_line(capsys)
    assert "--config 'training.lr=[1'" in line and "is not a YAML value" in line
