"""`agd-ray`: train AGD (or the model-free baseline) and evaluate a checkpoint (ARCHITECTURE.md, command line).

    agd-ray train --env InvertedPendulum-v5 --guide sag --temperature 1.0 --env-steps 15000 --seed 0 --output runs/x
    agd-ray evaluate runs/x/checkpoint --episodes 10

Every argument is checked before Ray starts: a bad one exits with status 2 and one line naming the value and
what is allowed. `train` writes into --output: config.json, metrics.jsonl and metrics.csv (one row per
iteration), TensorBoard events (tb/), checkpoint/, the actors' snapshots while it runs (actor_snapshots/) and
learning_curve.png. A failure after the checks is one line with exit status 2 as well (--debug: the traceback), with
the actors stopped and Ray shut down. `train --resume DIR` continues a run
that was stopped or killed from DIR/checkpoint (see `resume_args`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import pathlib
import sys
import time

from agd_ray.errors import DEBUG_HELP, DISK_ERRNOS, UsageError, error_text, first_line, os_error, os_error_text
from agd_ray.evaluate import evaluate
from agd_ray.results import (
    ROW_KEYS,
    flat_scalars,
    fmt,
    gain_text,
    guide_method_text,
    idle_iteration_text,
    plot_learning_curve,
    progress_text,
    result_row,
    truncate_metrics,
    truncate_tensorboard,
)
from agd_ray.rundir import (
    SNAPSHOT_DIR,
    check_checkpoint_data,
    check_output_dir,
    checkpoint_path,
    finished_run_text,
    save_checkpoint,
)
from agd_ray.sweep import add_sweep_parser, local_ray_cpus, sweep_main
from agd_ray.tuned import apply_tuned

GUIDE_CHOICES = ("none", "sag", "eag", "reward", "swg", "model-free")
PRESETS = ("cpu", "paper", "tiny")

# Sizes per preset. `cpu`: small enough that `make run` (InvertedPendulum, 15k env steps) takes minutes on a
# 2-core laptop. `paper`: ALGORITHM.md's sizes (needs a GPU for the world model).
PRESET_SETTINGS = {
    "cpu": {
        "world_model": dict(horizon=10, hidden_dim=256, num_layers=2, diffusion_steps=64, sampling_steps=16,
                            batch_size=128, ema_start=500, updates_per_env_step=0.5, pretrain_updates=1000,
                            batches_per_call=16, num_cpus=0),
        "imagination": dict(batch_size=256, advantage_gain_windows=0, policy_updates_per_iteration=2,
                            quality_interval=5, quality_windows=32),
        "replay": dict(capacity=200_000, prefill_steps=1000),
        "training": dict(train_batch_size_per_learner=500, minibatch_size=256, num_epochs=5, lr=3e-4),
        "num_env_runners": 1,
        "evaluation_interval": 5,
        "evaluation_episodes": 3,
    },
    # `tiny`: a smoke-test size (seconds per iteration on one core); for tests of the command line, not learning.
    "tiny": {
        "world_model": dict(horizon=4, hidden_dim=16, num_layers=1, diffusion_steps=8, sampling_steps=2,
                            batch_size=8, ema_start=0, updates_per_env_step=0.5, pretrain_updates=0,
                            batches_per_call=64, num_cpus=0),
        "imagination": dict(batch_size=16, advantage_gain_windows=4, policy_updates_per_iteration=1),
        "replay": dict(capacity=10_000, prefill_steps=300, chunk_size=100),
        "training": dict(train_batch_size_per_learner=200, minibatch_size=32, num_epochs=1, lr=3e-4),
        "num_env_runners": 0,
        "evaluation_interval": 0,
        "evaluation_episodes": 1,
    },
    "paper": {
        "world_model": dict(horizon=10, hidden_dim=1024, num_layers=6, diffusion_steps=128, sampling_steps=128,
                            batch_size=256, updates_per_env_step=1.0, pretrain_updates=1000, num_gpus=1.0),
        "imagination": dict(batch_size=1024, quality_interval=10, quality_windows=64),
        "replay": dict(capacity=1_000_000, prefill_steps=5000),
        "training": dict(train_batch_size_per_learner=1024, minibatch_size=1024, num_epochs=5, lr=3e-4),
        "num_env_runners": 2,
        "evaluation_interval": 10,
        "evaluation_episodes": 10,
    },
}








def _positive_float(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{name}={text!r} is not a number; {name} must be a number > 0") from None
    if not value > 0 or math.isnan(value):
        raise UsageError(f"{name}={value!r} is not allowed; {name} must be > 0")
    return value


class _StoreGiven(argparse._StoreAction):
    """Stores the value and records the flag in `args.explicit_flags`: a flag given on the command line, even at
    its default value, conflicts with a different `--config` value for the same setting (CONFLICTING_KEYS)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.explicit_flags = (*getattr(namespace, "explicit_flags", ()), self.dest)


