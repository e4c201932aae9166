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
import errno
import json
import logging
import math
import os
import pathlib
import sys
import time

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


class UsageError(ValueError):
    """Bad command-line input: printed as one line, exit status 2."""


DEBUG_HELP = "on an unexpected error, show Python's traceback (without it: one line naming the error, exit status 2)"


def error_text(error: BaseException) -> str:
    """An unexpected error in one line: its type and first line (an actor's error: the error the actor raised)."""
    cause = getattr(error, "cause", None)  # ray.exceptions.RayTaskError
    if isinstance(cause, BaseException):
        error = cause
    return f"{type(error).__name__}: {_first_line(error)}"


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
CHECKPOINT_MARKER = "agd-ray-checkpoint.json"  # written last: a checkpoint without it is incomplete


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


def checkpoint_path(directory: pathlib.Path) -> pathlib.Path:
    """DIR/checkpoint if it is complete (else the previous one, DIR/checkpoint.old, if a save was killed
    between its renames); raises UsageError naming the path otherwise."""
    for candidate in (directory / "checkpoint", directory / "checkpoint.old"):
        marker = candidate / CHECKPOINT_MARKER
        if not candidate.exists() and candidate.name == "checkpoint" and (directory / "checkpoint.old").exists():
            continue
        if not candidate.is_dir():
            raise UsageError(f"no checkpoint at {candidate}; nothing to resume from")
        try:
            json.loads(marker.read_text())["env_steps"]
            json.loads((candidate / "agd" / "counters.json").read_text())["env_steps"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UsageError(f"checkpoint {candidate} is incomplete or corrupt (no valid {CHECKPOINT_MARKER} or "
                             f"agd/counters.json); cannot resume") from None
        if not (candidate / MODULE_SUBDIR).is_dir():
            raise UsageError(f"checkpoint {candidate} is incomplete or corrupt (no {MODULE_SUBDIR}); cannot resume")
        from agd_ray.algorithm import check_checkpoint_format

        try:
            check_checkpoint_format(candidate)
        except ValueError as error:
            raise UsageError(f"{error}; cannot resume") from None
        return candidate
    raise UsageError(f"no checkpoint at {directory / 'checkpoint'}; nothing to resume from")


def save_checkpoint(algo, output: pathlib.Path, row: dict) -> pathlib.Path:
    """Save to OUTPUT/checkpoint.tmp, mark it complete, then swap it in (the previous one is checkpoint.old
    until the swap is done): a driver killed mid-save leaves a complete checkpoint to resume from."""
    import shutil

    final, tmp, old = output / "checkpoint", output / "checkpoint.tmp", output / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        algo.save_to_path(str(tmp.resolve()))
        (tmp / CHECKPOINT_MARKER).write_text(json.dumps(
            {"iteration": int(row.get("iteration") or 0), "env_steps": int(row.get("env_steps") or 0)}))
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
    except Exception as error:
        cause = _os_error(error)
        if cause is None:
            raise
        # A read-only or full disk: the partial save goes, the last complete checkpoint stays where it was.
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.exists() and old.exists():
            os.replace(old, final)
        kept = (f"the last complete checkpoint, {final}, is kept" if (final / CHECKPOINT_MARKER).is_file()
                else "no earlier checkpoint")
        raise UsageError(f"could not write the checkpoint to {tmp}: {_os_error_text(cause)}; {kept}") from None
    shutil.rmtree(old, ignore_errors=True)
    return final


# A file that cannot be written: no space, quota, read-only filesystem, permission, too large, I/O error.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


def _os_error(error: BaseException) -> OSError | None:
    """The OSError behind `error` (itself, or what an actor raised: replay writes its own checkpoint files), or
    None for any other error."""
    if isinstance(error, OSError) and not hasattr(error, "cause"):
        return error
    cause = getattr(error, "cause", None)  # ray.exceptions.RayTaskError
    return cause if isinstance(cause, OSError) else None


def _os_error_text(error: OSError) -> str:
    """'No space left on device (errno 28): /path' in one line."""
    if error.strerror:
        text = error.strerror if "errno" in error.strerror else f"{error.strerror} (errno {error.errno})"
        return f"{text}: {error.filename}" if error.filename else text
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


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
def cpu_demand(config) -> tuple[float, dict]:
    """CPUs Ray must place for a run outside Tune, and what asks for them. The total is
    `AGD.default_resource_request`'s bundles (what a Tune trial reserves) less the first one, the main process:
    outside Tune that is this driver (with the local learner), which holds no Ray resources."""
    from agd_ray.algorithm import AGD

    bundles = AGD.default_resource_request(config).bundles
    total = sum(float(b.get("CPU", 0)) for b in bundles[1:])
    per_runner = float(config.num_cpus_per_env_runner or 0)
    evaluation = config.get_evaluation_config_object()
    eval_runners = (evaluation.num_env_runners if config.evaluation_interval else 0) or 0
    parts = {"env runners": (config.num_env_runners, per_runner),
             "evaluation runners": (eval_runners, float(evaluation.num_cpus_per_env_runner or 0)),
             "learners": (config.num_learners, float(config.num_cpus_per_learner or 0) if config.num_learners else 0.0)}
    if config.model_based:
        training, imagination = config.world_model_training, config.imagination_config
        parts["world model"] = (1, float(training.num_cpus))
        if imagination.num_workers > 1:
            parts["imagination workers"] = (imagination.num_workers,
                                            float(imagination.worker_resources(training)["num_cpus"]))
    return total, parts


def _cpus(value: float) -> str:
    return f"{value:g}"


def check_local_resources(config, num_cpus: int | None) -> None:
    """The embedded local Ray (`ray.init(num_cpus=...)`) must hold the run's actors, or Ray waits for them
    forever: UsageError with the demand, the capacity and sizes that fit, before Ray starts."""
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
    """GPUs Ray must place for a run outside Tune (`AGD.default_resource_request`'s bundles less the driver's),
    and what asks for them: {name: (count, GPUs each)}."""
    from agd_ray.algorithm import AGD

    bundles = AGD.default_resource_request(config).bundles
    total = sum(float(b.get("GPU", 0)) for b in bundles[1:])
    evaluation = config.get_evaluation_config_object()
    eval_runners = (evaluation.num_env_runners if config.evaluation_interval else 0) or 0
    parts = {"env runners": (config.num_env_runners, float(config.num_gpus_per_env_runner or 0)),
             "evaluation runners": (eval_runners, float(evaluation.num_gpus_per_env_runner or 0)),
             "learners": (config.num_learners, float(config.num_gpus_per_learner or 0) if config.num_learners else 0.0)}
    if config.model_based:
        training, imagination = config.world_model_training, config.imagination_config
        parts["world model"] = (1, float(training.num_gpus))
        if imagination.num_workers > 1:
            parts["imagination workers"] = (imagination.num_workers,
                                            float(imagination.worker_resources(training)["num_gpus"]))
    return total, parts


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
ROW_KEYS = {
    "iteration": ("training_iteration",),
    "env_steps": ("agd", "env_steps_lifetime"),
    "episode_return_mean": ("env_runners", "episode_return_mean"),
    "eval_return_mean": ("evaluation", "env_runners", "episode_return_mean"),
    "world_model_loss": ("world_model", "loss"),
    "world_model_updates": ("world_model", "num_updates"),
    "imagined_transitions": ("imagination", "num_transitions_lifetime"),
    "imagination_transitions_per_s": ("imagination", "transitions_per_s"),
    "action_z_std": ("imagination", "action_z_std"),
    "advantage_gain": ("guidance", "advantage_gain"),
    "advantage_gain_sigma": ("guidance", "advantage_gain_sigma"),
    "quality_advantage_gain_sigma": ("quality", "advantage_gain_sigma"),
    "quality_real_advantage_gain_sigma": ("quality", "real_advantage_gain_sigma"),
    "open_loop_mse_guided": ("quality", "open_loop_mse_guided"),
    "open_loop_mse_unguided": ("quality", "open_loop_mse_unguided"),
    "replay_size": ("replay", "size"),
    "time_this_iter_s": ("time_this_iter_s",),
}


def _lookup(result: dict, path: tuple):
    value = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None  # RLlib reports nan for "not measured this iteration"


def result_row(result: dict) -> dict:
    row = {name: _lookup(result, path) for name, path in ROW_KEYS.items()}
    # RLlib carries the last evaluation forward in every result: keep it only where it was measured
    # (`agd/evaluated`, AGD.step; results written before it existed: RLlib's every-`evaluation_interval` rule).
    evaluated = _lookup(result, ("agd", "evaluated"))
    if evaluated is None:
        interval = _lookup(result, ("config", "evaluation_interval"))
        iteration = _lookup(result, ("training_iteration",))
        evaluated = bool(interval) and iteration is not None and not iteration % interval
    if not evaluated:
        row["eval_return_mean"] = None
    if row["env_steps"] is None:
        row["env_steps"] = _lookup(result, ("env_runners", "num_env_steps_sampled_lifetime"))
    return row


def _flat_scalars(result: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_scalars(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
        elif hasattr(value, "item") and getattr(value, "size", 2) == 1:
            flat[name] = float(value.item())
    return {k: v for k, v in flat.items() if math.isfinite(v)}


def plot_learning_curve(rows: list[dict], path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("episode_return_mean", "training episodes"), ("eval_return_mean", "evaluation (mean action)")):
        points = [(r["env_steps"], r[key]) for r in rows if r.get(key) is not None and r.get("env_steps") is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o" if key.startswith("eval") else None, label=label)
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _duration(seconds: float) -> str:
    """3m10s, 1h05m, 42s."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def progress_text(step: int, budget: int, wall_s: float) -> str:
    """'/30000 (42%) eta 3m10s' after the env-step count: the budget's share reached, and the time left at the
    run's mean rate so far (wall time over env steps, both counted across --resume)."""
    share = min(100, int(100 * step / budget))
    if step >= budget:
        eta = "0s"
    elif step > 0 and wall_s > 0:
        eta = _duration(wall_s / step * (budget - step))
    else:
        eta = "-"
    return f"/{budget} ({share}%) eta {eta}"


def idle_iteration_text(previous: dict | None, row: dict, result: dict, previous_result: dict | None) -> str | None:
    """One line when an iteration added no real env steps (its row's env_steps equal the previous row's), with
    the reason where the result tells it; None otherwise."""
    if previous is None or previous.get("env_steps") is None or row.get("env_steps") != previous["env_steps"]:
        return None
    reasons = []
    counters = result.get("agd", {}) if isinstance(result.get("agd"), dict) else {}
    earlier = (previous_result or {}).get("agd", {})
    reconnects = _lookup(counters, ("env_runner_reconnects",))
    before = _lookup(earlier, ("env_runner_reconnects",)) if isinstance(earlier, dict) else None
    if reconnects is not None and before is not None and reconnects > before:
        reasons.append(f"{int(reconnects - before)} env runner(s) died and restarted (agd/env_runner_reconnects); "
                       f"RLlib restarts them and the next iteration samples again")
    why = "; ".join(reasons) if reasons else "no reason reported (see the env runners' logs under Ray's session dir)"
    return f"  iteration {int(row.get('iteration') or 0)} took no real env steps: {why}"


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _guide_method_text(guide) -> str:
    """' (resample, K=4)' or ' (gradient)' for an advantage guide (the run's GuideConfig); '' otherwise."""
    if guide.kind not in ("sag", "eag"):
        return ""
    return f" ({guide.method}, K={guide.candidates})" if guide.resampling else f" ({guide.method})"


def _gain_text(row: dict) -> str:
    """The guide's effect for the iteration line, in standard deviations of the unguided windows' advantage:
    this batch's (resampling) or the quality measurement's, with the simulator's where it was measured."""
    imagined = row["advantage_gain_sigma"]
    if imagined is None:
        imagined = row["quality_advantage_gain_sigma"]
    if imagined is None:
        return ""
    real = row["quality_real_advantage_gain_sigma"]
    return f"gain {imagined:+.2f}sd{'' if real is None else f' (sim {real:+.2f}sd)'}  "


def _read_rows(path: pathlib.Path) -> list[dict]:
    """metrics.csv rows of an earlier (resumed) run, for the learning curve."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            try:
                rows.append({k: (float(v) if v not in ("", None) else None) for k, v in r.items() if k in ROW_KEYS
                             or k == "wall_s"})
            except (TypeError, ValueError):
                pass  # a row cut short by the kill
    return rows


def _truncate_metrics(output: pathlib.Path, iteration: int) -> list[dict]:
    """A resumed run redoes the iterations after its checkpoint: their rows (logged before the driver died,
    after the last save) are dropped from metrics.jsonl and metrics.csv; returns the csv rows kept."""
    jsonl = output / "metrics.jsonl"
    if jsonl.is_file():
        lines = [line for line in jsonl.read_text().splitlines() if line.strip()]
        kept = []
        for line in lines:
            try:
                if json.loads(line).get("training_iteration", 0) <= iteration:
                    kept.append(line)
            except ValueError:
                pass  # a line cut short by the kill
        tmp = jsonl.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, jsonl)
    rows = [r for r in _read_rows(output / "metrics.csv") if (r.get("iteration") or 0) <= iteration]
    tmp = output / "metrics.csv.tmp"
    with open(tmp, "w", newline="") as f:
        table = csv.DictWriter(f, fieldnames=list(ROW_KEYS) + ["wall_s"], extrasaction="ignore")
        table.writeheader()
        table.writerows(rows)
    os.replace(tmp, output / "metrics.csv")
    return rows


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


# Files and folders `train` writes into --output: a directory holding one of them holds a run.
RUN_MARKERS = ("config.json", "metrics.jsonl", "metrics.csv", "checkpoint", "checkpoint.old", "checkpoint.tmp")
# The base of the actors' snapshots (recovery.snapshot_dir, unless --config sets it): OUTPUT/actor_snapshots/<the
# process's RLlib log directory name>, removed when the run ends (AGD.cleanup) and, left by a killed driver, on
# --resume.
SNAPSHOT_DIR = "actor_snapshots"


def check_checkpoint_data(checkpoint: pathlib.Path, model_based: bool) -> None:
    """A checkpoint's world model (zip members against their CRCs) and replay (its sha256) checked whole before
    Ray starts; UsageError naming the file and the reason otherwise."""
    import zipfile

    from agd_ray.replay.buffer import ReplayBuffer

    if not model_based:
        return
    world_model = checkpoint / "agd" / "world_model.pt"
    try:
        with zipfile.ZipFile(world_model) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as error:
        raise UsageError(f"checkpoint {checkpoint}: {world_model} is unreadable ({_first_line(error)}); "
                         f"cannot resume") from None
    if bad is not None:
        raise UsageError(f"checkpoint {checkpoint}: {world_model} is corrupt (its member {bad} fails its CRC); "
                         f"cannot resume")
    try:
        ReplayBuffer.check_saved(checkpoint / "agd" / "replay")
    except ValueError as error:
        raise UsageError(f"checkpoint {checkpoint}: {error}; cannot resume") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_output_dir(output: pathlib.Path, overwrite: bool) -> None:
    """A new run's --output: new or empty, or holding an earlier run and --overwrite given; UsageError otherwise.
    --overwrite never removes a directory that holds no run (a mistyped --output must not cost other files)."""
    if not output.is_dir() or not any(output.iterdir()):
        return
    if not any((output / name).exists() for name in RUN_MARKERS):
        raise UsageError(f"output={str(output)!r} exists, is not empty and holds no agd-ray run (no "
                         f"{', '.join(RUN_MARKERS[:3])} or checkpoint/); give a new or empty directory "
                         f"(--overwrite removes only an earlier run)")
    if not overwrite:
        raise UsageError(f"output={str(output)!r} exists and holds a run; use --resume {output} to continue it "
                         f"or --overwrite to replace it")


def finished_run_text(directory: pathlib.Path, env_steps: int) -> str | None:
    """`train --resume DIR` of a run whose checkpoint already has `env_steps` real env steps: the one line
    that says so (exit status 0, nothing started); None if the run has steps left."""
    checkpoint = checkpoint_path(directory)
    reached = int(json.loads((checkpoint / CHECKPOINT_MARKER).read_text())["env_steps"])
    if reached < env_steps:
        return None
    return (f"agd-ray train: {directory} is finished: its checkpoint has {reached} env steps, the budget is "
            f"--env-steps {env_steps}; to continue it give a larger --env-steps "
            f"(e.g. agd-ray train --resume {directory} --env-steps {max(2 * env_steps, reached + 1)})")


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
    rows: list[dict] = []  # a resumed run's earlier rows come from _truncate_metrics below
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
                                 f"{type(error).__name__}: {_first_line(error)}") from None
            print(f"agd-ray train: resumed from {checkpoint} at iteration {algo.iteration}, "
                  f"env steps {algo._counters['env_steps']}", flush=True)
            rows = _truncate_metrics(output, algo.iteration)
            _truncate_tensorboard(output / "tb", int(algo._counters["env_steps"]))
            # wall_s continues from the checkpoint's row: the ETA counts the whole run's time, not this process's
            wall_before = float(rows[-1].get("wall_s") or 0.0) if rows else 0.0
        # a resumed run's events in a file of their own (named after the checkpoint's iteration), flushed each iteration
        writer = SummaryWriter(str(output / "tb"), filename_suffix=f".resumed-at-{algo.iteration}" if resuming else "")
        if not resuming:  # the settings once, as text (config.json); the scalars are what changes
            writer.add_text("config", "```\n" + (output / "config.json").read_text() + "\n```", 0)
        overrides = "".join(f" {key}={value}" for key, value in resolved["config"].items())
        print(f"agd-ray train: {args.env} guide={guide} temperature={config.guide_config.temperature}"
              f"{_guide_method_text(config.guide_config) if config.model_based else ''} "
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
                scalars = _flat_scalars(result)
                jsonl.write(json.dumps(scalars) + "\n")
                jsonl.flush()
                step = int(row["env_steps"] or 0)
                for name, value in scalars.items():
                    if not name.startswith("config/"):  # constant: config.json and the "config" text hold them
                        writer.add_scalar(name, value, step)
                writer.flush()
                print(f"iter {int(row['iteration'] or 0):4d}  env_steps {step:7d}"
                      f"{progress_text(step, args.env_steps, row['wall_s'])}  "
                      f"return {_fmt(row['episode_return_mean'], '8.1f')}  "
                      f"eval {_fmt(row['eval_return_mean'], '8.1f')}  "
                      f"wm_loss {_fmt(row['world_model_loss'], '.3f')}  {_gain_text(row)}"
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
        cause = _os_error(error) if isinstance(error, Exception) else None
        if cause is not None and cause.errno in DISK_ERRNOS:  # a read-only or full --output (metrics, snapshots)
            raise UsageError(f"could not write the run's outputs in {output}: {_os_error_text(cause)}") from None
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
                cause = _os_error(error)
                text = _os_error_text(cause) if cause is not None else f"{type(error).__name__}: {error}"
                problem = UsageError(f"{what} failed: {text.strip().splitlines()[0]}")
    for directory in ((output / SNAPSHOT_DIR), pathlib.Path(algo.logdir) if algo is not None else None):
        if directory is not None:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty
    return problem


def _truncate_tensorboard(directory: pathlib.Path, env_steps: int) -> int:
    """A resumed run redoes the iterations after its checkpoint: the scalars they logged before the driver died
    (steps past the checkpoint's `env_steps`) are dropped from tb/'s event files, so that no tag has two points
    at one step; a record cut short by the kill ends its file. Returns the number of events dropped."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    dropped = 0
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        kept, offset = [], 0
        while offset + 12 <= len(data):  # a record: length (8 bytes), its crc (4), the event, the event's crc (4)
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            end = offset + 12 + length + 4
            if end > len(data):
                break
            event = Event()
            try:
                event.ParseFromString(data[offset + 12:offset + 12 + length])
            except Exception:  # noqa: BLE001 - protobuf's DecodeError: a damaged record ends the file
                break
            if event.HasField("summary") and event.step > env_steps:
                dropped += 1
            else:
                kept.append(data[offset:end])
            offset = end
        if offset != len(data) or len(b"".join(kept)) != len(data):
            tmp = directory / ".truncating"  # no "tfevents" in the name: TensorBoard never reads it
            tmp.write_bytes(b"".join(kept))
            os.replace(tmp, path)
    return dropped


# -- evaluate --------------------------------------------------------------------------------------------------
MODULE_SUBDIR = pathlib.Path("learner_group") / "learner" / "rl_module" / "default_policy"


def check_evaluate_args(args) -> dict:
    checkpoint = pathlib.Path(args.checkpoint)
    if not (checkpoint / MODULE_SUBDIR).is_dir():
        raise UsageError(f"checkpoint={str(checkpoint)!r} is not an agd-ray checkpoint (no {MODULE_SUBDIR}); "
                         f"give OUTPUT/checkpoint of a finished `agd-ray train`")
    if args.episodes < 1:
        raise UsageError(f"episodes={args.episodes!r} is not allowed; episodes must be >= 1")
    env_id = args.env
    if env_id is None:
        config_file = checkpoint.parent / "config.json"
        if not config_file.is_file():
            raise UsageError(f"no {config_file} to read the env from; pass --env")
        env_id = run_env(config_file)
    from agd_ray.envs.core import validate_env_id

    try:
        validate_env_id(env_id)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return {"checkpoint": checkpoint, "env": env_id}


def run_env(config_file: pathlib.Path) -> str:
    """The env id in a run's config.json; UsageError naming the file when it is unreadable or names none."""
    try:
        env_id = json.loads(config_file.read_text())["env"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(f"{config_file} is unreadable or names no env ({type(error).__name__}: {_first_line(error)}); "
                         f"pass --env, or give the checkpoint of an intact agd-ray train output") from None
    if not isinstance(env_id, str):
        raise UsageError(f"{config_file} has env={env_id!r}, not an env id; pass --env")
    return env_id


def load_policy(checkpoint):
    """The checkpoint's RL module, read without Ray; UsageError naming its directory if it cannot be loaded."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    directory = pathlib.Path(checkpoint) / MODULE_SUBDIR
    loggers = [logging.getLogger(name) for name in ("ray.rllib", "ray._common.deprecation")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:  # RLlib's deprecation notice about its own RLModuleConfig, printed on every load
        logger.setLevel(logging.ERROR)
    try:
        return RLModule.from_checkpoint(str(directory.resolve()))
    except Exception as error:  # noqa: BLE001 - RLlib raises many kinds for damaged files (pickle, pyarrow, ...)
        raise UsageError(f"the policy in {directory} could not be loaded ({type(error).__name__}: "
                         f"{_first_line(error)}); give OUTPUT/checkpoint of a complete agd-ray train") from None
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def check_policy_fits(module, env, env_id: str, checkpoint) -> None:
    """The env's observation and action shapes must be the policy's; UsageError naming both otherwise."""
    want = (getattr(module.observation_space, "shape", None), getattr(module.action_space, "shape", None))
    have = (env.observation_space.shape, env.action_space.shape)
    if None in want or want == have:
        return
    config_file = pathlib.Path(checkpoint).parent / "config.json"
    try:
        trained = f" (trained on {json.loads(config_file.read_text())['env']}, {config_file})"
    except (OSError, ValueError, KeyError, TypeError):
        trained = ""
    raise UsageError(f"env={env_id!r} does not fit the policy in {checkpoint}{trained}: it has observations of shape "
                     f"{have[0]} and actions of shape {have[1]}, the policy takes {want[0]} and gives {want[1]}; "
                     f"give the --env it was trained on")


def mean_action_returns(checkpoint, env_id: str, episodes: int, seed: int = 0, on_episode=None) -> list[float]:
    """Returns of the checkpoint's policy acting with its mean action on `episodes` fresh episodes of `env_id`
    (episode i reset with seed + i); `on_episode(i, return)` after each. Reads only the RL module (no Ray). A
    policy that cannot be loaded or does not fit the env raises UsageError (one line) before the first step."""
    import gymnasium as gym
    import torch
    from ray.rllib.core.columns import Columns
    from ray.rllib.utils.spaces.space_utils import unsquash_action

    module = load_policy(checkpoint)
    env = gym.make(env_id)
    act_dim = env.action_space.shape[0]
    returns = []
    try:
        check_policy_fits(module, env, env_id, checkpoint)
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done:
                with torch.no_grad():
                    out = module.forward_inference({Columns.OBS: torch.as_tensor(obs, dtype=torch.float32)[None]})
                inputs = out.get(Columns.ACTION_DIST_INPUTS)
                if inputs is None or inputs.shape[-1] < act_dim:
                    raise UsageError(f"the policy in {pathlib.Path(checkpoint) / MODULE_SUBDIR} gives no action "
                                     f"distribution for the env's {act_dim}-dimensional action; give "
                                     f"OUTPUT/checkpoint of a complete agd-ray train")
                mean = inputs[0, :act_dim].numpy()
                # RLlib's default normalize_actions: the module acts in [-1, 1], mapped onto the env's bounds.
                action = unsquash_action(mean, env.action_space)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
            if on_episode is not None:
                on_episode(episode, total)
    finally:
        env.close()
    return returns


def evaluate(args) -> int:
    """Mean action of the checkpoint's policy on fresh episodes; prints per-episode and mean returns."""
    resolved = check_evaluate_args(args)
    import numpy as np

    returns = mean_action_returns(resolved["checkpoint"], resolved["env"], args.episodes, seed=args.seed,
                                  on_episode=lambda i, r: print(f"episode {i}: return {r:.1f}", flush=True))
    print(f"mean return {np.mean(returns):.1f} +- {np.std(returns):.1f} over {len(returns)} episodes "
          f"({resolved['env']})")
    return 0


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
