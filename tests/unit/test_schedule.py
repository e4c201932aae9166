"""Schedule: alpha_bar's shape and the posterior coefficients against an independent derivation."""

import numpy as np
import pytest

from agd_ray.world_model.schedule import DiffusionSchedule, cosine_alpha_bar, posterior_coefficients


@pytest.mark.parametrize("num_steps,tau", [(8, 1.0), (128, 1.0), (128, 0.1), (1000, 1.0)])
def test_alpha_bar_monotone_with_right_endpoints(num_steps, tau):
    ab = cosine_alpha_bar(num_steps, tau)
    assert ab.dtype == np.float64 and ab.shape == (num_steps + 1,)
    assert ab[0] == 1.0
    assert np.all(np.diff(ab) < 0)
    assert 0 < ab[-1] < 1e-3  # beta_N = 0.999 (clipped), so alpha_bar(N) = 0.001 * alpha_bar(N-1)
    betas = 1 - ab[1:] / ab[:-1]
    assert betas.max() <= 0.999 + 1e-12 and betas.min() > 0


def test_alpha_bar_matches_the_cosine_formula_before_the_clip():
    n, tau = 128, 1.0
    ab = cosine_alpha_bar(n, tau)
    t = np.arange(n)  # every step but the last is unclipped
    np.testing.assert_allclose(ab[:n], np.cos(np.pi * t / (2 * n)) ** (2 * tau), rtol=1e-12)


def _posterior_by_conditioning(ab_t, ab_s):
    """q(x_s | x_t, x_0) by Gaussian conditioning, written independently of the code under test:
    x_s ~ N(sqrt(ab_s) x0, 1 - ab_s), x_t | x_s ~ N(sqrt(ab_t / ab_s) x_s, 1 - ab_t / ab_s)."""
    alpha_ts = ab_t / ab_s
    precision = 1 / (1 - ab_s) + alpha_ts / (1 - alpha_ts)
    var = 1 / precision
    c1 = var * np.sqrt(ab_s) / (1 - ab_s)
    c2 = var * np.sqrt(alpha_ts) / (1 - alpha_ts)
    return c1, c2, var


def test_posterior_coefficients_against_gaussian_conditioning():
    ab = cosine_alpha_bar(128)
    t = np.array([128, 100, 64, 10, 2])
    s = np.array([96, 99, 1, 5, 1])
    for got, want in zip(posterior_coefficients(ab[t], ab[s]), _posterior_by_conditioning(ab[t], ab[s]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10)


def test_full_chain_uses_ddpm_betas_and_agrees_with_the_strided_formula():
    sched = DiffusionSchedule(64)
    steps = sched.reverse_steps(64)
    assert [st.t for st in steps] == list(range(64, 0, -1)) and [st.s for st in steps] == list(range(63, -1, -1))
    ab = sched.alpha_bar
    c1, c2, var = posterior_coefficients(ab[1:][::-1], ab[:-1][::-1])
    np.testing.assert_allclose([st.c1 for st in steps], c1, rtol=1e-9)
    np.testing.assert_allclose([st.c2 for st in steps], c2, rtol=1e-9)
    np.testing.assert_allclose([st.var for st in steps], var, rtol=1e-9, atol=1e-300)
    assert steps[-1].var == 0.0  # the last step to t = 0 is deterministic


@pytest.mark.parametrize("k", [1, 2, 7, 32, 128])
def test_strided_steps_are_distinct_descending_and_end_at_zero(k):
    sched = DiffusionSchedule(128)
    steps = sched.reverse_steps(k)
    ts = [st.t for st in steps]
    assert len(ts) == k and ts == sorted(set(ts), reverse=True) and ts[0] == 128
    assert [st.s for st in steps] == ts[1:] + [0]
