"""Simulator imagination (`imagination.source="simulator"`): windows checked against a reference loop in a fresh
MuJoCo env, the padding rule of real windows, on-policy actions (a statistical property) and determinism."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from agd_ray.replay.buffer import ReplayBuffer
from agd_ray.world_model.diagnostics import collect_windows
from agd_ray.world_model.simulator import SimulatorImagination

HORIZON = 10


def linear_policy(obs: torch.Tensor):
    """A fixed Gaussian policy with a state-dependent mean (so a wrong state would show in the actions)."""
    mean = torch.tanh(obs @ torch.linspace(-1.0, 1.0, obs.shape[-1])[:, None])
    return mean, torch.full_like(mean, 0.4)


@pytest.fixture(scope="module")
def starts():
    return collect_windows("InvertedPendulum-v5", 64, HORIZON, seed=3)


def imagine(starts, seed=0, n=64):
    sim = SimulatorImagination("InvertedPendulum-v5", HORIZON, action_bound=1.0)
    out = sim.imagine(starts["observations"][:n, 0], policy=linear_policy,
                      generator=torch.Generator().manual_seed(seed), qpos=starts["qpos"][:n], qvel=starts["qvel"][:n])
    return sim, {k: v.numpy() for k, v in out.items() if torch.is_tensor(v)}


def test_windows_match_a_reference_rollout(starts):
    sim, out = imagine(starts)
    env = gym.make("InvertedPendulum-v5").unwrapped
    env.reset(seed=0)
    space = env.action_space
    terminated_windows = 0
    for b in range(len(out["observations"])):
        env.set_state(starts["qpos"][b], starts["qvel"][b])
        obs = env._get_obs()
        np.testing.assert_allclose(out["observations"][b, 0], obs, atol=1e-6)
        done_at = None
        for h in range(HORIZON - 1):
            if done_at is not None:  # padded as real windows are: last state and action, reward 0, terminal
                np.testing.assert_allclose(out["observations"][b, h + 1], out["observations"][b, done_at + 1])
                np.testing.assert_allclose(out["actions"][b, h], out["actions"][b, done_at])
                assert out["rewards"][b, h] == 0 and out["terminals"][b, h]
                continue
            a = out["actions"][b, h]
            executed = space.low + (np.clip(a, -1, 1) + 1) * (space.high - space.low) / 2  # RLlib's unsquash
            obs, reward, terminated, _, _ = env.step(executed)
            np.testing.assert_allclose(out["observations"][b, h + 1], obs, atol=1e-5)
            assert out["rewards"][b, h] == pytest.approx(reward)
            assert bool(out["terminals"][b, h]) == terminated
            if terminated:
                done_at = h
                terminated_windows += 1
        assert out["terminals"][b, HORIZON - 1] == (done_at is not None)
    assert 0 < terminated_windows < len(out["observations"])  # both cases were exercised


def test_actions_are_the_policys_samples(starts):
    sim, out = imagine(starts)
    obs, actions, terminals = out["observations"], out["actions"], out["terminals"]
    live = ~np.concatenate([np.zeros((len(obs), 1), bool), terminals[:, :-1]], axis=1)  # steps before padding
    mean, std = linear_policy(torch.as_tensor(obs[live]))
    z = (actions[live] - mean.numpy()) / std.numpy()
    n = len(z)
    assert n > 300
    assert abs(z.mean()) < 4 / np.sqrt(n)  # N(0, 1): 4 standard errors
    assert abs(z.std() - 1) < 4 / np.sqrt(2 * n)


def test_same_generator_same_windows_and_bounds(starts):
    _, a = imagine(starts, seed=5)
    _, b = imagine(starts, seed=5)
    _, c = imagine(starts, seed=6)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["actions"], c["actions"])
    sim = SimulatorImagination("InvertedPendulum-v5", HORIZON, action_bound=1.0)
    low, high = sim.action_space.low, sim.action_space.high
    np.testing.assert_allclose(sim.executed(np.array([[-7.0], [-1.0], [0.0], [1.0], [9.0]])),
                               [low, low, (low + high) / 2, high, high])
    with pytest.raises(ValueError, match="qpos and qvel"):
        sim.imagine(starts["observations"][:2, 0], policy=linear_policy)


def test_replay_start_states_carry_their_simulator_state():
    env = gym.make("InvertedPendulum-v5")
    obs, _ = env.reset(seed=0)
    data = {k: [] for k in ("observations", "actions", "rewards", "next_observations", "terminated", "qpos", "qvel")}
    for _ in range(40):  # one real episode (random actions end it early) or its first 40 steps
        data["qpos"].append(env.unwrapped.data.qpos.copy())
        data["qvel"].append(env.unwrapped.data.qvel.copy())
        action = env.action_space.sample()
        next_obs, reward, terminated, _, _ = env.step(action)
        for key, value in (("observations", obs), ("actions", np.clip(action, -1, 1)), ("rewards", reward),
                           ("next_observations", next_obs), ("terminated", terminated)):
            data[key].append(value)
        obs = next_obs
        if terminated:
            break
    n = len(data["rewards"])
    chunk = {k: np.asarray(v, dtype=np.float64 if k in ("qpos", "qvel") else bool if k == "terminated"
                           else np.float32) for k, v in data.items()}
    chunk.update(truncated=np.zeros(n, bool), episode_ids=np.zeros(n, np.int64), runner_id=0, seq_no=0)
    buffer = ReplayBuffer(4, 1, 2, 2, capacity=1000, seed=0)
    assert buffer.add_chunk(chunk) == n
    starts = buffer.sample_start_states(16, rng=np.random.default_rng(0), with_state=True)
    plain = buffer.sample_start_states(16, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(starts["observations"], plain)  # the same starts, with their states
    for obs, qpos, qvel in zip(starts["observations"], starts["qpos"], starts["qvel"]):
        env.unwrapped.set_state(qpos, qvel)
        np.testing.assert_allclose(env.unwrapped._get_obs(), obs, atol=1e-6)
