"""Simulator imagination: the perfect-model control for the imagination pipeline (`imagination.source="simulator"`).

Windows of the same shape as the diffusion model's (ALGORITHM.md 1 and 3.6), from the same replay start
states, but rolled out in the MuJoCo simulator itself: each window restores its start state's (qpos, qvel), the
current policy samples an action at every step (on-policy, as RLlib's env runners do), and the env steps.
PPO then trains on them through exactly the path the imagined windows take (`windows_to_episodes`, the
learner group). What this measures: how far the learner gets from H-step windows when the model is perfect,
which separates the error of the world model from the limits of learning on short windows from replay starts.
The real env steps it costs are not counted (it is a diagnostic, not a method).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch


class SimulatorImagination:
    """The `imagine` interface of `WorldModel` (what `imagine_windows` calls), rolled out in the simulator.

    env_id: a MuJoCo gymnasium id. horizon: window length H. action_bound: the box the env executes in the
    policy's action space (`executed_action_bound`; 1.0 when RLlib normalises actions), None when the policy acts
    in the env's own units (then the env's bounds clip).
    """

    def __init__(self, env_id: str, horizon: int, *, action_bound: float | None, device="cpu") -> None:
        import gymnasium as gym

        self.env_id = env_id
        self.device = device  # where the policy module lives
        self.config = SimpleNamespace(horizon=int(horizon))  # what imagine_windows reads of a model's config
        self.normalizer = SimpleNamespace(version=0)  # no normaliser: windows are in the env's own units
        self.delta = float("nan")  # no policy-guidance step
        self.action_bound = action_bound
        self._envs: list = []  # unwrapped MuJoCo envs, one per window of a unit, made on first use
        probe = gym.make(env_id)
        self.action_space = probe.action_space
        probe.close()

    def _env(self, index: int):
        import gymnasium as gym

        while len(self._envs) <= index:
            env = gym.make(self.env_id).unwrapped  # no time limit: a window is H steps
            env.reset(seed=len(self._envs))
            self._envs.append(env)
        return self._envs[index]

    def executed(self, actions: np.ndarray) -> np.ndarray:
        """Policy-space actions [..., D_a] -> what the env executes: RLlib's own `unsquash_action` of the sample
        clipped to the box (as its env runners do when they normalise actions), else the env's bounds."""
        from ray.rllib.utils.spaces.space_utils import unsquash_action

        if self.action_bound is None:
            return np.clip(actions, self.action_space.low, self.action_space.high)
        clipped = np.clip(actions, -self.action_bound, self.action_bound) / self.action_bound
        return unsquash_action(clipped, self.action_space)

    @torch.no_grad()
    def imagine(self, start_obs, *, policy, critic=None, guide=None, generator: torch.Generator | None = None,
                qpos=None, qvel=None) -> dict:
        """Windows from start states: start_obs [B, D_s] with their MuJoCo states qpos [B, nq], qvel [B, nv].

        Actions are sampled from `policy` (mean, std) with `generator`; after a termination the window is padded
        as ALGORITHM.md 1 pads real windows (last state and action repeated, reward 0, terminal 1). Returns torch
        tensors observations [B, H, D_s], actions [B, H, D_a] (the policy's samples, before clipping), rewards
        [B, H], terminals [B, H] (bool). `critic` and `guide` are not used (a simulator is not guided).
        """
        if qpos is None or qvel is None:
            raise ValueError("simulator imagination needs the start states' qpos and qvel (replay's "
                             "sample_start_states(..., with_state=True))")
        start = np.asarray(start_obs, dtype=np.float32)
        qpos, qvel = np.asarray(qpos, dtype=np.float64), np.asarray(qvel, dtype=np.float64)
        batch, horizon = len(start), self.config.horizon
        envs = [self._env(b) for b in range(batch)]
        for b, env in enumerate(envs):
            env.set_state(qpos[b], qvel[b])
        act_dim = int(np.prod(self.action_space.shape))
        observations = np.zeros((batch, horizon, start.shape[1]), dtype=np.float32)
        actions = np.zeros((batch, horizon, act_dim), dtype=np.float32)
        rewards = np.zeros((batch, horizon), dtype=np.float32)
        terminals = np.zeros((batch, horizon), dtype=bool)
        observations[:, 0] = start
        done = np.zeros(batch, dtype=bool)
        for h in range(horizon):
            mean, std = policy(torch.as_tensor(observations[:, h], device=self.device))
            mean, std = mean.float().cpu(), std.float().cpu()
            noise = torch.randn(mean.shape, generator=generator)
            actions[:, h] = (mean + std * noise).numpy()
            actions[done, h] = actions[done, h - 1]
            if h == horizon - 1:  # s[H] is not part of a window: the last action is not executed
                terminals[done, h] = True
                break
            executed = self.executed(actions[:, h])
            for b in np.flatnonzero(~done):
                obs, reward, terminated, _, _ = envs[b].step(executed[b])
                observations[b, h + 1] = obs
                rewards[b, h] = reward
                if terminated:
                    done[b] = True
                    terminals[b, h] = True
            padded = done & ~terminals[:, h]  # ended at an earlier step: repeat the last state
            observations[padded, h + 1] = observations[padded, h]
            terminals[done, h] = True
        return {
            "observations": torch.as_tensor(observations),
            "actions": torch.as_tensor(actions),
            "rewards": torch.as_tensor(rewards),
            "terminals": torch.as_tensor(terminals),
            "normalizer_version": 0,
        }