# flag (args attribute) -> the dotted --config key that sets the same thing
CONFLICTING_KEYS = {"guide": "guidance.kind", "temperature": "guidance.temperature", "scale": "guidance.scale",
                    "horizon": "world_model.horizon"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agd-ray", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_sweep_parser(commands)

    train = commands.add_parser("train", help="train on one environment and write outputs to --output",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--env", default="HalfCheetah-v5",
                       help="MuJoCo task: HalfCheetah-v5, Hopper-v5, Walker2d-v5, Reacher-v5 or InvertedPendulum-v5; "
                            "a task with a tuned file (tuned/<env>.yaml) starts from its settings (see --no-tuned)")
    train.add_argument("--guide", default="sag", action=_StoreGiven,
                       help="guidance kind: none (PolyGRAD), sag, eag (AGD: by default one of "
                            "guidance.candidates=4 imagined windows per start state kept in proportion to its "
                            "advantage weight; guidance.method=gradient for the paper's gradient guide), reward "
                            "(Diffuser-style), swg (self-weighted: the model learns a weight channel; --scale 1 is "
                            "the exact tilt), or model-free (plain PPO on real data, the baseline)")
    train.add_argument("--temperature", default="1.0", action=_StoreGiven, help="guidance temperature beta (> 0)")
    train.add_argument("--scale", default=None, action=_StoreGiven,
                       help="guidance scale c (>= 0; default: the guide's default)")
    train.add_argument("--horizon", type=int, default=None, action=_StoreGiven,
                       help="imagined window length H (>= 2; default: preset)")
    train.add_argument("--env-steps", type=int, default=100_000, help="stop after this many real env steps")
    train.add_argument("--seed", type=int, default=0, help="random seed of the whole run")
    train.add_argument("--output", default=None,
                       help="output directory (default: runs/<env>-<guide>-<seed>); a new or empty one, or one "
                            "holding an earlier run with --overwrite")
    train.add_argument("--overwrite", action="store_true",
                       help="remove the earlier run in --output before starting (without it a directory holding a "
                            "run is refused; --resume DIR continues one)")
    train.add_argument("--preset", default=None,
                       help="sizes: cpu (laptop), paper (ALGORITHM.md sizes, GPU) or tiny (smoke tests); "
                            "default: the tuned file's, else paper if CUDA is present")
    train.add_argument("--address", default=None,
                       help="join a running Ray cluster (e.g. 'auto'); default: start an embedded local Ray")
    train.add_argument("--num-env-runners", type=int, default=None, help="real env runners (default: preset)")
    train.add_argument("--num-cpus", type=int, default=None,
                       help="logical CPUs of the embedded local Ray (>= 1; default: the machine's count); a run "
                            "whose actors need more is refused before Ray starts")
    train.add_argument("--eval-interval", type=int, default=None,
                       help="evaluate the mean action every this many iterations, and on the one reaching --env-steps "
                            "(0: never; default: preset)")
    train.add_argument("--checkpoint-every", type=int, default=0,
                       help="also checkpoint every this many iterations (0: only at the end)")
    train.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                       help="dotted keys over the preset, as a sweep file's config: e.g. "
                            "world_model.policy_guidance=causal imagination.termination=env "
                            "world_model.updates_per_env_step=2")
    train.add_argument("--no-tuned", action="store_true",
                       help="start from the preset's defaults, not from the task's tuned settings (tuned/<env>.yaml: "
                            "the settings measured to learn it, with a pointer to docs/RESULTS.md); without it they "
                            "are used, the first output line names the file, and a flag or --config key given "
                            "overrides the file's value for the same setting; a --preset other than the file's also "
                            "leaves the file unused")
    train.add_argument("--resume", default=None, metavar="DIR",
                       help="continue the run in DIR (an earlier --output) from DIR/checkpoint, with DIR/config.json's "
                            "settings; only --env-steps, --checkpoint-every, --address and --num-cpus may be given "
                            "(each one given is applied; any other flag, even at its default, is refused)")
    train.add_argument("--debug", action="store_true", help=DEBUG_HELP)

    evaluate = commands.add_parser("evaluate", help="run the mean action of a checkpoint's policy (no Ray)",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    evaluate.add_argument("checkpoint", help="a checkpoint directory written by `agd-ray train` (OUTPUT/checkpoint)")
    evaluate.add_argument("--episodes", type=int, default=10, help="episodes to run (>= 1)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the first episode's reset")
    evaluate.add_argument("--env", default=None,
                          help="environment (default: the one in the checkpoint's config.json); its observation and "
                               "action shapes must be the policy's")
    evaluate.add_argument("--debug", action="store_true", help=DEBUG_HELP)

    bench = commands.add_parser("bench", help="run a benchmark from the source checkout's bench/ folder",
                                description="Runs bench/NAME.py with the remaining arguments (see its --help). "
                                            "Benchmarks print a table and write JSON under bench/out/.")
    bench.add_argument("name", help="imagination, guidance, throughput, sample-efficiency, ... "
                                     "(a file bench/NAME.py, '-' for '_')")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    return parser


# -- validation (no Ray, no actors) --------------------------------------------------------------------------
# With --resume, these come from the command line; every other train setting from DIR/config.json.
RESUME_FLAGS = ("env_steps", "checkpoint_every", "address", "num_cpus")


def resume_args(args):
    """`train --resume DIR`: the run's own arguments (DIR/config.json) with --env-steps, --checkpoint-every,
    --address and --num-cpus from the command line (if given); any other flag given is refused (UsageError)."""
    directory = pathlib.Path(args.resume)
    defaults = build_parser().parse_args(["train"])
    # the options on the command line, at any value (main records them); else those that differ from the default
    options = getattr(args, "given_options", None)
    if options is None:
        options = [name for name, value in vars(args).items() if value != getattr(defaults, name, None)]
    given = [name for name in vars(args) if name in options
             and name not in (*RESUME_FLAGS, "resume", "command", "explicit_flags", "debug", "given_options")]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"{flags} cannot be given with --resume; the settings come from {directory / 'config.json'} "
                         f"(only --env-steps, --checkpoint-every, --address and --num-cpus may be given)")
    config_file = directory / "config.json"
    try:
        stored = json.loads(config_file.read_text())["args"]
        if not isinstance(stored, dict):
            raise TypeError
    except FileNotFoundError:
        raise UsageError(f"resume={str(directory)!r} has no {config_file}; "
                         "give the --output of an earlier train") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{config_file} is unreadable or not written by this agd-ray train; cannot resume") from None
    resumed = argparse.Namespace(**{**vars(defaults), **stored})
    for name in RESUME_FLAGS:
        if name in options:
            setattr(resumed, name, getattr(args, name))
    resumed.output, resumed.resume, resumed.command = str(directory), str(directory), "train"
    resumed.explicit_flags, resumed.overwrite = (), False  # the stored settings were checked when the run began
    resumed.given_options = None
    resumed.debug = args.debug
    checkpoint_path(directory)  # refused now, before Ray starts
    return resumed












