"""`agd-ray train` refuses bad input with one line and exit status 2 before Ray starts, and loses nothing on disk:
--num-cpus, a non-empty --output (and --overwrite), a finished --resume (exit 0), a flag against a --config key,
non-finite --config floats, CPU demand over the local Ray; and the iteration line's progress text."""

import json
import pathlib
import re

import pytest

from agd_ray import cli, results, rundir
from agd_ray.cli import build_config, build_parser, check_train_args, main

ROOT = pathlib.Path(__file__).resolve().parents[2]
TRAIN = ["train", "--env", "InvertedPendulum-v5", "--preset", "tiny", "--env-steps", "1000"]


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Any path that would start Ray fails the test instead."""
    def refuse(*args, **kwargs):
        raise AssertionError("Ray (or training) was started")

    monkeypatch.setattr(cli, "_run_training", refuse)


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def _snapshot(directory: pathlib.Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _earlier_run(directory: pathlib.Path) -> dict:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"args": {"env": "InvertedPendulum-v5"}}))
    (directory / "metrics.csv").write_text("iteration,env_steps\n1,500\n")
    return _snapshot(directory)


# -- 1: --num-cpus ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-1"])
def test_num_cpus_below_one_is_refused(tmp_path, capsys, value):
    out = tmp_path / "run"
    assert main([*TRAIN, "--num-cpus", value, "--output", str(out)]) == 2
    line = _error_line(capsys)
    assert f"num-cpus={value}" in line and ">= 1" in line
    assert not out.exists()


# -- 2: --output holding a run ---------------------------------------------------------------------------------
def test_output_holding_a_run_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "run"
    before = _earlier_run(out)
    assert main([*TRAIN, "--output", str(out)]) == 2
    line = _error_line(capsys)
    assert "exists and holds a run" in line and f"--resume {out}" in line and "--overwrite" in line
    assert _snapshot(out) == before


def test_overwrite_removes_the_earlier_run_first_and_says_so(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _earlier_run(out)
    (out / "checkpoint").mkdir()
    (out / "checkpoint" / "stale").write_text("x")
    seen = {}

    def fake_training(args, resolved, config, output, resuming):
        seen["files"] = sorted(p.name for p in output.iterdir())
        return 0

    monkeypatch.setattr(cli, "_run_training", fake_training)
    assert main([*TRAIN, "--output", str(out), "--overwrite"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "--overwrite: removed the earlier run" in first and str(out) in first
    assert seen["files"] == ["config.json"]  # only the new run's config; the old metrics and checkpoint are gone
    assert json.loads((out / "config.json").read_text())["env_steps"] == 1000
    assert "overwrite" not in json.loads((out / "config.json").read_text())["args"]


def test_overwrite_never_removes_a_directory_without_a_run(tmp_path, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert main([*TRAIN, "--output", str(out), "--overwrite"]) == 2
    assert "holds no agd-ray run" in _error_line(capsys)
    assert (out / "thesis.tex").read_text() == "precious"


def test_missing_or_empty_output_is_fine(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_run_training", lambda *a: 0)
    (tmp_path / "empty").mkdir()
    for name in ("empty", "new"):
        assert main([*TRAIN, "--output", str(tmp_path / name)]) == 0
        assert (tmp_path / name / "config.json").is_file()


def test_overwrite_cannot_be_given_with_resume(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--overwrite"]) == 2
    assert "--overwrite cannot be given with --resume" in _error_line(capsys)


# -- 3: --resume of a finished run -----------------------------------------------------------------------------
def _finished_run(directory: pathlib.Path, env_steps: int, budget: int) -> dict:
    from agd_ray.algorithm import CHECKPOINT_FORMAT

    args = vars(build_parser().parse_args([*TRAIN[:-2], "--env-steps", str(budget)]))
    args = {k: v for k, v in args.items() if k not in ("command", "resume", "overwrite", "explicit_flags")}
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"args": args}))
    checkpoint = directory / "checkpoint"
    (checkpoint / rundir.MODULE_SUBDIR).mkdir(parents=True)
    (checkpoint / "agd").mkdir()
    (checkpoint / "agd" / "format.json").write_text(json.dumps(CHECKPOINT_FORMAT))
    (checkpoint / "agd" / "counters.json").write_text(json.dumps({"env_steps": env_steps}))
    (checkpoint / rundir.CHECKPOINT_MARKER).write_text(json.dumps({"iteration": 30, "env_steps": env_steps}))
    return _snapshot(directory)


def test_resume_of_a_finished_run_says_so_and_exits_0(tmp_path, capsys):
    run = tmp_path / "run"
    before = _finished_run(run, env_steps=15200, budget=15000)
    assert main(["train", "--resume", str(run)]) == 0
    out = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(out) == 1
    assert "is finished" in out[0] and "15200 env steps" in out[0] and "--env-steps 15000" in out[0]
    assert "larger --env-steps" in out[0]
    assert _snapshot(run) == before


def test_resume_with_a_larger_budget_goes_on(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _finished_run(run, env_steps=15200, budget=15000)
    started = []
    monkeypatch.setattr(cli, "check_local_resources", lambda *a: None)
    monkeypatch.setattr(cli, "_run_training", lambda args, *rest: started.append(args.env_steps) or 0)
    assert main(["train", "--resume", str(run), "--env-steps", "20000"]) == 0
    assert started == [20000]


# -- 4: a flag against a --config key --------------------------------------------------------------------------
@pytest.mark.parametrize("flag, config, named", [
    (["--guide", "none"], "guidance.kind=sag", ("--guide none", "guidance.kind=sag")),
    (["--guide", "sag"], "guidance.kind=eag", ("--guide sag", "guidance.kind=eag")),  # the default, given
    (["--temperature", "2"], "guidance.temperature=0.5", ("--temperature 2", "guidance.temperature=0.5")),
    (["--scale", "0.1"], "guidance.scale=2", ("--scale 0.1", "guidance.scale=2")),
    (["--horizon", "5"], "world_model.horizon=8", ("--horizon 5", "world_model.horizon=8")),
])
def test_flag_and_config_key_with_different_values_are_refused(tmp_path, capsys, flag, config, named):
    out = tmp_path / "run"
    assert main([*TRAIN, *flag, "--config", config, "--output", str(out)]) == 2
    line = _error_line(capsys)
    assert all(text in line for text in named) and "give one of them" in line
    assert not out.exists()


def test_same_value_or_flag_not_given_is_no_conflict():
    args = build_parser().parse_args([*TRAIN, "--temperature", "2", "--config", "guidance.temperature=2.0",
                                      "guidance.kind=eag", "world_model.horizon=6"])
    config = build_config(args, check_train_args(args))
    assert config.guide_config.kind == "eag"  # --guide not given: the --config key sets it, as before
    assert config.guide_config.temperature == 2.0 and config.world_model_config.horizon == 6


# -- 5: non-finite floats --------------------------------------------------------------------------------------
@pytest.mark.parametrize("item, named", [("training.lr=inf", "training.lr=inf"),
                                         ("world_model.updates_per_env_step=inf", "updates_per_env_step=inf"),
                                         ("imagination.num_cpus_per_worker=nan", "num_cpus_per_worker=nan"),
                                         ("guidance.temperature=nan", "temperature=nan")])
def test_non_finite_config_floats_are_refused(tmp_path, capsys, item, named):
    out = tmp_path / "run"
    assert main([*TRAIN, "--config", item, "--output", str(out)]) == 2
    line = _error_line(capsys)
    assert named in line and "finite" in line
    assert not out.exists()


def test_infinity_where_the_field_allows_it():
    args = build_parser().parse_args([*TRAIN, "--config", "guidance.temperature=inf", "training.vf_clip_param=inf"])
    config = build_config(args, check_train_args(args))
    assert config.guide_config.temperature == float("inf") and config.vf_clip_param == float("inf")


def test_sweep_file_shares_the_finite_check():
    from agd_ray.sweep import parse_sweep

    base = {"env": "InvertedPendulum-v5", "preset": "tiny", "env_steps": 100, "seeds": [0]}
    with pytest.raises(ValueError, match=r"grid\.training\.lr=inf is not allowed; it must be a finite number"):
        parse_sweep({**base, "grid": {"training.lr": [0.001, float("inf")]}}, default_name="x")
    parse_sweep({**base, "grid": {"guidance.temperature": [1.0, float("inf")]}}, default_name="x")


# -- 6: CPU demand against the local Ray -----------------------------------------------------------------------
def test_cpu_demand_over_num_cpus_is_refused_with_sizes_that_fit(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--env", "InvertedPendulum-v5", "--preset", "cpu", "--num-env-runners", "3", "--num-cpus", "2",
            "--output", str(out)]
    assert main(argv) == 2
    line = _error_line(capsys)
    # 3 env runners x 1 + 1 evaluation runner x 1 (the cpu preset's world model takes 0 CPUs)
    assert "need 4 CPUs (env runners 3 x 1, evaluation runners 1 x 1)" in line and "has 2 (--num-cpus)" in line
    assert "--num-env-runners 1" in line and "--num-cpus 4" in line
    assert not out.exists()


def test_cpu_demand_is_rllibs_bundles_less_the_driver():
    from agd_ray.algorithm import AGD

    args = build_parser().parse_args(["train", "--env", "InvertedPendulum-v5", "--preset", "paper",
                                      "--config", "imagination.num_workers=3"])
    config = build_config(args, check_train_args(args))
    total, parts = cli.cpu_demand(config)
    bundles = AGD.default_resource_request(config).bundles
    assert total == sum(b.get("CPU", 0) for b in bundles) - bundles[0]["CPU"]
    assert total == sum(count * each for count, each in parts.values()) == 2 + 1 + 1 + 3


def test_cpu_demand_check_is_skipped_on_a_cluster(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_run_training", lambda *a: 0)
    argv = ["train", "--env", "InvertedPendulum-v5", "--preset", "cpu", "--num-env-runners", "3",
            "--address", "auto", "--output", str(tmp_path / "run")]
    assert main(argv) == 0


def test_readme_python_example_fits_two_cpus():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    setup = code.split("algo = config.build_algo()")[0]
    namespace = {}
    exec(setup, namespace)  # noqa: S102 - the README's own example, up to building the algorithm
    total, _ = cli.cpu_demand(namespace["config"])
    assert total <= 2


# -- 7: progress on the iteration line -------------------------------------------------------------------------
@pytest.mark.parametrize("step, wall, expected", [
    (12500, 136.0, "/30000 (41%) eta 3m10s"),
    (0, 5.0, "/30000 (0%) eta -"),
    (30500, 400.0, "/30000 (100%) eta 0s"),
    (1000, 360.0, "/30000 (3%) eta 2h54m"),
])
def test_progress_text(step, wall, expected):
    assert results.progress_text(step, 30000, wall) == expected


def test_idle_iteration_line_names_a_restarted_env_runner():
    previous, row = {"iteration": 4, "env_steps": 2000}, {"iteration": 5, "env_steps": 2000}
    text = results.idle_iteration_text(previous, row, {"agd": {"env_runner_reconnects": 1}},
                                   {"agd": {"env_runner_reconnects": 0}})
    assert "iteration 5 took no real env steps" in text and "1 env runner(s) died and restarted" in text
    assert "no reason reported" in results.idle_iteration_text(previous, row, {}, None)
    assert results.idle_iteration_text(previous, {"iteration": 5, "env_steps": 2500}, {}, None) is None
    assert results.idle_iteration_text(None, row, {}, None) is None


# -- 8: the metrics glossary -----------------------------------------------------------------------------------
def test_metrics_glossary_names_every_column_and_the_gains():
    glossary = (ROOT / "docs" / "METRICS.md").read_text()
    for key in [*results.ROW_KEYS, "wall_s", "guidance/advantage_gain_sigma", "quality/advantage_gain_sigma",
                "quality/real_advantage_gain_sigma", "eta"]:
        assert f"`{key}`" in glossary, key
    for group in ("agd/", "world_model/", "imagination/", "guidance/", "quality/", "replay/"):
        assert f"### {group}" in glossary, group
    assert "(docs/METRICS.md)" in (ROOT / "README.md").read_text().split("## Command line")[1].split("## ")[0]
