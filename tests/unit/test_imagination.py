"""Imagined window -> RLlib episode (ALGORITHM.md section 4): lengths, the cut, and exact log-probs."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

from agd_ray.imagination import (
    action_z_std,
    episode_cut,
    make_critic,
    make_policy,
    policy_outputs,
    windows_to_episodes,
)

from tiny_module import tiny_module_spec

OBS_DIM, ACT_DIM, H = 4, 2, 5
OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
ACT_SPACE = gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    return tiny_module_spec(OBS_DIM, ACT_DIM).build()


def _windows(terminals: np.ndarray, module) -> dict:
    rng = np.random.default_rng(0)
    batch = terminals.shape[0]
    windows = {
        "observations": rng.normal(size=(batch, H, OBS_DIM)).astype(np.float32),
        "actions": rng.normal(size=(batch, H, ACT_DIM)).astype(np.float32),
        "rewards": rng.normal(size=(batch, H)).astype(np.float32),
        "terminals": terminals,
    }
    windows.update(policy_outputs(module, windows["observations"], windows["actions"]))
    return windows


@pytest.mark.parametrize(
    "terminals, steps, terminated",
    [
        ([0, 0, 0, 0, 0], H - 1, False),  # no termination: s[0..H-1], truncated (bootstraps from V(s[H-1]))
        ([1, 0, 0, 0, 0], 1, True),  # terminated by the first transition
        ([0, 0, 1, 1, 1], 3, True),  # first termination wins; padding after it is dropped
        ([0, 0, 0, 0, 1], H, True),  # terminated at the last step: the whole window
    ],
)
def test_episode_cut(terminals, steps, terminated):
    assert episode_cut(np.array(terminals, dtype=bool)) == (steps, terminated)


def test_windows_to_episodes_lengths_and_flags(module):
    terminals = np.array([[0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 1]], dtype=bool)
    windows = _windows(terminals, module)
    episodes = windows_to_episodes(windows, weights_seq_no=7, observation_space=OBS_SPACE, action_space=ACT_SPACE)
    assert [len(e) for e in episodes] == [H - 1, 2, H]
    assert [(e.is_terminated, e.is_truncated) for e in episodes] == [(False, True), (True, False), (True, False)]
    for b, episode in enumerate(episodes):
        steps = len(episode)
        assert len(episode.get_observations()) == steps + 1
        np.testing.assert_array_equal(episode.get_observations()[:min(steps + 1, H)],
                                      windows["observations"][b, :min(steps + 1, H)])
        np.testing.assert_array_equal(episode.get_actions(), windows["actions"][b, :steps])
        np.testing.assert_array_equal(episode.get_rewards(), windows["rewards"][b, :steps])
        np.testing.assert_array_equal(episode.get_extra_model_outputs(Columns.ACTION_LOGP),
                                      windows["action_logp"][b, :steps])
        assert episode.get_extra_model_outputs(Columns.ACTION_DIST_INPUTS).shape == (steps, 2 * ACT_DIM)
        assert list(episode.get_extra_model_outputs(WEIGHTS_SEQ_NO)) == [7] * steps
    # A window terminated at its last step has no s[H]: the last state is repeated (never bootstrapped).
    np.testing.assert_array_equal(episodes[2].get_observations()[-1], windows["observations"][2, -1])


def test_action_logp_is_the_modules_own_log_prob(module):
    windows = _windows(np.zeros((3, H), dtype=bool), module)
    obs = torch.as_tensor(windows["observations"].reshape(-1, OBS_DIM))
    actions = torch.as_tensor(windows["actions"].reshape(-1, ACT_DIM))
    with torch.no_grad():
        inputs = module.forward_exploration({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
        expected = module.get_exploration_action_dist_cls().from_logits(inputs).logp(actions)
        # and the Gaussian in closed form, from the policy callable the world model guides with
        mean, std = make_policy(module)(obs)
        closed_form = torch.distributions.Normal(mean, std).log_prob(actions).sum(-1)
    np.testing.assert_allclose(windows["action_logp"].reshape(-1), expected.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(windows["action_logp"].reshape(-1), closed_form.numpy(), rtol=1e-5, atol=1e-5)


def test_critic_callable_matches_value_head_for_any_leading_shape(module):
    obs = torch.randn(3, H, OBS_DIM)
    values = make_critic(module)(obs)
    assert values.shape == (3, H)
    with torch.no_grad():
        flat = module.compute_values({Columns.OBS: obs.reshape(-1, OBS_DIM)})
    torch.testing.assert_close(values.detach().reshape(-1), flat)


def test_action_z_std_from_episode_outputs_equals_the_adaptive_delta_statistic(module):
    from agd_ray.world_model.diagnostics import action_z_stats

    windows = _windows(np.zeros((6, H), dtype=bool), module)
    out = {"observations": torch.as_tensor(windows["observations"]), "actions": torch.as_tensor(windows["actions"])}
    with torch.no_grad():
        expected = action_z_stats(out, make_policy(module))["action_z_std"]
    assert action_z_std(windows["actions"], windows["action_dist_inputs"]) == pytest.approx(expected, rel=1e-6)
    assert np.isnan(action_z_std(windows["actions"][:1, :1], windows["action_dist_inputs"][:1, :1]))


@pytest.mark.parametrize("batch_size, num_workers, unit_size", [(16, 1, 16), (16, 2, 8), (17, 2, 4), (5, 3, 1),
                                                                 (3, 4, 1), (1024, 3, 100)])
def test_split_request_covers_the_batch_in_order_on_unit_boundaries(batch_size, num_workers, unit_size):
    from agd_ray.world_model.actor import split_request

    ranges = split_request(batch_size, num_workers, unit_size)
    assert len(ranges) == min(num_workers, -(-batch_size // unit_size))
    assert ranges[0][0] == 0 and ranges[-1][1] == batch_size
    for (_, stop), (start, _) in zip(ranges, ranges[1:]):
        assert stop == start and start % unit_size == 0
    units = [-(-(stop - start) // unit_size) for start, stop in ranges]
    assert max(units) - min(units) <= 1  # as even as the units allow


def test_unit_seeds_differ_per_unit_and_repeat():
    from agd_ray.world_model.actor import unit_seed

    seeds = [unit_seed(3, first) for first in (0, 8, 16)] + [unit_seed(4, 0)]
    assert len(set(seeds)) == 4 and unit_seed(3, 8) == seeds[1]
    assert all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize("shared", [False, True])
def test_action_dist_inputs_equal_rllibs_forward_exploration(shared):
    """The policy callable reads the actor's layers alone where the module has separate encoders (half the
    work); the values are RLlib's own, bit for bit, and without gradients as RLlib computes them, for either
    kind of module (with a shared encoder, RLlib's forward is used as it is)."""
    from agd_ray.imagination import _actor_path, action_dist_inputs

    torch.manual_seed(1)
    module = tiny_module_spec(OBS_DIM, ACT_DIM, vf_share_layers=shared).build()
    assert (_actor_path(module) is None) == shared
    obs = torch.randn(3, H, OBS_DIM, requires_grad=True)
    ours = action_dist_inputs(module, obs)
    rllib = module.forward_exploration({Columns.OBS: obs.reshape(-1, OBS_DIM)})[Columns.ACTION_DIST_INPUTS]
    assert ours.shape == (3, H, 2 * ACT_DIM)
    assert not ours.requires_grad and not rllib.requires_grad
    torch.testing.assert_close(ours, rllib.reshape(3, H, -1), rtol=0, atol=0)
