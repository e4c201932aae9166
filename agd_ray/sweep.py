"""`agd-ray sweep`: a Ray Tune sweep of AGD from a small YAML file (docs/CLUSTER.md has the format).

    agd-ray sweep tune_configs/guidance_temperature.yaml [--address auto] [--output runs/sweeps] [--resume]

`load_sweep` reads and checks the whole file (unknown keys, types, values: a `ValueError` naming the key, the
value and what is allowed) before Ray starts. The trials are methods x grid x seeds; every value is written
out in the file (no arithmetic in YAML). `run_sweep` runs them with `tune.Tuner(AGD, ...)`, each trial in a
placement group of RLlib's own bundles for AGD plus one bundle for the world-model actor, then writes
`summary.csv`, `summary.md` and `return_vs_temperature.png` beside Tune's experiment directory.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import os
import pathlib
import sys
import typing
from dataclasses import dataclass, field, fields

# -- the file format ---------------------------------------------------------------------------------------
TOP_LEVEL_KEYS = {
    "name": "Tune experiment name (a directory under --output; default: the file's stem)",
    "env": "MuJoCo task id, e.g. HalfCheetah-v5",
    "preset": "sizes from agd_ray.cli.PRESET_SETTINGS: cpu or paper",
    "env_steps": "each trial stops once it has taken this many real env steps (integer >= 1)",
    "max_iterations": "optional: each trial also stops after this many iterations (integer >= 1)",
    "seeds": "list of integer seeds; every method x grid point runs once per seed",
    "eval_interval": "evaluate the mean action every this many iterations (integer >= 0; default: preset)",
    "eval_episodes": "episodes per evaluation (integer >= 1; default: preset)",
    "checkpoint_every": "checkpoint every this many iterations, for --resume (integer >= 0; 0: only at the end)",
    "config": "dotted keys set in every trial, e.g. {world_model.hidden_dim: 256, training.lr: 0.0003}",
    "methods": "named methods, each a mapping of dotted keys (or model_free: true); default: one method 'agd'",
    "grid": "dotted key -> list of values; every combination runs for every method and seed",
    "resources": "per-trial resources: num_env_runners, num_cpus_per_env_runner, world_model_gpus, "
                 "world_model_cpus, learner_gpus, evaluation_env_runners, max_concurrent_trials, env_runner_resources",
}
REQUIRED_KEYS = ("env", "preset", "env_steps", "seeds")

# `training.X` sets PPO's own attribute X (RLlib's AlgorithmConfig.training); value: (type, check, allowed).
TRAINING_KEYS = {
    "lr": (float, lambda v: v > 0, "> 0"),
    "gamma": (float, lambda v: 0 <= v <= 1, "in [0, 1]"),
    "lambda_": (float, lambda v: 0 <= v <= 1, "in [0, 1]"),
    "train_batch_size_per_learner": (int, lambda v: v >= 1, "an integer >= 1"),
    "minibatch_size": (int, lambda v: v >= 1, "an integer >= 1"),
    "num_epochs": (int, lambda v: v >= 1, "an integer >= 1"),
    "grad_clip": (float, lambda v: v > 0, "> 0"),
    "entropy_coeff": (float, lambda v: v >= 0, ">= 0"),
    "clip_param": (float, lambda v: v > 0, "> 0"),
    "vf_loss_coeff": (float, lambda v: v >= 0, ">= 0"),
    "vf_clip_param": (float, lambda v: v > 0, "> 0 (inf: no clamp of the value loss)"),
    "kl_coeff": (float, lambda v: v >= 0, ">= 0"),
}

# resources key -> (type, check, allowed)
RESOURCE_KEYS = {
    "num_env_runners": (int, lambda v: v >= 0, "an integer >= 0 (0: sample in the trial's own process)"),
    "num_cpus_per_env_runner": (float, lambda v: v >= 0, ">= 0"),
    "world_model_gpus": (float, lambda v: v >= 0, ">= 0 (fractions share a GPU; 0: CPU)"),
    "world_model_cpus": (float, lambda v: v >= 0, ">= 0"),
    "learner_gpus": (float, lambda v: v >= 0, ">= 0 (the PPO learner, in the trial's own process)"),
    "evaluation_env_runners": (int, lambda v: v >= 0, "an integer >= 0 (0: evaluate in the trial's process)"),
    "max_concurrent_trials": (int, lambda v: v >= 0, "an integer >= 0 (0: as many as the cluster fits)"),
    "env_runner_resources": (dict, lambda v: _resources_ok(v), "a mapping of custom resource names to amounts, "
                             "e.g. {agd_cpu_worker: 1}: each env runner goes on a node that advertises them"),
}


def _resources_ok(value) -> bool:
    from agd_ray.config import check_resources

    try:
        check_resources("env_runner_resources", value)
    except ValueError:
        return False
    return True

# fields whose check depends on another field: checked per trial, with the whole config
CROSS_FIELD_KEYS = {"world_model.sampling_steps", "world_model.diffusion_steps"}
MODEL_FREE = "model_free"  # method key: plain PPO on real data (AGDConfig.model_free())
TRAIN_RETURN = ("env_runners", "episode_return_mean")
SUMMARY_FILES = ("summary.csv", "summary.md", "return_vs_temperature.png")
SUMMARY_COLUMNS = ("trial", "method", "guide", "temperature", "seed", "final_eval_return", "best_eval_return",
                   "final_train_return", "env_steps", "iterations", "wall_s", "status")


def _section_types() -> dict[str, tuple]:
    """Dotted key -> (type hint, section dataclass) for every AGDConfig section field."""
    from agd_ray.config import ImaginationConfig, RecoveryConfig, ReplayConfig, WorldModelTrainingConfig
    from agd_ray.world_model.config import GuideConfig, WorldModelConfig

    sections = {"world_model": (WorldModelConfig, WorldModelTrainingConfig), "guidance": (GuideConfig,),
                "imagination": (ImaginationConfig,), "replay": (ReplayConfig,), "recovery": (RecoveryConfig,)}
    types = {}
    for prefix, classes in sections.items():
        for cls in classes:
            hints = typing.get_type_hints(cls)
            for f in fields(cls):
                types[f"{prefix}.{f.name}"] = (hints[f.name], cls)
    return types


def _type_ok(value, hint) -> bool:
    """YAML value against a field's type: ints count as floats, bools as nothing but bools."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"),
                                                                                          "UnionType")) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if option is bool and isinstance(value, bool):
            return True
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option is str and isinstance(value, str):
            return True
        if dict in (option, typing.get_origin(option)) and isinstance(value, dict):  # checked by the section
            return True
    return False


