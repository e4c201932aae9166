"""Schedule: alpha_bar's shape, the posterior coefficients against an independent derivation, and DDIM's steps
(eta = 1 is the DDPM posterior; eta = 0 on a Gaussian toy with the exact denoiser, in closed form)."""

import numpy as np
import pytest

from agd_ray.world_model.schedule import (
    DiffusionSchedule,
    cosine_alpha_bar,
    ddim_coefficients,
    posterior_coefficients,
)


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


# ------------------------------------------------------------------------------------------------- DDIM
@pytest.mark.parametrize("num_steps,k", [(128, 128), (128, 64), (128, 16), (128, 3), (1000, 1000), (1000, 7)])
def test_ddim_with_eta_one_is_the_ddpm_posterior_to_float64_precision(num_steps, k):
    sched = DiffusionSchedule(num_steps)
    t = sched.kept_steps(k)
    s = np.concatenate([t[1:], [0]])
    ab = sched.alpha_bar
    for got, want in zip(ddim_coefficients(ab[t], ab[s], 1.0), posterior_coefficients(ab[t], ab[s]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("k", [128, 64, 9])
def test_eta_one_leaves_the_reverse_steps_exactly_as_they_were(k):
    """eta = 1 (the default) takes the DDPM code path: equal steps, guide_var = var, and at K = N the per-step
    betas of DDPM eq. 7 bit for bit."""
    sched = DiffusionSchedule(128)
    steps = sched.reverse_steps(k, eta=1.0)
    assert steps == sched.reverse_steps(k)
    assert all(st.guide_var == st.var for st in steps)
    if k == 128:
        ab, beta = sched.alpha_bar, sched.betas
        for st in steps:
            assert st.c1 == float(beta[st.t - 1] * np.sqrt(ab[st.s]) / (1.0 - ab[st.t]))
            assert st.c2 == float((1.0 - ab[st.s]) * np.sqrt(1.0 - beta[st.t - 1]) / (1.0 - ab[st.t]))
            assert st.var == float(beta[st.t - 1] * (1.0 - ab[st.s]) / (1.0 - ab[st.t]))


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("k", [128, 8])
def test_ddim_steps_scale_the_variance_by_eta_squared_and_keep_beta_tilde_for_the_guides(eta, k):
    sched = DiffusionSchedule(128)
    ddpm, ddim = sched.reverse_steps(k), sched.reverse_steps(k, eta=eta)
    assert [st.t for st in ddim] == [st.t for st in ddpm] and [st.s for st in ddim] == [st.s for st in ddpm]
    assert [st.guide_var for st in ddim] == [st.var for st in ddpm]
    np.testing.assert_allclose([st.var for st in ddim], [eta**2 * st.var for st in ddpm], rtol=1e-12, atol=0)
    # The mean reproduces x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - sigma^2) eps for x_t built from (x0, eps):
    # c1 + c2 sqrt(ab_t) = sqrt(ab_s) and c2 sqrt(1 - ab_t) = sqrt(1 - ab_s - var).
    ab = sched.alpha_bar
    for st in ddim:
        assert st.c1 + st.c2 * np.sqrt(ab[st.t]) == pytest.approx(np.sqrt(ab[st.s]), rel=1e-12)
        assert st.c2 * np.sqrt(1 - ab[st.t]) == pytest.approx(np.sqrt(1 - ab[st.s] - st.var), rel=1e-12, abs=1e-15)
    assert (ddim[-1].c1, ddim[-1].c2, ddim[-1].var) == (1.0, 0.0, 0.0)  # the last step returns x0_hat


@pytest.mark.parametrize("eta", [-0.1, 1.5, float("nan")])
def test_eta_outside_the_unit_interval_is_refused(eta):
    with pytest.raises(ValueError, match=r"eta=.* must be in \[0, 1\]"):
        DiffusionSchedule(16).reverse_steps(8, eta=eta)


def _gaussian_moments(steps, m, s):
    """Mean and variance of the sampler's output for 1-D data x0 ~ N(m, s^2), x_N ~ N(0, 1), with the exact
    posterior-mean denoiser E[x0 | x_t] = m + k_t (x_t - sqrt(ab_t) m), k_t = sqrt(ab_t) s^2 / (ab_t s^2 + 1 - ab_t).
    Each step x_s = c1 x0_hat + c2 x_t + sqrt(var) z is affine in x_t, so the moments propagate exactly."""
    mean, var = 0.0, 1.0
    for st in steps:
        sab = st.sqrt_alpha_bar_t
        k = sab * s**2 / (sab**2 * s**2 + 1 - sab**2)
        slope, offset = st.c1 * k + st.c2, st.c1 * m * (1 - k * sab)
        mean, var = slope * mean + offset, slope**2 * var + st.var
    return mean, var


@pytest.mark.parametrize("m,s", [(0.7, 0.3), (-1.0, 1.0), (0.5, 2.0)])
def test_deterministic_ddim_with_many_steps_reproduces_the_data_moments(m, s):
    """eta = 0 with the exact denoiser: N = K = 1000 gives the data's mean and variance within 1% (no noise is
    added after x_N), and the variance error shrinks like 1/N (a quarter at N = 4000): a consistent solver."""
    errors = []
    for n in (1000, 4000):
        mean, var = _gaussian_moments(DiffusionSchedule(n).reverse_steps(n, eta=0.0), m, s)
        assert mean == pytest.approx(m, abs=1e-3 * s)
        errors.append(abs(var / s**2 - 1))
    assert errors[0] < 0.01
    assert 3.0 < errors[0] / errors[1] < 5.0


@pytest.mark.parametrize("m,s", [(0.7, 0.3), (-1.0, 1.0), (0.5, 2.0)])
def test_with_few_steps_ddim_keeps_more_of_the_data_variance_than_strided_ddpm(m, s):
    """N = 128, K = 3..32: every sampler gets the mean and loses variance (DDPM's posterior drops Var[x0 | x_t]
    at each kept step, DDIM's straight steps cut the flow's curve); eta = 0 and 0.5 lose less than eta = 1, by a
    margin that grows with K (at K = 3 all three lose 75-92% alike; at K = 8 DDIM loses 15-28% less than DDPM)."""
    sched = DiffusionSchedule(128)
    for k in (3, 4, 6, 8, 16, 32):
        moments = [_gaussian_moments(sched.reverse_steps(k, eta=eta), m, s) for eta in (1.0, 0.5, 0.0)]
        assert all(mean == pytest.approx(m, abs=1e-3 * s) for mean, _ in moments)
        ddpm, half, ddim = (1 - var / s**2 for _, var in moments)
        assert 0 < ddim < ddpm and half < ddpm, (k, ddpm, half, ddim)
        if k >= 8:
            assert ddim < 0.9 * ddpm, (k, ddpm, ddim)