def check_train_args(args) -> dict:
    """Every train argument checked; returns the resolved settings or raises UsageError (one line)."""
    from agd_ray.envs.core import validate_env_id

    try:
        validate_env_id(args.env)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.guide not in GUIDE_CHOICES:
        raise UsageError(f"guide={args.guide!r} is not allowed; choose one of {', '.join(GUIDE_CHOICES)}")
    temperature = _positive_float("temperature", args.temperature)
    scale = None
    if args.scale is not None:
        try:
            scale = float(args.scale)
        except ValueError:
            raise UsageError(f"scale={args.scale!r} is not a number; scale must be a finite number >= 0") from None
        if not (scale >= 0 and math.isfinite(scale)):
            raise UsageError(f"scale={scale!r} is not allowed; scale must be a finite number >= 0")
    preset = args.preset
    if preset is None:
        preset = "paper" if _cuda_available() else "cpu"
    if preset not in PRESETS:
        raise UsageError(f"preset={preset!r} is not allowed; choose one of {', '.join(PRESETS)}")
    if args.horizon is not None and args.horizon < 2:
        raise UsageError(f"horizon={args.horizon!r} is not allowed; horizon must be an integer >= 2")
    if args.env_steps < 1:
        raise UsageError(f"env-steps={args.env_steps!r} is not allowed; env-steps must be >= 1")
    if args.num_env_runners is not None and args.num_env_runners < 0:
        raise UsageError(f"num-env-runners={args.num_env_runners!r} is not allowed; it must be >= 0")
    if args.eval_interval is not None and args.eval_interval < 0:
        raise UsageError(f"eval-interval={args.eval_interval!r} is not allowed; it must be >= 0")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise UsageError(f"num-cpus={args.num_cpus!r} is not allowed; it must be an integer >= 1 "
                         f"(logical CPUs of the embedded local Ray; omit it for the machine's count)")
    output = pathlib.Path(args.output or f"runs/{args.env}-{args.guide}-{args.seed}")
    if output.exists() and not output.is_dir():
        raise UsageError(f"output={str(output)!r} exists and is not a directory; give a directory path")
    # The guide's and world model's own checks (frozen dataclasses; no Ray, no torch needed for these).
    from agd_ray.sweep import parse_config_items
    from agd_ray.world_model.config import GuideConfig, WorldModelConfig

    try:
        overrides = parse_config_items(getattr(args, "config", None) or [])
    except ValueError as error:
        raise UsageError(str(error)) from None
    flag_values = {"guide": "none" if args.guide == "model-free" else args.guide, "temperature": temperature,
                   "scale": scale, "horizon": args.horizon}
    for name in getattr(args, "explicit_flags", ()):
        key = CONFLICTING_KEYS[name]
        if key in overrides and overrides[key] != flag_values[name]:
            flag = getattr(args, name)
            raise UsageError(f"--{name} {flag} and --config {key}={overrides[key]} set the same setting to different "
                             f"values; give one of them")
    settings = PRESET_SETTINGS[preset]
    world_model = dict(settings["world_model"])
    if args.horizon is not None:
        world_model["horizon"] = args.horizon
    guide = {"kind": "none" if args.guide == "model-free" else args.guide, "temperature": temperature}
    if scale is not None:
        guide["scale"] = scale
    try:
        GuideConfig(**guide)
        WorldModelConfig(**{k: v for k, v in world_model.items() if k in WorldModelConfig.__dataclass_fields__})
    except ValueError as error:
        raise UsageError(str(error)) from None
    return {"preset": preset, "settings": settings, "world_model": world_model, "guide": guide, "output": output,
            "config": overrides}


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def build_config(args, resolved: dict):
    """The AGDConfig of a `train` invocation."""
    from agd_ray.config import AGDConfig

    settings = resolved["settings"]
    num_env_runners = settings["num_env_runners"] if args.num_env_runners is None else args.num_env_runners
    eval_interval = settings["evaluation_interval"] if args.eval_interval is None else args.eval_interval
    config = (
        AGDConfig()
        .environment(args.env)
        .env_runners(num_env_runners=num_env_runners, num_cpus_per_env_runner=1 if num_env_runners else 0)
        .training(**settings["training"])
        .world_model(**resolved["world_model"])
        .guidance(**resolved["guide"])
        .imagination(**settings["imagination"])
        .replay(**settings["replay"])
        .debugging(seed=args.seed)
        .reporting(metrics_num_episodes_for_smoothing=20)
    )
    if args.guide == "model-free":
        config = config.model_free()
    if resolved.get("config"):
        from agd_ray.sweep import to_config_keys

        try:
            config.update_from_dict(to_config_keys(resolved["config"]))
        except ValueError as error:
            raise UsageError(f"--config: {error}") from None
    if eval_interval:
        config.evaluate_at_env_steps = args.env_steps
        config = config.evaluation(
            evaluation_interval=eval_interval,
            evaluation_num_env_runners=1,
            evaluation_duration=settings["evaluation_episodes"],
            evaluation_duration_unit="episodes",
            evaluation_config={"explore": False},
        )
    rllib_logger = logging.getLogger("ray.rllib.algorithms.algorithm_config")
    level = rllib_logger.level
    rllib_logger.setLevel(logging.ERROR)  # RLlib's "new API stack" notice would make the error two lines
    try:  # the cross-field checks (RLlib's and AGDConfig's) before Ray starts; build_algo runs them again
        config.validate()
    except ValueError as error:
        raise UsageError(str(error).strip().splitlines()[0]) from None
    finally:
        rllib_logger.setLevel(level)
    return config