def _type_name(hint) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null",
             dict: "a mapping"}
    options = typing.get_args(hint) or (hint,)
    return " or ".join(names.get(o, str(o)) for o in options)


def _fail(where: str, value, allowed: str) -> typing.NoReturn:
    raise ValueError(f"{where}={value!r} is not allowed; {allowed}")


# Dotted keys whose value may be infinite (every other float must be finite; nan never is allowed).
INFINITY_ALLOWED = {"guidance.temperature": "inf switches the guide off", "training.vf_clip_param": "inf: no clamp"}


def _check_finite(where: str, key: str, value) -> None:
    if not isinstance(value, float) or math.isfinite(value):
        return
    if math.isinf(value) and key in INFINITY_ALLOWED:
        return
    allowed = [f"{k} ({why})" for k, why in INFINITY_ALLOWED.items()]
    _fail(f"{where}.{key}", value, f"it must be a finite number (only {' and '.join(allowed)} may be inf)")


def local_ray_cpus(num_cpus: int | None) -> int:
    """Logical CPUs of an embedded local Ray: `num_cpus`, or the machine's count (at least 2)."""
    return num_cpus or max(2, os.cpu_count() or 2)


def check_dotted(where: str, key, value, types: dict) -> None:
    """One dotted key and its value (`where` locates it in the file); the sections check values later.
    Floats must be finite, but for the keys in INFINITY_ALLOWED."""
    if not isinstance(key, str):
        _fail(where, key, "keys are strings such as guidance.temperature")
    if key.startswith("training."):
        name = key.partition(".")[2]
        if name not in TRAINING_KEYS:
            raise ValueError(f"unknown key {where}.{key}; training keys are: "
                             + ", ".join(f"training.{k}" for k in TRAINING_KEYS))
        kind, ok, allowed = TRAINING_KEYS[name]
        if not _type_ok(value, kind):
            _fail(f"{where}.{key}", value, f"it must be {_type_name(kind)}")
        _check_finite(where, key, value)
        if not ok(value):
            _fail(f"{where}.{key}", value, f"it must be {allowed}")
        return
    if key not in types:
        prefixes = sorted({k.partition(".")[0] for k in types}) + ["training"]
        prefix = key.partition(".")[0]
        if prefix in prefixes:
            same = sorted(k for k in types if k.startswith(prefix + "."))
            raise ValueError(f"unknown key {where}.{key}; {prefix} keys are: {', '.join(same)}")
        raise ValueError(f"unknown key {where}.{key}; dotted keys start with one of {', '.join(prefixes)}.")
    hint, section = types[key]
    if not _type_ok(value, hint):
        _fail(f"{where}.{key}", value, f"it must be {_type_name(hint)}")
    _check_finite(where, key, value)
    if key not in CROSS_FIELD_KEYS:
        try:  # the section's own check of this one field (the others at their defaults)
            section(**{key.partition(".")[2]: value})
        except ValueError as error:
            raise ValueError(f"{where}.{key}: {error}") from None


