"""Env creation and validation for the five MuJoCo tasks of ARCHITECTURE.md."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

# id -> (D_s, D_a), as measured in ENVIRONMENT.md.
SUPPORTED_ENVS: dict[str, tuple[int, int]] = {
    "HalfCheetah-v5": (17, 6),
    "Hopper-v5": (11, 3),
    "Walker2d-v5": (17, 6),
    "Reacher-v5": (10, 2),
    "InvertedPendulum-v5": (4, 1),
}


def validate_env_id(env_id) -> str:
    """Return `env_id` if it is supported, else raise a ValueError naming it and the allowed ids."""
    if not isinstance(env_id, str) or env_id not in SUPPORTED_ENVS:
        raise ValueError(f"env={env_id!r} is not supported; choose one of {', '.join(SUPPORTED_ENVS)}")
    return env_id


class RecordSimState(gym.Wrapper):
    """Adds the MuJoCo state of the *current* observation to `info` as `qpos` and `qvel` (float64 copies).

    So in an RLlib episode `infos[t]` holds the simulator state of `observations[t]`, i.e. the state before
    transition t, which replay stores for open-loop checks (`env.unwrapped.set_state(qpos, qvel)`).
    """

    def _with_state(self, info: dict) -> dict:
        data = self.env.unwrapped.data
        info = dict(info)
        info["qpos"] = np.array(data.qpos, dtype=np.float64)
        info["qvel"] = np.array(data.qvel, dtype=np.float64)
        return info

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        return observation, self._with_state(info)

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        return observation, reward, terminated, truncated, self._with_state(info)


def make_env(env_id: str, env_config: dict | None = None) -> gym.Env:
    """`gym.make(env_id, **env_config)` wrapped in `RecordSimState`; unknown ids raise ValueError."""
    validate_env_id(env_id)
    config = {k: v for k, v in dict(env_config or {}).items() if k not in ("num_envs",)}
    return RecordSimState(gym.make(env_id, **config))


def register_recording_env(env_id: str) -> None:
    """Register `env_id` with RLlib's env registry so that its env runners build `make_env(env_id)`.

    The registry is Ray-session wide; registering under the plain id keeps `config.env` readable.
    """
    from ray.tune.registry import register_env

    validate_env_id(env_id)
    register_env(env_id, lambda ctx, _id=env_id: make_env(_id, ctx))


def executed_action_bound(normalize_actions: bool, action_space) -> float | None:
    """The box the env actually executes, in the policy's action space: 1.0 when RLlib normalises actions for
    a bounded Box (the module acts in [-1, 1]; RLlib maps that onto the bounds and clips), else None (no box
    known in that space). Replay stores actions clipped to it, and the world model is conditioned on it."""
    bounded = (isinstance(action_space, gym.spaces.Box) and bool(np.all(action_space.bounded_below))
               and bool(np.all(action_space.bounded_above)))
    return 1.0 if normalize_actions and bounded else None