# -- resources -------------------------------------------------------------------------------------------------
def resource_demand(config, resource: str) -> tuple[float, dict]:
    """CPUs or GPUs (`resource` "CPU" or "GPU") Ray must place for a run outside Tune, and what asks for them:
    {name: (count, each)}. The total is `AGD.default_resource_request`'s bundles (what a Tune trial reserves)
    less the first one, the main process: outside Tune that is this driver (with the local learner), which holds
    no Ray resources."""
    from agd_ray.algorithm import AGD

    bundles = AGD.default_resource_request(config).bundles
    total = sum(float(b.get(resource, 0)) for b in bundles[1:])
    field = {"CPU": "num_cpus", "GPU": "num_gpus"}[resource]
    evaluation = config.get_evaluation_config_object()
    eval_runners = (evaluation.num_env_runners if config.evaluation_interval else 0) or 0
    parts = {"env runners": (config.num_env_runners, float(getattr(config, f"{field}_per_env_runner") or 0)),
             "evaluation runners": (eval_runners, float(getattr(evaluation, f"{field}_per_env_runner") or 0)),
             "learners": (config.num_learners,
                          float(getattr(config, f"{field}_per_learner") or 0) if config.num_learners else 0.0)}
    if config.model_based:
        training, imagination = config.world_model_training, config.imagination_config
        parts["world model"] = (1, float(getattr(training, field)))
        if imagination.num_workers > 1:
            parts["imagination workers"] = (imagination.num_workers,
                                            float(imagination.worker_resources(training)[field]))
    return total, parts


