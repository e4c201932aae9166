"""Tuned settings as data (tuned/<env>.yaml): every shipped file loads and builds; `agd-ray train --env X` starts
from X's file and says so; flags and --config win over it; --no-tuned and another --preset leave it unused;
--resume keeps the run's own settings; a bad file fails with one line. No Ray, no training: `_run_training` is
replaced by a recorder (the config.json `train` writes before it is the run's whole configuration)."""

import json
import pathlib
import re
import shlex
import types

import pytest

from agd_ray import cli, rundir, tuned
from agd_ray.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "tuned").glob("*.yaml"))
# The settings docs/RESULTS.md measured on HalfCheetah-v5 ("The evidence, first pass": the 5-step settings of
# tune_configs/halfcheetah_cpu.yaml, EAG by resampling at temperature 1), written out as a user would type them.
HALFCHEETAH_BY_HAND = ["--preset", "cpu", "--guide", "eag", "--temperature", "1.0", "--config",
                       "world_model.updates_per_env_step=2.0", "world_model.policy_guidance=reparam",
                       "world_model.action_input=clean", "world_model.horizon=5", "imagination.batch_size=512"]
# `make run` before its settings moved into tuned/InvertedPendulum-v5.yaml, with the 8 reverse steps measured since.
MAKE_RUN_BEFORE = ("train --env InvertedPendulum-v5 --guide sag --temperature 1.0 --preset cpu --env-steps 15000 "
                   "--seed 0 --output runs/make-run --overwrite --config world_model.policy_guidance=causal "
                   "imagination.termination=env world_model.updates_per_env_step=2 guidance.method=gradient "
                   "world_model.sampling_steps=8")


@pytest.fixture
def train(monkeypatch, tmp_path, capsys):
    """`train(*argv)` -> the exit status, the built config (None if refused), stdout and stderr lines and the
    config.json written; each call writes into a fresh --output under tmp_path unless argv gives one."""
    monkeypatch.chdir(ROOT)  # tuned files are shown relative to the checkout, as `make run` sees them
    counter = iter(range(1000))

    def run(*argv):
        built = {}

        def record(args, resolved, config, output, resuming):
            built["config"], built["output"] = config, output
            return 0

        monkeypatch.setattr(cli, "_run_training", record)
        argv = list(argv)
        if "--output" not in argv and "--resume" not in argv:
            argv += ["--output", str(tmp_path / f"run{next(counter)}")]
        status = main(["train", *argv])
        captured = capsys.readouterr()
        stored = json.loads((built["output"] / "config.json").read_text()) if "output" in built else None
        return types.SimpleNamespace(status=status, config=built.get("config"), stored=stored,
                                     out=[line for line in captured.out.splitlines() if line.strip()],
                                     err=[line for line in captured.err.splitlines() if line.strip()])

    return run


def _settings(stored: dict) -> dict:
    """config.json less what names the invocation (argv and the raw arguments)."""
    return {k: v for k, v in stored.items() if k not in ("argv", "args")}


def _write(folder: pathlib.Path, name: str, text: str) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


GOOD_PENDULUM = """\
env: InvertedPendulum-v5
preset: cpu
config:
  guidance.kind: eag
  guidance.temperature: 0.5
  world_model.horizon: 6
evidence:
  section: "a heading"
  table: "a row"
  commit: "abc1234"
note: a test file
"""