def parse_value(text: str):
    """A command-line value: YAML scalar rules (true, 0.3, 16, xt), and numbers YAML 1.1 reads as strings
    (1e9, inf)."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{text!r} is not a YAML value ({yaml_error_text(error)})") from None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_config_items(items) -> dict:
    """Command-line `KEY=VALUE` items (dotted keys, as a sweep file's `config`) -> {key: value}, each key and
    value checked as a sweep file's are; ValueError names the item."""
    if not items:
        return {}  # without importing the sections (RLlib): a plain `train` checks its flags quickly
    types, config = _section_types(), {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--config {item!r} is not KEY=VALUE, e.g. world_model.policy_guidance=causal")
        try:
            config[key] = parse_value(text)
        except ValueError as error:
            raise ValueError(f"--config {item!r}: {error}") from None
        check_dotted("config", key, config[key], types)
    return config


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep file: `trials()` lists every trial's settings; `param_space()` is Tune's view of them."""

    name: str
    env: str
    preset: str
    env_steps: int
    seeds: tuple[int, ...]
    methods: dict[str, dict] = field(default_factory=lambda: {"agd": {}})
    grid: dict[str, tuple] = field(default_factory=dict)
    config: dict[str, typing.Any] = field(default_factory=dict)
    resources: dict[str, typing.Any] = field(default_factory=dict)
    max_iterations: int | None = None
    eval_interval: int | None = None
    eval_episodes: int | None = None
    checkpoint_every: int = 0
    path: str | None = None

    def trials(self) -> list[dict]:
        """Every trial as {"method", "seed", dotted keys...}: methods x grid x seeds, in that order."""
        grid_keys = list(self.grid)
        trials = []
        for method, values, seed in itertools.product(
                self.methods, itertools.product(*(self.grid[k] for k in grid_keys)), self.seeds):
            trial = {"method": method, "seed": seed, **_method_settings(self.methods[method])}
            trial.update(zip(grid_keys, values, strict=True))
            trials.append(trial)
        return trials

    def base_config(self):
        """The AGDConfig every trial starts from: the CLI's preset and config building, then `config` and
        `resources`. Raises ValueError naming the key (RLlib's and the sections' own checks)."""
        from agd_ray.cli import build_config, check_train_args

        resources = self.resources
        args = argparse.Namespace(
            env=self.env, guide="sag", temperature="1.0", scale=None, horizon=None, env_steps=self.env_steps,
            seed=self.seeds[0], output="runs/sweeps", preset=self.preset, address=None,
            num_env_runners=resources.get("num_env_runners"), num_cpus=None, eval_interval=self.eval_interval,
            checkpoint_every=0,
        )
        resolved = check_train_args(args)
        if self.eval_episodes is not None:
            resolved = {**resolved, "settings": {**resolved["settings"], "evaluation_episodes": self.eval_episodes}}
        config = build_config(args, resolved)
        if "num_cpus_per_env_runner" in resources:
            config.env_runners(num_cpus_per_env_runner=resources["num_cpus_per_env_runner"])
        if "env_runner_resources" in resources:
            config.env_runners(custom_resources_per_env_runner=dict(resources["env_runner_resources"]))
        if "evaluation_env_runners" in resources and config.evaluation_interval:
            config.evaluation(evaluation_num_env_runners=resources["evaluation_env_runners"])
        if "learner_gpus" in resources:
            config.learners(num_gpus_per_learner=resources["learner_gpus"])
        world_model = {k: resources[r] for r, k in (("world_model_gpus", "num_gpus"), ("world_model_cpus", "num_cpus"))
                       if r in resources}
        if world_model:
            config.world_model(**world_model)
        config.update_from_dict(to_config_keys(self.config))
        return config

    def param_space(self) -> dict:
        """Tune's param_space: the base config as flat keys, a grid over methods (their keys follow the
        method through `sample_from`), over each `grid` key and over seeds."""
        from ray import tune

        base = self.base_config()
        section_attrs = {"world_model_config", "world_model_training", "guide_config", "imagination_config",
                         "replay_config", "recovery_config"}
        space = {k: v for k, v in base.to_dict().items() if k not in section_attrs}
        space.update(base.flat_sections())
        settings = {name: to_config_keys(_method_settings(m)) for name, m in self.methods.items()}
        method_keys = sorted({k for s in settings.values() for k in s})
        space["sweep_method"] = tune.grid_search(list(self.methods))
        for key in method_keys:
            default = space.get(key)
            space[key] = tune.sample_from(
                lambda config, key=key, default=default: settings[config["sweep_method"]].get(key, default))
        for key, values in to_config_keys(self.grid).items():
            space[key] = tune.grid_search(list(values))
        space["seed"] = tune.grid_search(list(self.seeds))
        return space


def _method_settings(method: dict) -> dict:
    """A method's dotted keys, with `model_free: true` spelled out."""
    settings = {k: v for k, v in method.items() if k != MODEL_FREE}
    if method.get(MODEL_FREE):
        settings.setdefault("guidance.kind", "none")
        settings["model_based"] = False
    return settings


def to_config_keys(settings: dict) -> dict:
    """`training.lr` -> `lr` (PPO's own attribute); section keys stay dotted (AGDConfig.update_from_dict)."""
    return {k.partition(".")[2] if k.startswith("training.") else k: v for k, v in settings.items()}


def _check_int(where: str, value, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        _fail(where, value, f"it must be an integer >= {minimum}")
    return value


def _check_mapping(where: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(where, value, "it must be a mapping (key: value lines)")
    return value


def check_top_level(data, what: str, allowed: dict, required) -> None:
    """A parsed YAML file (`what`: "a sweep file") is a mapping whose keys are among `allowed` (key -> what it
    holds) and include every one of `required`; ValueError naming the first key that is not."""
    if not isinstance(data, dict):
        raise ValueError(f"{what} is a mapping of the keys {', '.join(allowed)}; got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - set(allowed))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; allowed top-level keys: {', '.join(allowed)}")
    missing = [key for key in required if key not in data]
    if missing:
        raise ValueError(f"missing key {missing[0]!r}: {allowed[missing[0]]}")


def parse_sweep(data, *, path: str | None = None, default_name: str = "sweep") -> SweepSpec:
    """Check a parsed sweep file; every error names the key, the value and what is allowed."""
    from agd_ray.cli import PRESET_SETTINGS
    from agd_ray.envs.core import validate_env_id

    check_top_level(data, "a sweep file", TOP_LEVEL_KEYS, REQUIRED_KEYS)
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        _fail("name", name, "it must be a non-empty string of letters, digits, '-', '_' or '.'")
    if not isinstance(data["env"], str):
        _fail("env", data["env"], "it must be a string such as HalfCheetah-v5")
    validate_env_id(data["env"])
    if data["preset"] not in PRESET_SETTINGS:
        _fail("preset", data["preset"], f"choose one of {', '.join(PRESET_SETTINGS)}")
    env_steps = _check_int("env_steps", data["env_steps"], 1)
    seeds = data["seeds"]
    if not isinstance(seeds, list) or not seeds:
        _fail("seeds", seeds, "it must be a non-empty list of integers, e.g. [0, 1, 2]")
    for i, seed in enumerate(seeds):
        _check_int(f"seeds[{i}]", seed, 0)
    if len(set(seeds)) != len(seeds):
        _fail("seeds", seeds, "each seed may appear once")
    optional = {}
    for key, minimum in (("max_iterations", 1), ("eval_interval", 0), ("eval_episodes", 1), ("checkpoint_every", 0)):
        if data.get(key) is not None:
            optional[key] = _check_int(key, data[key], minimum)

    types = _section_types()
    config = _check_mapping("config", data.get("config"))
    for key, value in config.items():
        check_dotted("config", key, value, types)

    methods = _check_mapping("methods", data.get("methods")) or {"agd": {}}
    for method, settings in methods.items():
        if not isinstance(method, str) or not method:
            _fail("methods", method, "method names are non-empty strings")
        settings = _check_mapping(f"methods.{method}", settings)
        methods[method] = settings
        for key, value in settings.items():
            if key == MODEL_FREE:
                if not isinstance(value, bool):
                    _fail(f"methods.{method}.{MODEL_FREE}", value, "it must be true or false")
                continue
            check_dotted(f"methods.{method}", key, value, types)

    grid = _check_mapping("grid", data.get("grid"))
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            _fail(f"grid.{key}", values, "it must be a non-empty list of values, e.g. [0.3, 1.0, 3.0]")
        for value in values:
            check_dotted("grid", key, value, types)
        if len(set(map(repr, values))) != len(values):
            _fail(f"grid.{key}", values, "each value may appear once")
        for method, settings in methods.items():
            if key in settings:
                raise ValueError(f"grid.{key} is also set by methods.{method}; set it in one place")
    grid = {k: tuple(v) for k, v in grid.items()}

    resources = _check_mapping("resources", data.get("resources"))
    for key, value in resources.items():
        if key not in RESOURCE_KEYS:
            raise ValueError(f"unknown key resources.{key}; allowed: {', '.join(RESOURCE_KEYS)}")
        kind, ok, allowed = RESOURCE_KEYS[key]
        if not _type_ok(value, kind) or not ok(value):
            _fail(f"resources.{key}", value, f"it must be {allowed}")
    for key in config:
        if key in ("world_model.num_gpus", "world_model.num_cpus"):
            raise ValueError(f"config.{key}: set it as resources.world_model_{key.rpartition('_')[2]} instead")

    spec = SweepSpec(name=name, env=data["env"], preset=data["preset"], env_steps=env_steps, seeds=tuple(seeds),
                     methods=methods, grid=grid, config=dict(config), resources=dict(resources), path=path,
                     **optional)
    # Values: build every trial's AGDConfig and run its (and RLlib's) own checks, before any Ray starts.
    base = spec.base_config()
    for trial in spec.trials():
        settings = {k: v for k, v in trial.items() if k != "method"}
        where = f"trial (method {trial['method']}, " + ", ".join(
            f"{k}={v!r}" for k, v in settings.items() if k in grid or k == "seed") + ")"
        try:
            base.copy(copy_frozen=False).update_from_dict(to_config_keys(settings)).validate()
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    return spec


def yaml_error_text(error) -> str:
    """A YAML parser's error in one line: the problem and where it is (line and column from 1)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    if hasattr(error, "character") and hasattr(error, "position"):  # yaml.reader.ReaderError: a character YAML refuses
        code = error.character if isinstance(error.character, int) else ord(error.character)
        return f"character #x{code:04x} at offset {error.position} is not allowed in YAML ({error.reason})"
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def load_sweep(path) -> SweepSpec:
    """Read and check a sweep YAML file (see the module doc and docs/CLUSTER.md)."""
    import yaml

    path = pathlib.Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ValueError(f"sweep file {str(path)!r} {what}; give a YAML file such as tune_configs/smoke.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"sweep file {path} is not text (byte {error.object[error.start]:#04x} at offset "
                         f"{error.start} is not UTF-8); a sweep file is YAML text") from None
    except OSError as error:
        raise ValueError(f"sweep file {path} cannot be read ({error.strerror or error})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {yaml_error_text(error)}") from None
    try:
        return parse_sweep(data, path=str(path), default_name=path.stem)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


# -- resources -----------------------------------------------------------------------------------------------
def trial_resources(config: dict):
    """One trial's placement group: `AGD.default_resource_request`, i.e. RLlib's bundles for PPO plus the
    world-model trainer and imagination workers that AGD creates inside the trial (Tune captures child
    actors into the trial's placement group)."""
    from agd_ray.algorithm import AGD

    return AGD.default_resource_request(config)


def _trainable():
    from ray import tune

    from agd_ray.algorithm import AGD

    return tune.with_resources(AGD, trial_resources)


class EnvStepStopper:
    """Stops a trial at `env_steps` real env steps (or `max_iterations`). A plain callable, which Tune wraps
    in its FunctionStopper (no `stop_all`, so that importing this module does not import Ray Tune)."""

    def __init__(self, env_steps: int, max_iterations: int | None = None):
        self.env_steps, self.max_iterations = env_steps, max_iterations

    def reached(self, result: dict) -> bool:
        """Whether a trial with this latest result has reached the sweep's stop."""
        from agd_ray.results import result_row

        steps = result_row(result)["env_steps"] or 0
        iterations = result.get("training_iteration", 0) or 0
        return steps >= self.env_steps or (self.max_iterations is not None and iterations >= self.max_iterations)

    def __call__(self, trial_id: str, result: dict) -> bool:
        return self.reached(result)


# -- running ---------------------------------------------------------------------------------------------------
def _storage(output) -> tuple[str, pathlib.Path]:
    """Tune's storage path (absolute, or a URI such as s3://bucket/x) and the local summary directory."""
    text = str(output)
    if "://" in text:
        return text, pathlib.Path("runs") / "sweeps"
    local = pathlib.Path(text).expanduser().resolve()
    return str(local), local


def run_sweep(spec: SweepSpec, *, address: str | None = None, output="runs/sweeps", resume: bool = False,
              num_cpus: int | None = None, verbose: int = 1) -> list[dict]:
    """Run (or with `resume`, continue) the sweep with Ray Tune; returns the summary rows (also written as
    summary.csv, summary.md and return_vs_temperature.png in OUTPUT/NAME; for a URI output, in
    ./runs/sweeps/NAME and copied to OUTPUT/NAME)."""
    import ray
    from ray import tune

    storage_path, summary_root = _storage(output)
    experiment = f"{storage_path.rstrip('/')}/{spec.name}"
    param_space = spec.param_space()  # builds and checks before Ray starts
    if resume and not tune.Tuner.can_restore(experiment):
        raise ValueError(f"--resume: nothing to resume at {experiment!r}; run the sweep without --resume first")
    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:
            custom = sorted({k for b in trial_resources(param_space_example(spec)).bundles for k in b} - {"CPU", "GPU"})
            if custom:  # only a cluster's nodes advertise them (cluster/*.yaml): Tune would wait forever
                raise ValueError(f"the trials ask for custom resources {', '.join(custom)}, which the embedded local "
                                 f"Ray does not have: give --address of a cluster whose nodes advertise them")
            ray.init(num_cpus=local_ray_cpus(num_cpus), include_dashboard=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}})
    trainable = _trainable()
    if resume:
        # The same param_space again: Tune keeps large values (module specs, classes) in the object store of the
        # session that started the sweep, and a new session must hand them in (Tuner.restore's contract).
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True, param_space=param_space)
    else:
        request = trial_resources(param_space_example(spec))
        print(f"agd-ray sweep {spec.name}: {len(spec.trials())} trials; per trial {request.bundles} -> {experiment}",
              flush=True)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.resources.get("max_concurrent_trials") or None,
                                        reuse_actors=False),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=storage_path,
                stop=EnvStepStopper(spec.env_steps, spec.max_iterations),
                checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=spec.checkpoint_every,
                                                        checkpoint_at_end=True, num_to_keep=2),
                failure_config=tune.FailureConfig(max_failures=0),
                verbose=verbose,
            ),
        )
    results = tuner.fit()
    rows = summary_rows(results, spec)
    directory = summary_root / spec.name
    write_summary(rows, directory, title=f"{spec.name}: {spec.env}, {spec.env_steps} env steps")
    print(format_markdown(rows), flush=True)
    where = [str(directory)]
    if "://" in storage_path:  # also beside Tune's experiment, where every node (and you) can read it
        import pyarrow.fs

        filesystem, path = pyarrow.fs.FileSystem.from_uri(experiment)
        filesystem.create_dir(path, recursive=True)
        for name in SUMMARY_FILES:
            pyarrow.fs.copy_files(str((directory / name).resolve()), f"{experiment}/{name}")
        where.append(experiment)
    print(f"summary ({', '.join(SUMMARY_FILES)}) in {' and '.join(where)}", flush=True)
    if any(row["status"] != "done" for row in rows):
        print(f"not every trial finished: `agd-ray sweep {spec.path or spec.name} --resume` (same --output) "
              f"continues them", flush=True)
    return rows