def cpu_demand(config) -> tuple[float, dict]:
    """CPUs Ray must place for a run outside Tune, and what asks for them (`resource_demand`)."""
    return resource_demand(config, "CPU")


def _cpus(value: float) -> str:
    return f"{value:g}"


def check_local_resources(config, num_cpus: int | None) -> None:
    """The embedded local Ray (`ray.init(num_cpus=...)`) must hold the run's actors, or Ray waits for them
    forever: UsageError with the demand, the capacity and sizes that fit, before Ray starts."""
    custom = config.custom_resources()
    if custom:  # only a cluster's nodes advertise them (cluster/*.yaml); the local Ray would wait forever
        raise UsageError(f"the run's actors ask for custom resources {custom} (world_model.resources, "
                         f"replay.resources, imagination.resources_per_worker), which the embedded local Ray does "
                         f"not have: give --address of a cluster whose nodes advertise them, or leave them unset")
    capacity = local_ray_cpus(num_cpus)  # as _run_training starts it
    total, parts = cpu_demand(config)
    if total <= capacity:
        return
    spare = capacity - total
    fits = []
    runners, per_runner = parts["env runners"]
    if runners and per_runner > 0:
        fewer = runners + math.floor(spare / per_runner)
        if fewer >= 0:
            fits.append(f"--num-env-runners {fewer}")
    eval_runners, per_eval = parts["evaluation runners"]
    if eval_runners * per_eval >= -spare:
        fits.append("--eval-interval 0")
    if "world model" in parts and parts["world model"][1] >= -spare:
        fits.append("--config world_model.num_cpus=0")
    fits.append(f"--num-cpus {math.ceil(total)} (logical CPUs; more than the machine's cores shares them)")
    asked = ", ".join(f"{name} {count} x {_cpus(each)}" for name, (count, each) in parts.items() if count * each)
    source = "--num-cpus" if num_cpus else "the machine's count"
    raise UsageError(f"the run's actors need {_cpus(total)} CPUs ({asked}) but the local Ray has {capacity} "
                     f"({source}); sizes that fit: {', or '.join(fits)}")


