"""The tasks' termination rules (agd_ray/envs/termination.py) against the simulator, and their use in imagination.

Reference loop: each env stepped with uniformly random actions; at every step the rule applied to the returned
observation must equal the env's own `terminated`.
"""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from agd_ray.envs.core import SUPPORTED_ENVS
from agd_ray.envs.termination import terminal_rule, window_terminals
from agd_ray.world_model import GuideConfig, WorldModel, WorldModelConfig
from agd_ray.world_model.guidance import AdvantageGuide, gae_advantage
from agd_ray.world_model.normalizer import NormalizerSnapshot

TERMINATING = {"InvertedPendulum-v5", "Hopper-v5", "Walker2d-v5"}


@pytest.mark.parametrize("env_id", list(SUPPORTED_ENVS))
def test_rule_matches_the_envs_terminated_step_by_step(env_id):
    env = gym.make(env_id)
    env.action_space.seed(0)
    rule = terminal_rule(env_id)
    env.reset(seed=0)
    observations, terminated = [], []
    for _ in range(1500):
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        observations.append(obs)
        terminated.append(term)
        if term or trunc:
            env.reset()
    predicted = rule(torch.as_tensor(np.array(observations))).numpy()
    np.testing.assert_array_equal(predicted, np.array(terminated))
    if env_id in TERMINATING:  # both outcomes seen, so the comparison can fail either way
        assert 0 < sum(terminated) < len(terminated)
    else:
        assert not any(terminated)


@pytest.mark.parametrize("env_id", list(SUPPORTED_ENVS))
def test_rule_on_non_finite_observations(env_id):
    obs_dim = SUPPORTED_ENVS[env_id][0]
    healthy = {"Hopper-v5": [1.25] + [0.0] * (obs_dim - 1), "Walker2d-v5": [1.25] + [0.0] * (obs_dim - 1)}
    obs = torch.tensor([healthy.get(env_id, [0.0] * obs_dim)] * 2)
    obs[1, 0] = math.nan
    assert terminal_rule(env_id)(obs).tolist() == [False, env_id in TERMINATING]


def test_window_terminals_shift_by_one_and_truncate_the_last_step():
    rule = terminal_rule("InvertedPendulum-v5")
    states = torch.zeros(2, 5, 4)
    states[0, 3, 1] = 0.3  # s[3] unhealthy: the transition h = 2 terminated
    states[1, 0, 1] = 0.5  # s[0] is the start state: no transition leads to it in the window
    states[1, 4, 1] = -0.25  # s[4] unhealthy: transition h = 3
    expected = [[False, False, True, False, False], [False, False, False, True, False]]
    assert window_terminals(rule, states).tolist() == expected


def test_unknown_env_and_a_changed_rule_are_refused():
    with pytest.raises(ValueError, match="CartPole-v1"):
        terminal_rule("CartPole-v1")
    with pytest.raises(ValueError, match="healthy_z_range.*termination='model'"):
        terminal_rule("Hopper-v5", {"healthy_z_range": (0.5, 3.0)})
    assert terminal_rule("Hopper-v5", {"ctrl_cost_weight": 1e-3}) is not None


def _tiny_model(rule=None):
    config = WorldModelConfig(horizon=6, hidden_dim=16, num_layers=1, diffusion_steps=8, sampling_steps=4,
                              batch_size=8)
    return WorldModel(4, 1, config, seed=0, terminal_rule=rule)


def _policy(obs):
    return torch.zeros(*obs.shape[:-1], 1), torch.ones(*obs.shape[:-1], 1)


def test_imagined_terminals_follow_the_rule_on_the_returned_states():
    rule = terminal_rule("InvertedPendulum-v5")
    start = np.random.default_rng(0).normal(0.0, 0.3, size=(64, 4))
    with_rule = _tiny_model(rule).imagine(start, policy=_policy, guide=GuideConfig(kind="none"),
                                          generator=torch.Generator().manual_seed(0))
    channel = _tiny_model().imagine(start, policy=_policy, guide=GuideConfig(kind="none"),
                                    generator=torch.Generator().manual_seed(0))
    assert torch.equal(with_rule["observations"], channel["observations"])  # only the decoding differs
    expected = window_terminals(rule, with_rule["observations"])
    assert torch.equal(with_rule["terminals"], expected)
    assert 0 < expected.sum() < expected[:, :-1].numel()  # an untrained model's states cross |angle| 0.2 often
    assert not torch.equal(with_rule["terminals"], channel["terminals"])


def test_advantage_guide_cuts_at_the_rules_terminations():
    """With a rule the guide's advantages are GAE with continues 1 - rule(s[h+1]), whatever the channel says."""
    rule = terminal_rule("InvertedPendulum-v5")
    ds, horizon = 4, 5
    norm = NormalizerSnapshot.identity(ds, 1)
    x0 = torch.randn(3, horizon, ds + 2, generator=torch.Generator().manual_seed(1)) * 0.1
    x0[..., 1] = x0[..., 1].clamp(-0.2, 0.2)  # healthy angles ...
    x0[0, 2, 1] = 0.4  # ... but s[2] of window 0: transition 1 terminates
    x0[..., ds + 1] = 0.0  # the channel says: never
    critic = lambda s: s.sum(-1)  # noqa: E731
    config = GuideConfig(kind="sag", method="gradient", advantage="gae", normalize_advantage=False)
    got = AdvantageGuide(config, ds, rule).advantages(x0, norm, critic)
    continues = 1.0 - window_terminals(rule, x0[..., :ds]).float()
    expected = gae_advantage(x0[..., ds], critic(x0[..., :ds]), continues, config.gamma, config.lam)
    torch.testing.assert_close(got, expected)
    without = AdvantageGuide(config, ds).advantages(x0, norm, critic)
    assert not torch.allclose(got[0], without[0]) and torch.allclose(got[1:], without[1:])