def param_space_example(spec: SweepSpec) -> dict:
    """The first trial's resolved config (for printing its resource request)."""
    first = spec.trials()[0]
    return {**spec.base_config().to_dict(), **to_config_keys({k: v for k, v in first.items() if k != "method"})}


# -- the summary -------------------------------------------------------------------------------------------------
def _nested(result: dict, path: tuple):
    from agd_ray.results import lookup  # the metrics-row lookup (nan -> None)

    return lookup(result, path)


def trial_history(trial_dir) -> list[dict]:
    """Every result a trial reported, from its `result.json` (one JSON object per line), the last one per
    training iteration (a trial restored from a checkpoint reports the iterations after it again). Not
    progress.csv: Tune fixes its columns at the first result, which has no evaluation yet."""
    import json

    path = pathlib.Path(str(trial_dir)) / "result.json"
    by_iteration = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                result = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if isinstance(result, dict) and "training_iteration" in result:
                by_iteration[int(result["training_iteration"])] = result
    return [by_iteration[i] for i in sorted(by_iteration)]


def measured_evaluations(history: list[dict]) -> list[tuple[int | None, float]]:
    """(env steps, evaluation return) of the iterations that evaluated (RLlib repeats the last one between)."""
    from agd_ray.results import result_row

    points = []
    for result in history:
        row = result_row(result)
        if row["eval_return_mean"] is not None:
            points.append((row["env_steps"], float(row["eval_return_mean"])))
    return points