def available_memory() -> int | None:
    """Bytes of memory this machine can give a new allocation now (Linux: MemAvailable), else its physical
    memory; None where neither is known."""
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _bytes(count: float) -> str:
    """1.2 GiB, 3.6 TiB, 512 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.3g} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.3g} TiB"


def check_replay_memory(config) -> None:
    """The replay actor allocates `replay.capacity` transitions at start (on this machine, with local Ray): a
    capacity whose arrays exceed the memory available is refused before Ray starts, with the estimate and a
    capacity that fits in half of it."""
    capacity, available = config.replay_config.capacity, available_memory()
    if not config.model_based or available is None or capacity * 4096 <= available:
        return  # no env made (MuJoCo's model compile) where even 4 KiB a transition fits; these tasks need < 400 B
    from agd_ray.envs.core import make_env
    from agd_ray.replay.buffer import ReplayBuffer

    probe = make_env(config.env, config.env_config)
    try:
        dims = (int(math.prod(probe.observation_space.shape)), int(math.prod(probe.action_space.shape)),
                int(probe.unwrapped.model.nq), int(probe.unwrapped.model.nv))
    finally:
        probe.close()
    per = ReplayBuffer.bytes_per_transition(*dims)
    if per * capacity <= available:
        return
    fits = max(1000, int(available / 2 / per) // 1000 * 1000)
    raise UsageError(f"replay.capacity={capacity} needs {_bytes(per * capacity)} ({per} bytes per {config.env} "
                     f"transition) but this machine has {_bytes(available)} of memory available; a size that fits: "
                     f"--config replay.capacity={fits} (half of it)")


def gpu_demand(config) -> tuple[float, dict]:
    """GPUs Ray must place for a run outside Tune, and what asks for them (`resource_demand`)."""
    return resource_demand(config, "GPU")


def local_ray_gpus() -> int:
    """The GPUs an embedded local Ray finds on this machine (`ray.init` without num_gpus: its accelerator
    manager's count, limited to CUDA_VISIBLE_DEVICES)."""
    try:
        from ray._private import accelerators

        manager = accelerators.get_accelerator_manager_for_resource("GPU")
        if manager is None:
            return 0
        count = int(manager.get_current_node_num_accelerators())
        visible = manager.get_current_process_visible_accelerator_ids()
        return count if visible is None else min(count, len(visible))
    except Exception:  # noqa: BLE001 - Ray's detection moved: count what torch sees, as Ray does for CUDA
        import torch

        return torch.cuda.device_count()


def check_local_gpus(config) -> None:
    """A run whose actors ask for more GPUs than the embedded local Ray finds waits for them forever: UsageError
    with the demand, the GPUs found and a setting that fits, before Ray starts."""
    total, parts = gpu_demand(config)
    capacity = local_ray_gpus()
    if total <= capacity + 1e-9:
        return
    asked = ", ".join(f"{name} {count} x {_cpus(each)}" for name, (count, each) in parts.items() if count * each)
    fit = "give fewer GPUs to the actors that ask for them"
    if parts.get("world model", (0, 0.0))[1] > 0:
        keys = "world_model.num_gpus=0" if capacity == 0 else f"world_model.num_gpus={capacity} (or less)"
        if config.imagination_config.num_gpus_per_worker:
            keys += " imagination.num_gpus_per_worker=0"
        fit = f"a setting that fits: --config {keys}" + (" (the world model on CPUs)" if capacity == 0 else "")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    found = f"{capacity} (found on this machine{'' if visible is None else f', CUDA_VISIBLE_DEVICES={visible!r}'})"
    raise UsageError(f"the run's actors need {_cpus(total)} GPU{'' if total == 1 else 's'} ({asked}) but the local "
                     f"Ray has {found}; {fit}")


# -- outputs ---------------------------------------------------------------------------------------------------


























def train(args) -> int:
    resuming = args.resume is not None
    if resuming:
        args = resume_args(args)
    else:  # the task's tuned settings under the command line's (agd_ray/tuned.py); --resume keeps config.json's
        try:
            args, line = apply_tuned(args, presets=PRESETS, flag_keys=CONFLICTING_KEYS)
        except ValueError as error:
            raise UsageError(str(error)) from None
        if line:
            print(line, flush=True)
    resolved = check_train_args(args)
    output: pathlib.Path = resolved["output"]
    if resuming:
        finished = finished_run_text(output, args.env_steps)
        if finished:
            print(finished, flush=True)
            return 0
    config = build_config(args, resolved)
    if not args.address:
        check_local_resources(config, args.num_cpus)
        check_local_gpus(config)
        check_replay_memory(config)
    if not resuming:
        check_output_dir(output, args.overwrite)  # the last check: --overwrite removes nothing on bad input
        if args.overwrite and output.is_dir() and any(output.iterdir()):
            import shutil

            shutil.rmtree(output)
            print(f"agd-ray train: --overwrite: removed the earlier run in {output}", flush=True)
    output.mkdir(parents=True, exist_ok=True)
    if not resuming:
        _write_config(args, resolved, config, output)
    return _run_training(args, resolved, config, output, resuming)


# The base of the actors' snapshots (recovery.snapshot_dir, unless --config sets it): OUTPUT/actor_snapshots/<the
# process's RLlib log directory name>, removed when the run ends (AGD.cleanup) and, left by a killed driver, on
# --resume.










def _write_config(args, resolved, config, output: pathlib.Path) -> None:
    stored = {k: v for k, v in vars(args).items()
              if k not in ("command", "resume", "overwrite", "explicit_flags", "debug", "given_options")}
    stored["preset"] = resolved["preset"]  # as resolved here (the default depends on CUDA)
    (output / "config.json").write_text(json.dumps(
        {"argv": sys.argv[1:], "args": stored, "preset": resolved["preset"], "guide": effective_guide(config),
         "env": args.env, "seed": args.seed, "env_steps": args.env_steps, **config.flat_sections(),
         "ppo": {k: getattr(config, k) for k in ("lr", "gamma", "lambda_", "train_batch_size_per_learner",
                                                  "minibatch_size", "num_epochs", "num_env_runners")}},
        indent=2, default=str))


def _run_training(args, resolved, config, output: pathlib.Path, resuming: bool) -> int:
    import ray
    from tensorboardX import SummaryWriter

    if resuming:  # the checkpoint's world model and replay files whole, before Ray starts (seconds, not a minute)
        check_checkpoint_data(checkpoint_path(output), config.model_based)
    if config.recovery_config.snapshot_dir is None:  # the actors' snapshots under --output, not ~/ray_results
        snapshots = output.resolve() / SNAPSHOT_DIR
        config.recovery(snapshot_dir=str(snapshots))
        if resuming:  # left by a killed driver; this process snapshots into a directory of its own
            import shutil

            shutil.rmtree(snapshots, ignore_errors=True)
    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=local_ray_cpus(args.num_cpus), include_dashboard=False,
                 log_to_driver=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    rows: list[dict] = []  # a resumed run's earlier rows come from truncate_metrics below
    wall_before, previous_result = 0.0, None
    algo = writer = None
    guide = effective_guide(config)
    start = time.perf_counter()
    failure = None
    try:
        algo = config.build_algo()
        if resuming:
            checkpoint = checkpoint_path(output)
            try:
                algo.restore_from_path(str(checkpoint.resolve()))
            except Exception as error:  # noqa: BLE001 - one line naming the checkpoint, exit status 2
                raise UsageError(f"checkpoint {checkpoint} could not be restored: "
                                 f"{type(error).__name__}: {first_line(error)}") from None
            print(f"agd-ray train: resumed from {checkpoint} at iteration {algo.iteration}, "
                  f"env steps {algo._counters['env_steps']}", flush=True)
            rows = truncate_metrics(output, algo.iteration)
            truncate_tensorboard(output / "tb", int(algo._counters["env_steps"]))
            # wall_s continues from the checkpoint's row: the ETA counts the whole run's time, not this process's
            wall_before = float(rows[-1].get("wall_s") or 0.0) if rows else 0.0
        # a resumed run's events in a file of their own (named after the checkpoint's iteration), flushed each iteration
        writer = SummaryWriter(str(output / "tb"), filename_suffix=f".resumed-at-{algo.iteration}" if resuming else "")
        if not resuming:  # the settings once, as text (config.json); the scalars are what changes
            writer.add_text("config", "```\n" + (output / "config.json").read_text() + "\n```", 0)
        overrides = "".join(f" {key}={value}" for key, value in resolved["config"].items())
        print(f"agd-ray train: {args.env} guide={guide} temperature={config.guide_config.temperature}"
              f"{guide_method_text(config.guide_config) if config.model_based else ''} "
              f"preset={resolved['preset']}{overrides} seed={args.seed} -> {output}", flush=True)
        mode = "a" if resuming else "w"  # a resumed run appends
        with open(output / "metrics.jsonl", mode) as jsonl, open(output / "metrics.csv", mode, newline="") as csv_file:
            table = csv.DictWriter(csv_file, fieldnames=list(ROW_KEYS) + ["wall_s"])
            if not resuming or csv_file.tell() == 0:
                table.writeheader()
            while True:
                result = algo.train()
                row = result_row(result)
                row["wall_s"] = wall_before + time.perf_counter() - start
                previous = rows[-1] if rows else None
                rows.append(row)
                table.writerow(row)
                csv_file.flush()
                scalars = flat_scalars(result)
                jsonl.write(json.dumps(scalars) + "\n")
                jsonl.flush()
                step = int(row["env_steps"] or 0)
                for name, value in scalars.items():
                    if not name.startswith("config/"):  # constant: config.json and the "config" text hold them
                        writer.add_scalar(name, value, step)
                writer.flush()
                print(f"iter {int(row['iteration'] or 0):4d}  env_steps {step:7d}"
                      f"{progress_text(step, args.env_steps, row['wall_s'])}  "
                      f"return {fmt(row['episode_return_mean'], '8.1f')}  "
                      f"eval {fmt(row['eval_return_mean'], '8.1f')}  "
                      f"wm_loss {fmt(row['world_model_loss'], '.3f')}  {gain_text(row)}"
                      f"{row['time_this_iter_s'] or 0:.1f}s", flush=True)
                idle = idle_iteration_text(previous, row, result, previous_result)
                if idle:
                    print(idle, flush=True)
                previous_result = result
                if step >= args.env_steps:
                    break
                if args.checkpoint_every and int(row["iteration"] or 0) % args.checkpoint_every == 0:
                    save_checkpoint(algo, output, row)
        checkpoint = save_checkpoint(algo, output, row)
    except BaseException as error:
        failure = error
        cause = os_error(error) if isinstance(error, Exception) else None
        if cause is not None and cause.errno in DISK_ERRNOS:  # a read-only or full --output (metrics, snapshots)
            raise UsageError(f"could not write the run's outputs in {output}: {os_error_text(cause)}") from None
        raise
    finally:
        problem = _close_run(algo, writer, rows, output, f"{args.env} {guide} seed {args.seed}")
        if problem is not None and failure is None:
            raise problem
    print(f"done in {time.perf_counter() - start:.0f}s; checkpoint {checkpoint}; curve {output / 'learning_curve.png'}")
    return 0


def effective_guide(config) -> str:
    """The guide the run trains with, as the header, config.json and the plot name it: model-free, or the
    built config's guidance.kind (a --config key may have set it)."""
    return config.guide_config.kind if config.model_based else "model-free"


def _close_run(algo, writer, rows: list[dict], output: pathlib.Path, title: str) -> UsageError | None:
    """The end of every run, each step tried whatever the others did: TensorBoard's file closed, the learning
    curve drawn, the algorithm stopped (its actors and their snapshots gone), Ray shut down, and the empty log
    directory RLlib made outside --output (~/ray_results/<time>) removed. Returns the first failure as one line."""
    import ray

    steps = [("closing TensorBoard's events in tb/", writer.close if writer is not None else None),
             (f"writing {output / 'learning_curve.png'}",
              (lambda: plot_learning_curve(rows, output / "learning_curve.png", title)) if rows else None),
             ("stopping the algorithm", algo.stop if algo is not None else None),
             ("shutting Ray down", ray.shutdown)]
    problem = None
    for what, step in steps:
        if step is None:
            continue
        try:
            step()
        except Exception as error:  # noqa: BLE001 - the next steps still run; the first failure is reported
            if problem is None:
                cause = os_error(error)
                text = os_error_text(cause) if cause is not None else f"{type(error).__name__}: {error}"
                problem = UsageError(f"{what} failed: {text.strip().splitlines()[0]}")
    for directory in ((output / SNAPSHOT_DIR), pathlib.Path(algo.logdir) if algo is not None else None):
        if directory is not None:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty
    return problem




# -- evaluate --------------------------------------------------------------------------------------------------














def bench(args) -> int:
    """Run bench/NAME.py of the source checkout (benchmarks are not part of the installed package)."""
    import runpy

    folder = pathlib.Path(__file__).resolve().parent.parent / "bench"
    available = sorted(p.stem.replace("_", "-") for p in folder.glob("*.py")
                       if not p.stem.startswith("_")) if folder.is_dir() else []
    if args.name.replace("_", "-") not in available:
        where = f"choose one of {', '.join(available)}" if available else f"no bench/ folder at {folder}"
        raise UsageError(f"benchmark {args.name!r} not found; {where}")
    sys.argv = [str(folder / f"{args.name.replace('-', '_')}.py"), *args.bench_args]
    runpy.run_path(sys.argv[0], run_name="__main__")
    return 0


def given_train_options(argv: list[str]) -> set[str]:
    """The `train` options given in `argv`, whatever their value (a flag equal to its default included): argv parsed
    again with every default suppressed."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in commands.choices["train"]._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command", "explicit_flags"}


def main(argv=None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.command == "train":
        args.given_options = given_train_options(argv)
    if getattr(args, "address", None) is None:
        # The embedded local Ray serves this process only; a cluster (--address) keeps Ray's token auth.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        if args.command == "train":
            return train(args)
        if args.command == "bench":
            return bench(args)
        if args.command == "sweep":
            return sweep_main(args)
        return evaluate(args)
    except UsageError as error:
        print(f"agd-ray {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if getattr(args, "debug", False) or args.command == "bench":  # a benchmark's failure keeps its traceback
            raise
        print(f"agd-ray {args.command}: error: {error_text(error)} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
