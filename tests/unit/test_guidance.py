"""Guidance equations against reference loops, closed forms and finite differences (ALGORITHM.md 3)."""

import math

import numpy as np
import pytest
import torch

from agd_ray.world_model.config import GuideConfig, WorldModelConfig
from agd_ray.world_model.guidance import (
    AdvantageGuide,
    GuideInputs,
    NoGuide,
    build_guide,
    eag_log_weight,
    gae_advantage,
    guided_channel_mask,
    n_step_advantage,
    policy_score_step,
    sag_log_weight,
    td1_advantage,
)
from agd_ray.world_model.normalizer import NormalizerSnapshot
from agd_ray.world_model.schedule import ReverseStep

DS, H = 3, 6


def _loop_gae(r, v, c, gamma, lam):
    """Plain reverse loop, one window at a time."""
    b, h = r.shape
    out = np.zeros((b, h - 1))
    for i in range(b):
        acc = 0.0
        for k in reversed(range(h - 1)):
            delta = r[i, k] + gamma * c[i, k] * v[i, k + 1] - v[i, k]
            acc = delta + (gamma * lam * c[i, k] * acc if k < h - 2 else 0.0)
            out[i, k] = acc
    return out


def _windows(seed=0, b=5):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(b, H, generator=g, dtype=torch.float64)
    v = torch.randn(b, H, generator=g, dtype=torch.float64)
    c = (torch.rand(b, H, generator=g, dtype=torch.float64) > 0.3).double()
    return r, v, c


def _loop_td1(r, v, c, gamma):
    """Plain loop, one window and one step at a time: r[k] + gamma (1 - d[k]) V(s[k+1]) - V(s[k]), k < H-1."""
    b, h = r.shape
    out = np.zeros((b, h - 1))
    for i in range(b):
        for k in range(h - 1):
            out[i, k] = r[i, k] + gamma * c[i, k] * v[i, k + 1] - v[i, k]
    return out


def test_td1_and_gae_match_reference_loops():
    r, v, c = _windows()
    td1 = td1_advantage(r, v, c, 0.97)
    assert td1.shape == (r.shape[0], H - 1)
    np.testing.assert_allclose(td1.numpy(), _loop_td1(r.numpy(), v.numpy(), c.numpy(), 0.97), rtol=1e-12, atol=1e-12)
    for lam in (0.0, 0.5, 0.9, 1.0):
        got = gae_advantage(r, v, c, 0.97, lam).numpy()
        np.testing.assert_allclose(got, _loop_gae(r.numpy(), v.numpy(), c.numpy(), 0.97, lam), rtol=1e-12, atol=1e-12)


def test_gae_with_lambda_zero_is_td1():
    r, v, c = _windows(1)
    torch.testing.assert_close(gae_advantage(r, v, c, 0.99, 0.0), td1_advantage(r, v, c, 0.99))


def test_n_step_advantage_matches_loop_and_stops_at_termination():
    r, v, c = _windows(2)
    gamma = 0.9
    got = n_step_advantage(r, v, c, gamma).numpy()
    rn, vn, cn = r.numpy(), v.numpy(), c.numpy()
    for i in range(r.shape[0]):
        total, alive = 0.0, 1.0
        for k in range(H - 1):
            total += alive * gamma**k * rn[i, k]
            alive *= cn[i, k]
        total += alive * gamma ** (H - 1) * vn[i, H - 1]
        assert got[i] == pytest.approx(total - vn[i, 0], abs=1e-12)


def test_policy_score_step_closed_form():
    a = torch.tensor([[[-5.0, 0.2, 1.0]]])
    mean, std = torch.zeros_like(a), torch.full_like(a, 0.5)
    clamped = torch.tensor([[[-1.5, 0.2, 1.0]]])  # clamp to mu +- 3 sigma
    torch.testing.assert_close(policy_score_step(a, mean, std, 0.1, 3.0, take_step=False), clamped)
    torch.testing.assert_close(policy_score_step(a, mean, std, 0.1, 3.0), clamped - 0.1 * clamped / 0.25)


def test_log_weights():
    adv = torch.tensor([-2.0, 0.0, 3.0])
    torch.testing.assert_close(eag_log_weight(adv, 2.0), adv / 2.0)
    torch.testing.assert_close(sag_log_weight(adv, 2.0), torch.log(torch.sigmoid(adv / 2.0)))


# ------------------------------------------------------------------------------------------ gradients
def _normalizer():
    return NormalizerSnapshot(
        version=1,
        mean={"observations": np.array([0.5, -1.0, 2.0]), "actions": np.zeros(1), "rewards": np.array([0.3]),
              "terminals": np.array([0.0])},
        std={"observations": np.array([2.0, 0.5, 1.5]), "actions": np.ones(1), "rewards": np.array([1.7]),
             "terminals": np.array([1.0])},
    )


def _critic(s):  # a non-linear critic in float64
    return -(s**2).sum(-1) + torch.sin(s[..., 0])


def _inputs(x0, var=0.3):
    step = ReverseStep(t=5, s=4, sqrt_alpha_bar_t=0.9, c1=0.5, c2=0.5, var=var)
    return GuideInputs(step=step, steps_left=3, x_t=x0.clone(), x0_hat=x0,
                       scaled_actions=torch.zeros(x0.shape[0], H, 1), timesteps=torch.full((x0.shape[0],), 5),
                       normalizer=_normalizer(), critic=_critic)