def summary_rows(results, spec: SweepSpec | None = None) -> list[dict]:
    """One row per trial of a Tune ResultGrid: final and best evaluation return, env steps, wall time; status
    done (reached the sweep's stop), error, or unfinished (interrupted: `--resume` continues it)."""
    from agd_ray.results import result_row

    rows = []
    for result in results:
        config = result.config or {}
        last = result.metrics or {}
        evals = [value for _, value in measured_evaluations(trial_history(result.path))]
        model_based = config.get("model_based", True)
        guide = config.get("guide_config") or {}  # RLlib reports AGDConfig.to_dict(): sections as dicts
        row = result_row(last) if last else {}
        env_steps = int(row["env_steps"]) if row.get("env_steps") is not None else None
        iterations = last.get("training_iteration")
        finished = spec is None or EnvStepStopper(spec.env_steps, spec.max_iterations).reached(last)
        rows.append({
            "trial": last.get("trial_id") or pathlib.Path(str(result.path)).name,
            "method": config.get("sweep_method"),
            "guide": guide.get("kind", config.get("guidance.kind")) if model_based else "model-free",
            "temperature": guide.get("temperature", config.get("guidance.temperature")),
            "seed": config.get("seed"),
            "final_eval_return": evals[-1] if evals else None,
            "best_eval_return": max(evals) if evals else None,
            "final_train_return": _nested(last, TRAIN_RETURN),
            "env_steps": env_steps,
            "iterations": iterations,
            "wall_s": round(float(last["time_total_s"]), 1) if "time_total_s" in last else None,
            "status": "error" if result.error else "done" if finished and last else "unfinished",
        })
    rows.sort(key=lambda r: (str(r["method"]), str(r["guide"]), r["temperature"] or 0, r["seed"] or 0))
    return rows


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in SUMMARY_COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def write_summary(rows: list[dict], directory: pathlib.Path, *, title: str = "") -> None:
    """summary.csv, summary.md and return_vs_temperature.png in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "summary.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (directory / "summary.md").write_text((f"# {title}\n\n" if title else "") + format_markdown(rows) + "\n")
    plot_return_vs_temperature(rows, directory / "return_vs_temperature.png", title)


def plot_return_vs_temperature(rows: list[dict], path: pathlib.Path, title: str = "") -> None:
    """Final evaluation return against temperature, one line per method (mean over seeds, min-max band,
    each seed a dot). Methods with one temperature are a single point with its spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    by_method: dict[str, dict[float, list[float]]] = {}
    for row in rows:
        if row["final_eval_return"] is None or row["temperature"] is None:
            continue
        label = row["method"] if row["method"] == row["guide"] else f"{row['method']} ({row['guide']})"
        by_method.setdefault(label, {}).setdefault(float(row["temperature"]), []).append(row["final_eval_return"])
    for label, points in by_method.items():
        temperatures = sorted(points)
        mean = [float(np.mean(points[t])) for t in temperatures]
        low = [min(points[t]) for t in temperatures]
        high = [max(points[t]) for t in temperatures]
        line, = ax.plot(temperatures, mean, marker="o", label=label)
        ax.fill_between(temperatures, low, high, color=line.get_color(), alpha=0.2)
        for t in temperatures:
            ax.scatter([t] * len(points[t]), points[t], color=line.get_color(), s=10, alpha=0.6)
    if any(t > 0 for points in by_method.values() for t in points):
        ax.set_xscale("log")
    ax.set_xlabel("guidance temperature")
    ax.set_ylabel("final evaluation return")
    ax.set_title(title or "final evaluation return (mean over seeds, min-max band)")
    ax.grid(alpha=0.3)
    if by_method:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no evaluation results", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- command line ----------------------------------------------------------------------------------------------
