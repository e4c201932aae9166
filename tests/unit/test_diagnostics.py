"""World-model diagnostics (ALGORITHM.md section 7): open-loop error, action z statistics, advantage gain, and the
response of imagined returns to the actions."""

import math

import numpy as np
import pytest
import torch

from agd_ray.world_model import GuideConfig, WorldModel, WorldModelConfig
from agd_ray.world_model.diagnostics import (
    action_z_stats,
    advantage_gain,
    collect_windows,
    imagine_with_actions,
    open_loop_error,
    simulate_actions,
    within_start_correlation,
    within_start_r2,
)

HORIZON = 8


@pytest.mark.parametrize("env_id", ["InvertedPendulum-v5", "Reacher-v5"])
def test_open_loop_error_is_zero_on_the_real_rollout(env_id):
    w = collect_windows(env_id, num_windows=4, horizon=HORIZON, seed=0)
    assert w["observations"].shape[:2] == (4, HORIZON) and w["qpos"].shape[0] == 4
    error = open_loop_error(env_id, w["qpos"], w["qvel"], w["actions"], w["observations"])  # [H]
    assert error.shape == (HORIZON,)
    assert np.isfinite(error[0])
    compared = error[np.isfinite(error)]
    assert np.all(compared <= 1e-10), error


def test_open_loop_error_equals_a_known_perturbation():
    # Reacher's 50-step episodes never terminate inside the window: every step is compared.
    w = collect_windows("Reacher-v5", num_windows=3, horizon=HORIZON, seed=1)
    v = np.linspace(-1.0, 2.0, w["observations"].shape[-1])  # [D_s]
    scale = np.zeros(HORIZON)
    scale[3], scale[5] = 0.5, 2.0
    imagined = w["observations"] + scale[None, :, None] * v  # [B, H, D_s]
    error = open_loop_error("Reacher-v5", w["qpos"], w["qvel"], w["actions"], imagined)
    expected = scale**2 * np.mean(v**2)  # [H]
    np.testing.assert_allclose(error, expected, atol=1e-10, rtol=1e-9)


def test_open_loop_error_stops_at_termination():
    # Pushing hard tips the pendulum over within a few steps (terminates, reward 0 at that step).
    push = lambda obs: np.array([3.0], dtype=np.float32)  # noqa: E731
    w = collect_windows("InvertedPendulum-v5", num_windows=3, horizon=HORIZON, seed=0, policy=push)
    terminals = w["terminals"]  # [B, H]
    assert terminals[:, -1].all(), "the test needs every window to terminate inside the horizon"
    first = terminals.argmax(axis=1)  # step whose transition terminates
    # Padding (ALGORITHM.md 1): after the terminating step, terminal 1, reward 0, action repeated.
    for b, h in enumerate(first):
        assert terminals[b, h:].all() and not terminals[b, :h].any()
        assert (w["rewards"][b, h + 1:] == 0).all()
        assert (w["actions"][b, h + 1:] == w["actions"][b, h]).all()
    # Garbage after the observation of the terminating step must not be compared.
    imagined = w["observations"].copy()
    for b, h in enumerate(first):
        imagined[b, h + 2:] = 1e6
    error = open_loop_error("InvertedPendulum-v5", w["qpos"], w["qvel"], w["actions"], imagined)
    last_compared = first.max() + 1
    assert np.all(error[: last_compared + 1] <= 1e-10), error
    assert np.all(np.isnan(error[last_compared + 1:])), error


def test_open_loop_error_clips_actions_to_the_action_space():
    w = collect_windows("Reacher-v5", num_windows=2, horizon=HORIZON, seed=2)
    # Reacher's actions lie in [-1, 1]: imagined actions beyond it are replayed clipped.
    inflated = np.where(w["actions"] > 0, w["actions"] + 5.0, w["actions"] - 5.0)
    error_real = open_loop_error("Reacher-v5", w["qpos"], w["qvel"], np.sign(inflated), w["observations"])
    error_inflated = open_loop_error("Reacher-v5", w["qpos"], w["qvel"], inflated, w["observations"])
    np.testing.assert_array_equal(error_real, error_inflated)
    assert error_real[1:].max() > 1e-6  # sign(actions) is not the rollout's actions: a real difference