def _x0(seed=0, b=4, terminal=0.0):
    x0 = torch.randn(b, H, DS + 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x0[..., DS + 1] = terminal  # normalised terminal channel: unnormalised d = terminal here
    return x0


def test_reference_eag_gradient_on_interior_states_is_minus_one_minus_gamma_grad_v():
    """The telescoping identity of ALGORITHM.md 3.3: with the reference settings, EAG pushes toward lower value."""
    gamma, beta = 0.95, 0.7
    cfg = GuideConfig.reference("eag", temperature=beta).replace(gamma=gamma)
    x0 = _x0()
    g = AdvantageGuide(cfg, DS).gradient(_inputs(x0))
    norm = _normalizer()
    s = norm.unnormalize("observations", x0[..., :DS]).requires_grad_(True)
    (dv_ds,) = torch.autograd.grad(_critic(s).sum(), s)
    dv_dx = dv_ds * torch.as_tensor(norm.std["observations"])  # chain rule into normalised coordinates
    torch.testing.assert_close(g[:, 1 : H - 1, :DS], -(1 - gamma) * dv_dx[:, 1 : H - 1] / beta)
    assert torch.all(g[:, 0] == 0) and torch.all(g[:, H - 1, :DS] == 0)  # s[0] inpainted, last state zeroed
    assert torch.all(g[..., DS:] == 0)  # rewards detached, terminals never guided


def test_sag_push_saturates_at_large_advantage_where_eag_does_not():
    x0 = _x0()
    grads = {}
    for kind in ("sag", "eag"):
        cfg = GuideConfig.reference(kind, temperature=1.0)
        base = AdvantageGuide(cfg, DS).gradient(_inputs(x0))
        lifted = x0.clone()
        lifted[..., DS] += 50.0  # a huge reward on every step: advantages far above the temperature
        grads[kind] = (base.norm(), AdvantageGuide(cfg, DS).gradient(_inputs(lifted)).norm())
    sag_base, sag_lifted = grads["sag"]
    eag_base, eag_lifted = grads["eag"]
    assert sag_lifted < 1e-6 * sag_base
    torch.testing.assert_close(eag_lifted, eag_base)  # EAG's gradient does not depend on the advantage level


@pytest.mark.parametrize("kind", ["sag", "eag"])
@pytest.mark.parametrize("advantage", ["td1", "gae"])
@pytest.mark.parametrize("terminal", [0.0, 0.4])
def test_guide_gradient_matches_finite_differences(kind, advantage, terminal):
    cfg = GuideConfig(kind=kind, temperature=0.8, advantage=advantage, normalize_advantage=False, gamma=0.9, lam=0.8)
    guide = AdvantageGuide(cfg, DS)
    x0 = _x0(seed=3, b=2, terminal=terminal)
    g = guide.gradient(_inputs(x0))
    mask = guided_channel_mask(DS, H, rewards=True, last_state=True, device="cpu").bool()
    eps = 1e-6
    fd = torch.zeros_like(x0)
    for idx in torch.nonzero(mask.expand_as(x0)):
        plus, minus = x0.clone(), x0.clone()
        plus[tuple(idx)] += eps
        minus[tuple(idx)] -= eps
        f = lambda x: guide.objective(x, _normalizer(), _critic).item()  # noqa: E731
        fd[tuple(idx)] = (f(plus) - f(minus)) / (2 * eps)
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-7)


def test_normalized_advantage_makes_the_temperature_scale_free():
    """Scaling rewards and values by k leaves the normalised-advantage objective's weights unchanged."""
    x0 = _x0(seed=5)
    cfg = GuideConfig(kind="sag", method="gradient", temperature=0.5)
    guide = AdvantageGuide(cfg, DS)
    base = guide.advantages(x0, _normalizer(), _critic)
    scaled_critic = lambda s: 10.0 * _critic(s)  # noqa: E731
    norm = _normalizer()
    big = NormalizerSnapshot(norm.version, norm.mean | {"rewards": norm.mean["rewards"] * 10},
                             norm.std | {"rewards": norm.std["rewards"] * 10})
    torch.testing.assert_close(guide.advantages(x0, big, scaled_critic), base)


def test_build_guide_returns_no_guide_when_it_cannot_act():
    assert isinstance(build_guide(GuideConfig(kind="none"), DS), NoGuide)
    assert isinstance(build_guide(GuideConfig(kind="sag", method="gradient", scale=0.0), DS), NoGuide)
    assert isinstance(build_guide(GuideConfig(kind="eag", method="gradient", temperature=math.inf), DS), NoGuide)
    assert isinstance(build_guide(GuideConfig(kind="sag", method="gradient"), DS), AdvantageGuide)
    with pytest.raises(ValueError, match="return model"):
        build_guide(GuideConfig(kind="reward"), DS, return_model=None)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"kind": "swgx"}, "kind='swgx'"),
        ({"temperature": -1.0}, "temperature=-1.0"),
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"advantage": "td2"}, "advantage='td2'"),
        ({"scale": -0.5}, "scale=-0.5"),
        ({"scale_mode": "huge"}, "scale_mode='huge'"),
        ({"grad_wrt": "a"}, "grad_wrt='a'"),
    ],
)
def test_bad_guide_config_names_the_value(kwargs, needle):
    with pytest.raises(ValueError) as err:
        GuideConfig(**kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs,needle",
    [({"horizon": 1}, "horizon=1"), ({"sampling_steps": 200}, "sampling_steps=200"), ({"amp": "fp8"}, "amp='fp8'")],
)
def test_bad_world_model_config_names_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        WorldModelConfig(diffusion_steps=128, **kwargs)


def test_config_from_dict_refuses_unknown_keys():
    with pytest.raises(ValueError, match="temprature"):
        GuideConfig.from_dict({"kind": "sag", "temprature": 1.0})
    config = GuideConfig(kind="eag", method="gradient")
    assert GuideConfig.from_dict(config.to_dict()) == GuideConfig(kind="eag", method="gradient")
