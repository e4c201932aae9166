"""A model trained on a known linear system: it learns the dynamics, and guidance raises the advantage
without breaking them (ALGORITHM.md 3.3, "what a guide must achieve, measured")."""

import numpy as np
import pytest
import torch

from agd_ray.world_model import GuideConfig, WorldModel, WorldModelConfig
from agd_ray.world_model.linear_system import LinearSystem

SYSTEM = LinearSystem()
DS, DA, H, NOISE = SYSTEM.obs_dim, SYSTEM.act_dim, SYSTEM.horizon, SYSTEM.noise
GAMMA = SYSTEM.gamma
rollout, policy, critic = SYSTEM.windows, SYSTEM.policy, SYSTEM.critic
consistency, advantage = SYSTEM.consistency, SYSTEM.advantage


@pytest.fixture(scope="module")
def trained():
    cfg = WorldModelConfig(horizon=H, hidden_dim=128, num_layers=2, diffusion_steps=32, sampling_steps=32,
                           lr=1e-3, ema_start=10**9, return_model_hidden=64)
    wm, losses = SYSTEM.train(cfg, updates=1200, seed=0)
    return wm, losses, SYSTEM.start_states(512, np.random.default_rng(1))


def imagine(wm, start, guide):
    return wm.imagine(start, policy=policy, critic=critic, guide=guide, generator=torch.Generator().manual_seed(0))


def test_loss_falls_and_imagined_windows_follow_the_true_dynamics(trained):
    wm, losses, start = trained
    assert losses[-100:].mean() < 0.1 * losses[:10].mean()
    out = imagine(wm, start, GuideConfig(kind="none"))
    dyn, rew = consistency(out)
    assert dyn < 2 * NOISE**2  # the residual is the process noise, not model error
    reward_var = float(((out["observations"] ** 2).sum(-1)).var())
    assert rew < 0.1 * reward_var  # the reward channel explains > 90% of the reward variance


@pytest.mark.parametrize("kind", ["sag", "eag"])
@pytest.mark.parametrize("extra", [{}, {"grad_wrt": "xt", "scale": 5.0}], ids=["default", "xt"])
def test_guidance_raises_the_advantage_more_at_lower_temperature_and_keeps_the_dynamics(trained, kind, extra):
    wm, _, start = trained
    base = imagine(wm, start, GuideConfig(kind="none"))
    base_adv, (base_dyn, base_rew) = advantage(base), consistency(base)
    gains = []
    for temperature in (3.0, 1.0):
        out = imagine(wm, start, GuideConfig(kind=kind, temperature=temperature, **extra))
        gains.append(advantage(out) - base_adv)
        dyn, rew = consistency(out)
        assert dyn < 1.5 * base_dyn + 1e-3, (temperature, dyn, base_dyn)
        assert rew < 1.5 * base_rew + 0.05, (temperature, rew, base_rew)
    assert 0 < gains[0] < gains[1], gains


@pytest.mark.parametrize("kind", ["sag", "eag"])
def test_resampling_gains_a_quarter_sigma_at_half_temperature_and_keeps_the_dynamics(trained, kind):
    """Advantage-weighted resampling (ALGORITHM.md 6) at its default K: the gain, in standard deviations of the
    unguided windows' advantage under the true critic, rises as the temperature falls, passes 0.1 at beta = 1
    and 0.25 at beta = 0.5 (measured: SAG 0.35 / 0.51, EAG 0.49 / 0.65, docs/RESULTS.md), and the windows keep the
    true dynamics and rewards (each is an unguided window)."""
    wm, _, start = trained
    base = imagine(wm, start, GuideConfig(kind="none"))
    spread = float(_n_step(base).std())
    base_adv, (base_dyn, base_rew) = advantage(base), consistency(base)
    gains = {}
    for temperature in (2.0, 1.0, 0.5, 0.25):
        out = imagine(wm, start, GuideConfig(kind=kind, temperature=temperature))
        gains[temperature] = (advantage(out) - base_adv) / spread
        dyn, rew = consistency(out)
        assert dyn < 1.2 * base_dyn + 1e-4, (temperature, dyn, base_dyn)
        assert rew < 1.2 * base_rew + 0.01, (temperature, rew, base_rew)
    assert gains[1.0] > 0.1 and gains[0.5] > 0.25, gains
    assert gains[2.0] < gains[1.0] < gains[0.5] < gains[0.25], gains