# -- the shipped files -----------------------------------------------------------------------------------------
def test_the_tasks_with_evidence_have_a_file():
    assert {"HalfCheetah-v5", "InvertedPendulum-v5"} <= {path.stem for path in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_file_loads_points_at_results_and_builds(path, train):
    loaded = tuned.load_tuned(path, presets=cli.PRESETS)
    assert loaded.env == path.stem
    results = (ROOT / "docs" / "RESULTS.md").read_text()
    assert loaded.evidence["section"] in re.findall(r"^#+ (.+?)\s*$", results, re.M)
    commits = re.findall(r"\b[0-9a-f]{7,40}\b", loaded.evidence["commit"])
    assert commits and all(commit in results for commit in commits)
    run = train("--env", path.stem, "--env-steps", "1000")
    assert run.status == 0 and run.config is not None, run.err
    assert f"tuned/{path.name}" in run.out[0]


# -- train starts from the file --------------------------------------------------------------------------------
def test_halfcheetah_without_flags_is_its_settings_given_by_hand(train):
    tuned_run = train("--env", "HalfCheetah-v5")
    assert tuned_run.status == 0, tuned_run.err
    assert tuned_run.out[0].startswith("agd-ray train:") and "tuned/HalfCheetah-v5.yaml" in tuned_run.out[0]
    by_hand = train("--env", "HalfCheetah-v5", "--no-tuned", *HALFCHEETAH_BY_HAND)
    assert by_hand.status == 0 and not any("tuned" in line for line in by_hand.out)
    assert _settings(tuned_run.stored) == _settings(by_hand.stored)
    config = tuned_run.config
    assert (config.guide_config.kind, config.guide_config.temperature, config.guide_config.method) == (
        "eag", 1.0, "resample")
    assert (config.world_model_config.horizon, config.imagination_config.batch_size) == (5, 512)
    assert (config.world_model_config.policy_guidance, config.world_model_config.action_input) == ("reparam", "clean")
    assert config.world_model_training.updates_per_env_step == 2.0
    assert tuned_run.stored["args"]["guide"] == "eag"  # the header and the default --output name say eag


def test_make_run_runs_the_settings_it_ran_before(train, tmp_path):
    recipe = (ROOT / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n", 1)[0]
    command = shlex.split(recipe.replace("\\\n", " ").split("agd-ray", 1)[1])
    before = shlex.split(MAKE_RUN_BEFORE)[1:]
    assert command[0] == "train"
    runs = []
    for argv in (command[1:], before):
        argv[argv.index("--output") + 1] = str(tmp_path / "make-run")
        runs.append(train(*argv))
    now, then = runs
    assert now.status == then.status == 0
    assert _settings(now.stored) == _settings(then.stored)
    assert now.stored["args"]["config"] == then.stored["args"]["config"]


def test_a_flag_or_config_key_overrides_the_tuned_value_without_a_conflict(train):
    run = train("--env", "HalfCheetah-v5", "--temperature", "0.5", "--horizon", "8",
                "--config", "imagination.batch_size=128")
    assert run.status == 0, run.err
    config = run.config
    assert config.guide_config.temperature == 0.5 and config.world_model_config.horizon == 8
    assert config.imagination_config.batch_size == 128
    # the file's other settings stay
    assert config.guide_config.kind == "eag" and config.world_model_config.policy_guidance == "reparam"
    run = train("--env", "HalfCheetah-v5", "--guide", "none", "--config", "world_model.horizon=7")
    assert run.status == 0, run.err
    assert (run.config.guide_config.kind, run.config.world_model_config.horizon) == ("none", 7)


def test_flag_against_config_key_is_still_refused(train):
    run = train("--env", "HalfCheetah-v5", "--temperature", "2", "--config", "guidance.temperature=0.5")
    assert run.status == 2 and run.config is None
    assert len(run.err) == 1 and "--temperature 2" in run.err[0] and "guidance.temperature=0.5" in run.err[0]


def test_no_tuned_gives_the_presets_defaults(train):
    run = train("--env", "HalfCheetah-v5", "--preset", "cpu", "--no-tuned")
    assert run.status == 0 and not any("tuned" in line for line in run.out)
    config = run.config
    # the cpu preset and the flags' defaults, none of the file's values
    assert (config.guide_config.kind, config.guide_config.temperature) == ("sag", 1.0)
    assert (config.world_model_config.horizon, config.imagination_config.batch_size) == (10, 256)
    assert (config.world_model_config.policy_guidance, config.world_model_config.action_input) == ("score", "scaled")
    assert config.world_model_training.updates_per_env_step == 0.5
    assert run.stored["args"]["config"] == []


def test_another_preset_leaves_the_file_unused(train):
    run = train("--env", "HalfCheetah-v5", "--preset", "tiny")
    assert run.status == 0 and not any("tuned" in line for line in run.out)
    assert (run.config.guide_config.kind, run.config.world_model_config.horizon) == ("sag", 4)  # tiny's horizon


def test_a_task_without_a_file_starts_from_the_preset(train, monkeypatch, tmp_path):
    monkeypatch.setattr(tuned, "TUNED_DIR", tmp_path / "none-here")
    run = train("--env", "HalfCheetah-v5", "--preset", "cpu")
    assert run.status == 0 and not any("tuned" in line for line in run.out)
    assert run.config.world_model_config.horizon == 10


# -- --resume --------------------------------------------------------------------------------------------------
def test_resume_keeps_the_settings_saved_with_the_run(train, monkeypatch, tmp_path):
    from agd_ray.algorithm import CHECKPOINT_FORMAT

    folder = tmp_path / "tuned"
    path = _write(folder, "InvertedPendulum-v5.yaml", GOOD_PENDULUM)
    monkeypatch.setattr(tuned, "TUNED_DIR", folder)
    directory = tmp_path / "resumed"
    first = train("--env", "InvertedPendulum-v5", "--env-steps", "2000", "--output", str(directory))
    assert first.status == 0 and "InvertedPendulum-v5.yaml" in first.out[0]
    assert (first.config.guide_config.temperature, first.config.world_model_config.horizon) == (0.5, 6)
    checkpoint = directory / "checkpoint"
    (checkpoint / rundir.MODULE_SUBDIR).mkdir(parents=True)
    (checkpoint / "agd").mkdir()
    (checkpoint / "agd" / "format.json").write_text(json.dumps(CHECKPOINT_FORMAT))
    (checkpoint / "agd" / "counters.json").write_text(json.dumps({"env_steps": 1000}))
    (checkpoint / rundir.CHECKPOINT_MARKER).write_text(json.dumps({"iteration": 2, "env_steps": 1000}))
    # the file changes after the run began: the resumed run keeps its own settings
    path.write_text(GOOD_PENDULUM.replace("temperature: 0.5", "temperature: 3.0").replace("horizon: 6", "horizon: 9"))
    monkeypatch.setattr(cli, "check_local_resources", lambda *a: None)
    resumed = train("--resume", str(directory))
    assert resumed.status == 0 and not any("tuned" in line for line in resumed.out), resumed.err
    config = resumed.config
    assert (config.guide_config.kind, config.guide_config.temperature, config.world_model_config.horizon) == (
        "eag", 0.5, 6)


# -- a bad file ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, named", [
    (("world_model.horizon: 6", "world_model.horizonn: 6"), ("world_model.horizonn", "world_model.horizon,")),
    (("world_model.horizon: 6", "world_model.horizon: 1"), ("world_model.horizon", "horizon=1", ">= 2")),
    (("guidance.kind: eag", "guidance.kind: magic"), ("guidance.kind", "'magic'", "'sag'")),
    (("guidance.temperature: 0.5", "guidance.temperature: .nan"), ("guidance.temperature", "finite")),
    (("preset: cpu", "preset: huge"), ("preset='huge'", "cpu, paper, tiny")),
    (("env: InvertedPendulum-v5", "env: Hopper-v5"), ("env='Hopper-v5'", "InvertedPendulum-v5")),
    (("note: a test file", "notes: a test file"), ("'notes'", "evidence, note")),
    (('  commit: "abc1234"\n', ""), ("evidence.commit", "commit")),
    (('  table: "a row"', "  tables: a row"), ("evidence.tables", "section, table, commit")),
])
def test_a_bad_file_fails_with_one_line_naming_file_key_and_what_is_allowed(train, monkeypatch, tmp_path,
                                                                             change, named):
    folder = tmp_path / "tuned"
    old, new = change
    assert old in GOOD_PENDULUM
    _write(folder, "InvertedPendulum-v5.yaml", GOOD_PENDULUM.replace(old, new))
    monkeypatch.setattr(tuned, "TUNED_DIR", folder)
    out = tmp_path / "bad"
    run = train("--env", "InvertedPendulum-v5", "--output", str(out))
    assert run.status == 2 and run.config is None
    assert len(run.err) == 1, run.err
    assert "InvertedPendulum-v5.yaml" in run.err[0] and all(text in run.err[0] for text in named), run.err[0]
    assert not out.exists()
    # --no-tuned does not read it
    assert train("--env", "InvertedPendulum-v5", "--preset", "cpu", "--no-tuned").status == 0