def _linear_policy(obs):
    # mu(s) = s[..., :2], sigma(s) = exp(0.1 s[..., 2:4]): obs [..., D_s] -> [..., 2] each
    return obs[..., :2], torch.exp(0.1 * obs[..., 2:4])


def test_action_z_stats_closed_form_and_agrees_with_adapt_policy_step():
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(5, 4, 6, generator=g)  # [B, H, D_s]
    mean, std = _linear_policy(obs)
    # z of dim 0 alternates -1, +1 (mean 0); z of dim 1 is 2 everywhere except one 3.
    n = 5 * 4
    z0 = torch.tensor([-1.0, 1.0] * (n // 2)).reshape(5, 4)
    z1 = torch.full((5, 4), 2.0)
    z1[2, 1] = 3.0
    z = torch.stack([z0, z1], dim=-1)  # [B, H, 2]
    out = {"observations": obs, "actions": mean + std * z}
    stats = action_z_stats(out, _linear_policy)
    mean_z = (0.0 + (2.0 * (n - 1) + 3.0) / n) / 2
    std0 = math.sqrt(n / (n - 1))  # unbiased std of n alternating +-1
    std1 = math.sqrt((n - 1) * (1 / n) ** 2 + (1 - 1 / n) ** 2) / math.sqrt(n - 1)
    assert stats["action_z_mean"] == pytest.approx(mean_z, abs=1e-6)
    assert stats["action_z_std"] == pytest.approx((std0 + std1) / 2, abs=1e-6)

    wm = WorldModel(obs_dim=6, act_dim=2, config=WorldModelConfig(horizon=4, hidden_dim=16, num_layers=1,
                                                                  diffusion_steps=4, sampling_steps=4,
                                                                  return_model_hidden=0))
    adapted = wm.adapt_policy_step(out, _linear_policy)
    assert adapted["action_z_mean"] == stats["action_z_mean"]
    assert adapted["action_z_std"] == stats["action_z_std"]


def _tiny_model():
    config = WorldModelConfig(horizon=4, hidden_dim=32, num_layers=2, diffusion_steps=8, sampling_steps=8,
                              ema_start=0, return_model_hidden=0)
    return WorldModel(obs_dim=3, act_dim=2, config=config, seed=0)


def _policy(obs):
    return torch.tanh(obs[..., :2]), torch.full_like(obs[..., :2], 0.5)


def _critic(obs):
    return -(obs**2).sum(dim=-1)


@pytest.mark.parametrize("guide", [GuideConfig(kind="sag", method="gradient", scale=0.0),
                                   GuideConfig(kind="eag", method="gradient", temperature=math.inf)])
def test_advantage_gain_of_a_disabled_guide_is_exactly_zero(guide):
    wm = _tiny_model()
    start = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    result = advantage_gain(wm, start, policy=_policy, critic=_critic, guide=guide, seed=3)
    assert result["guidance/advantage_gain"] == 0.0
    assert result["guidance/advantage_guided"] == result["guidance/advantage_unguided"]


def test_advantage_gain_of_an_active_guide_is_nonzero_and_repeatable():
    wm = _tiny_model()
    start = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    guide = GuideConfig(kind="sag", method="gradient", temperature=0.1, scale=5.0)
    first = advantage_gain(wm, start, policy=_policy, critic=_critic, guide=guide, seed=3)
    second = advantage_gain(wm, start, policy=_policy, critic=_critic, guide=guide, seed=3)
    assert first == second
    assert first["guidance/advantage_gain"] != 0.0


@pytest.mark.parametrize("env_id, policy", [
    ("Reacher-v5", None),  # never terminates inside the window
    ("InvertedPendulum-v5", lambda obs: np.array([3.0], dtype=np.float32)),  # every window terminates
])
def test_simulate_actions_reproduces_the_real_windows(env_id, policy):
    """Replaying a real window's actions from its start state reproduces its rewards, terminals and next
    observations, the padding after a termination included (ALGORITHM.md 1); K copies of a sequence give K equal
    rows."""
    w = collect_windows(env_id, num_windows=3, horizon=HORIZON + 1, seed=4, policy=policy)
    actions = np.repeat(w["actions"][:, None, :HORIZON], 2, axis=1)  # [S, K=2, H, D_a]
    out = simulate_actions(env_id, w["qpos"], w["qvel"], actions)
    assert out["rewards"].shape == (3, 2, HORIZON) and out["next_observations"].shape[:3] == (3, 2, HORIZON)
    np.testing.assert_allclose(out["rewards"][:, 0], w["rewards"][:, :HORIZON], atol=1e-10)
    np.testing.assert_allclose(out["next_observations"][:, 0], w["observations"][:, 1:], atol=1e-10)
    np.testing.assert_array_equal(out["terminals"][:, 0], w["terminals"][:, :HORIZON])
    for key in out:
        np.testing.assert_array_equal(out[key][:, 0], out[key][:, 1])


def test_within_start_correlation_closed_forms():
    rng = np.random.default_rng(0)
    simulated = rng.normal(size=(40, 8)) + 10 * rng.normal(size=(40, 1))  # action effect + start effect
    assert within_start_correlation(simulated, simulated) == pytest.approx(1.0)
    # A start-dependent error and a scale do not matter; the sign does.
    offset = 5 * rng.normal(size=(40, 1))
    assert within_start_correlation(3 * simulated + offset, simulated) == pytest.approx(1.0)
    assert within_start_correlation(-simulated, simulated) == pytest.approx(-1.0)
    # Returns that follow the start but not the actions: the plain correlation is high, the within-start one is
    # the sample correlation of independent noise (|r| < 4 / sqrt(S K) = 0.22 with probability > 0.9999).
    blind = simulated.mean(axis=1, keepdims=True) + rng.normal(size=(40, 8))
    assert np.corrcoef(blind.ravel(), simulated.ravel())[0, 1] > 0.9
    assert abs(within_start_correlation(blind, simulated)) < 4 / np.sqrt(40 * 8)
    assert math.isnan(within_start_correlation(np.ones((4, 3)), simulated[:4, :3]))
    # R^2 per dimension: a copy with a per-start offset 1, not moving at all 0, twice the move 0, three times -3.
    sim3 = np.stack([simulated, 2 * simulated + 1], axis=-1)  # [S, K, 2]
    np.testing.assert_allclose(within_start_r2(sim3 + offset[..., None], sim3), [1.0, 1.0])
    np.testing.assert_allclose(within_start_r2(np.repeat(sim3.mean(1, keepdims=True), 8, 1), sim3), [0.0, 0.0],
                               atol=1e-12)
    np.testing.assert_allclose(within_start_r2(2 * sim3, sim3), [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(within_start_r2(3 * sim3, sim3), [-3.0, -3.0])
    assert np.isnan(within_start_r2(sim3, np.ones_like(sim3))).all()
    with pytest.raises(ValueError, match=r"\[S, K\]"):
        within_start_correlation(simulated[:, :4], simulated)


def test_imagine_with_actions_returns_the_given_actions_and_restores_the_model():
    wm = _tiny_model()
    wm.log_delta = -3.0
    config = wm.config.replace(policy_guidance="reparam")
    wm.config = config
    g = torch.Generator().manual_seed(5)
    start, actions = torch.randn(6, 3, generator=g), 0.5 * torch.randn(6, 4, 2, generator=g)
    out = imagine_with_actions(wm, start, actions, seed=1)
    torch.testing.assert_close(out["actions"], actions, rtol=0, atol=1e-4)  # the given ones (sigma 1e-6)
    assert torch.equal(out["observations"][:, 0], start)
    assert wm.log_delta == -3.0 and wm.config == config
    # The denoiser sees the given actions at every reverse step (scaled by sqrt(alpha_bar_t)), as in training.
    seen = []
    forward = wm.ema_denoiser.forward
    wm.ema_denoiser.forward = lambda x, a, t: seen.append((a.clone(), t.clone())) or forward(x, a, t)
    imagine_with_actions(wm, start, actions, seed=1)
    del wm.ema_denoiser.forward
    assert len(seen) == wm.config.sampling_steps
    for a, t in seen:
        expected = wm._sqrt_alpha_bar[t][:, None, None] * wm.normalizer.normalize("actions", actions)
        torch.testing.assert_close(a, expected, rtol=0, atol=1e-4)
    again = imagine_with_actions(wm, start, actions, seed=1)
    assert torch.equal(again["observations"], out["observations"])
