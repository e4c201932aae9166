"""`agd-ray evaluate`: a checkpoint's policy (mean action) over episodes of its task, each failure one line."""

from __future__ import annotations

import json
import logging
import pathlib

from agd_ray.errors import UsageError, first_line
from agd_ray.rundir import MODULE_SUBDIR


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
        raise UsageError(f"{config_file} is unreadable or names no env ({type(error).__name__}: {first_line(error)}); "
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
                         f"{first_line(error)}); give OUTPUT/checkpoint of a complete agd-ray train") from None
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