def _n_step(out):
    from agd_ray.world_model.guidance import window_advantages

    return window_advantages(out, critic, GAMMA)


def test_reference_settings_gain_less_than_ours(trained):
    """The reference guide's telescoped gradient points at lower value on interior states: its gain is
    smaller than the default guide's at the same temperature (ALGORITHM.md 3.3)."""
    wm, _, start = trained
    base = advantage(imagine(wm, start, GuideConfig(kind="none")))
    ours = advantage(imagine(wm, start, GuideConfig(kind="eag", method="gradient", temperature=1.0))) - base
    ref = advantage(imagine(wm, start, GuideConfig.reference("eag", temperature=1.0))) - base
    assert ours > 0 and ref < 0.25 * ours, (ours, ref)


def test_reward_guide_return_model_learns_and_guidance_raises_the_return(trained):
    wm, _, start = trained
    base = imagine(wm, start, GuideConfig(kind="none"))
    guided = imagine(wm, start, GuideConfig(kind="reward", scale=1.0))
    discount = GAMMA ** torch.arange(H)
    ret = lambda out: (out["rewards"] * discount).sum(-1).mean().item()  # noqa: E731
    assert ret(guided) > ret(base)
    dyn, _ = consistency(guided)
    assert dyn < 1.5 * consistency(base)[0] + 1e-3


def test_adaptive_delta_drives_the_standardised_action_std_toward_one(trained):
    wm0, _, start = trained
    wm = WorldModel(DS, DA, wm0.config.replace(delta_lr=0.3, delta_init=1e-4), seed=0)
    wm.load_state_dict(wm0.state_dict() | {"config": wm.config.to_dict(), "log_delta": np.log(1e-4)})
    narrow = lambda s: (torch.zeros(s.shape[:-1] + (DA,)), torch.full(s.shape[:-1] + (DA,), 0.2))  # noqa: E731
    stds = []
    for i in range(40):
        out = wm.imagine(start[:256], policy=narrow, generator=torch.Generator().manual_seed(i))
        stds.append(wm.adapt_policy_step(out, narrow)["action_z_std"])
    first, last = abs(stds[0] - 1), abs(np.mean(stds[-5:]) - 1)
    assert first > 0.5 and last < 0.15, stds


def test_state_dict_round_trip_continues_identically(trained):
    wm, _, start = trained
    clone = WorldModel(DS, DA, wm.config, seed=123)
    clone.load_state_dict(wm.state_dict())
    guide = GuideConfig(kind="sag", method="gradient")
    a, b = imagine(wm, start[:32], guide), imagine(clone, start[:32], guide)
    assert torch.equal(a["observations"], b["observations"]) and clone.delta == wm.delta
    batch = rollout(64, np.random.default_rng(5))
    before = {k: v.clone() for k, v in wm.denoiser.state_dict().items()}
    la, lb = wm.update(batch)["loss"], clone.update(batch)["loss"]
    assert la == lb  # same RNG state for t and noise, same weights and optimiser moments
    wm.load_state_dict({**wm.state_dict(), "denoiser": before})  # leave the shared fixture as it was


def test_bad_training_batches_are_refused_counted_and_change_nothing(trained):
    wm0, _, _ = trained
    wm = WorldModel(DS, DA, wm0.config, seed=0)
    wm.load_state_dict(wm0.state_dict())
    weights = {k: v.clone() for k, v in wm.denoiser.state_dict().items()}
    good = rollout(8, np.random.default_rng(1))
    nan = {**good, "rewards": good["rewards"].copy()}
    nan["rewards"][0, 2] = np.nan
    bad_batches = [
        (nan, "rewards contains NaN"),
        ({**good, "observations": good["observations"] * np.inf}, "observations contains NaN or inf"),
        ({**good, "actions": good["actions"][:, :, :1]}, r"actions has shape \(8, 6, 1\)"),
        ({**good, "rewards": good["rewards"][:, :3]}, r"rewards has shape \(8, 3\)"),
        ({k: v for k, v in good.items() if k != "terminals"}, "lacks fields"),
    ]
    for i, (batch, needle) in enumerate(bad_batches, start=1):
        with pytest.raises(ValueError, match=needle):
            wm.update(batch)
        assert wm.num_rejected_batches == i
    assert wm.num_updates == wm0.num_updates
    for k, v in wm.denoiser.state_dict().items():
        assert torch.equal(v, weights[k]), k