def add_sweep_parser(subparsers) -> argparse.ArgumentParser:
    """`agd-ray sweep FILE [--address ADDR] [--output DIR] [--resume] [--num-cpus N]`."""
    sweep = subparsers.add_parser("sweep", help="run a Ray Tune sweep from a YAML file (tune_configs/)",
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sweep.add_argument("file", help="sweep YAML, e.g. tune_configs/guidance_temperature.yaml (docs/CLUSTER.md)")
    sweep.add_argument("--address", default=None,
                       help="join a running Ray cluster ('auto' inside `ray job submit`); default: local Ray")
    sweep.add_argument("--output", default="runs/sweeps",
                       help="Tune storage path (a directory, or a URI such as s3://bucket/sweeps on a cluster); "
                            "the sweep goes in OUTPUT/NAME")
    sweep.add_argument("--resume", action="store_true", help="continue the interrupted sweep in OUTPUT/NAME")
    sweep.add_argument("--num-cpus", type=int, default=None,
                       help="logical CPUs of the embedded local Ray (default: the machine's count)")
    sweep.add_argument("--debug", action="store_true",
                       help="on an unexpected error, show Python's traceback (without it: one line naming the error, "
                            "exit status 2)")
    return sweep


def sweep_main(args) -> int:
    """Run `agd-ray sweep`; a bad file exits with status 2 and one line, before Ray starts."""
    try:
        spec = load_sweep(args.file)
        if args.num_cpus is not None and args.num_cpus < 1:
            raise ValueError(f"num-cpus={args.num_cpus!r} is not allowed; it must be >= 1")
    except ValueError as error:
        print(f"agd-ray sweep: error: {error}", file=sys.stderr)
        return 2
    try:
        rows = run_sweep(spec, address=args.address, output=args.output, resume=args.resume, num_cpus=args.num_cpus)
    except ValueError as error:
        print(f"agd-ray sweep: error: {error}", file=sys.stderr)
        return 2
    return 0 if all(row["status"] == "done" for row in rows) else 1


def main(argv=None) -> int:
    """`python -m agd_ray.sweep FILE ...` (the same as `agd-ray sweep FILE ...`)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    parser = argparse.ArgumentParser(prog="agd-ray")
    add_sweep_parser(parser.add_subparsers(dest="command", required=True))
    return sweep_main(parser.parse_args(["sweep", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
