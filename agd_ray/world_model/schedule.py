"""Noise schedule, DDPM posterior and DDIM coefficients, all in float64 (ALGORITHM.md section 2 and 3.5)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_BETA = 0.999


def cosine_alpha_bar(num_steps: int, tau: float = 1.0) -> np.ndarray:
    """Cosine schedule (Nichol & Dhariwal 2021, with PolyGRAD's exponent tau).

    alpha_bar(t) = cos(pi t / (2N)) ** (2 tau), beta_t = 1 - alpha_bar(t)/alpha_bar(t-1) clipped to 0.999,
    and alpha_bar recomputed as the cumulative product of (1 - beta) so that the clip is consistent.
    Returns alpha_bar[0..N] (float64, alpha_bar[0] = 1, strictly decreasing).
    """
    t = np.arange(num_steps + 1, dtype=np.float64)
    raw = np.cos(np.pi * t / (2 * num_steps)) ** (2 * tau)
    betas = np.clip(1.0 - raw[1:] / raw[:-1], 0.0, MAX_BETA)
    return np.concatenate([[1.0], np.cumprod(1.0 - betas)])


def posterior_coefficients(alpha_bar_t: np.ndarray, alpha_bar_s: np.ndarray):
    """q(x_s | x_t, x_0) for s < t (DDPM eq. 6-7, generalised to a stride).

    mean = c1 * x_0 + c2 * x_t, variance = var, with beta_ts = 1 - alpha_bar_t / alpha_bar_s:
      c1  = sqrt(alpha_bar_s) beta_ts / (1 - alpha_bar_t)
      c2  = sqrt(alpha_bar_t / alpha_bar_s) (1 - alpha_bar_s) / (1 - alpha_bar_t)
      var = beta_ts (1 - alpha_bar_s) / (1 - alpha_bar_t)
    """
    beta_ts = 1.0 - alpha_bar_t / alpha_bar_s
    c1 = np.sqrt(alpha_bar_s) * beta_ts / (1.0 - alpha_bar_t)
    c2 = np.sqrt(alpha_bar_t / alpha_bar_s) * (1.0 - alpha_bar_s) / (1.0 - alpha_bar_t)
    var = beta_ts * (1.0 - alpha_bar_s) / (1.0 - alpha_bar_t)
    return c1, c2, var


def ddim_coefficients(alpha_bar_t: np.ndarray, alpha_bar_s: np.ndarray, eta: float):
    """One DDIM step t -> s, s < t, for an x0-predicting model (Song et al. 2021, eq. 12).

    With eps_hat = (x_t - sqrt(alpha_bar_t) x0_hat) / sqrt(1 - alpha_bar_t),
      sigma^2 = eta^2 (1 - alpha_bar_s) / (1 - alpha_bar_t) (1 - alpha_bar_t / alpha_bar_s)
      x_s     = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s - sigma^2) eps_hat + sigma z,
    which is linear in x0_hat and x_t: mean = c1 * x0_hat + c2 * x_t, variance = var = sigma^2, with
      c2 = sqrt((1 - alpha_bar_s - sigma^2) / (1 - alpha_bar_t)),   c1 = sqrt(alpha_bar_s) - c2 sqrt(alpha_bar_t).
    eta = 1 is the DDPM posterior q(x_s | x_t, x0_hat) (`posterior_coefficients`), eta = 0 the deterministic DDIM.
    Both are computed as sums of positive terms (alpha_ts = alpha_bar_t / alpha_bar_s, beta_ts = 1 - alpha_ts),
      c2 = sqrt((1 - alpha_bar_s) ((1 - eta^2)(1 - alpha_bar_t) + eta^2 alpha_ts (1 - alpha_bar_s))) / (1 - alpha_bar_t)
      c1 = sqrt(alpha_bar_s) (beta_ts + alpha_ts sigma^2) / ((1 - alpha_bar_t)(1 + c2 sqrt(alpha_ts))),
    because the differences above lose digits at both ends of the schedule (c2 near alpha_bar_t = 0, c1 near 1).
    """
    alpha_ts = alpha_bar_t / alpha_bar_s
    beta_ts = 1.0 - alpha_ts
    sigma2 = eta**2 * (1.0 - alpha_bar_s) / (1.0 - alpha_bar_t) * beta_ts
    c2 = np.sqrt((1.0 - alpha_bar_s) * ((1.0 - eta**2) * (1.0 - alpha_bar_t) + eta**2 * alpha_ts * (1.0 - alpha_bar_s)))
    c2 = c2 / (1.0 - alpha_bar_t)
    c1 = np.sqrt(alpha_bar_s) * (beta_ts + alpha_ts * sigma2) / ((1.0 - alpha_bar_t) * (1.0 + c2 * np.sqrt(alpha_ts)))
    return c1, c2, sigma2


@dataclass(frozen=True)
class ReverseStep:
    """One reverse step t -> s of the sampler; all float64 scalars except t and s."""

    t: int
    s: int
    sqrt_alpha_bar_t: float
    c1: float
    c2: float
    var: float  # the sampler's variance: beta_tilde (DDPM posterior, eta = 1) or DDIM's sigma^2
    # beta_tilde, the DDPM posterior variance between t and s whatever eta is: the gradient guides scale their
    # step by it (classifier guidance, mu += c beta_tilde g), so that they act with eta = 0 too and c means the
    # same step for every eta. (The deterministic sampler's exact tilt would be about half that step for small
    # strides: the probability-flow ODE carries half the score that the reverse SDE does.) None: var.
    guide_var: float | None = None

    def __post_init__(self) -> None:
        if self.guide_var is None:
            object.__setattr__(self, "guide_var", self.var)


class DiffusionSchedule:
    """alpha_bar over t = 0..N and the reverse steps the sampler takes (all N, or K strided)."""

    def __init__(self, num_steps: int, tau: float = 1.0) -> None:
        self.num_steps = num_steps
        self.alpha_bar = cosine_alpha_bar(num_steps, tau)  # [N+1], float64
        self.betas = 1.0 - self.alpha_bar[1:] / self.alpha_bar[:-1]  # [N]: beta_1..beta_N

    def kept_steps(self, num_sampling_steps: int) -> np.ndarray:
        """K distinct timesteps from N down to 1, evenly spaced (N and 1 always kept)."""
        # Spacing (N - 1) / (K - 1) >= 1 keeps the rounded steps distinct; K = 1 keeps only N.
        return np.round(np.linspace(self.num_steps, 1, num_sampling_steps)).astype(np.int64)

    def reverse_steps(self, num_sampling_steps: int, eta: float = 1.0) -> list[ReverseStep]:
        """Reverse steps t -> s between consecutive kept timesteps (the last one goes to s = 0).

        With K = N this is the standard DDPM chain, written with the per-step betas of DDPM eq. 7;
        with K < N the posterior is taken between the kept steps (`posterior_coefficients`). With eta != 1 the
        steps are DDIM's (`ddim_coefficients`) between the same kept timesteps, with the DDPM posterior variance
        kept as `guide_var`; eta = 1 leaves the DDPM steps exactly as they are.
        """
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta={eta!r} is not allowed; eta must be in [0, 1]")
        kept = self.kept_steps(num_sampling_steps)
        targets = np.concatenate([kept[1:], [0]])
        ab = self.alpha_bar
        if len(kept) == self.num_steps:
            beta = self.betas[kept - 1]
            c1 = beta * np.sqrt(ab[targets]) / (1.0 - ab[kept])
            c2 = (1.0 - ab[targets]) * np.sqrt(1.0 - beta) / (1.0 - ab[kept])
            var = beta * (1.0 - ab[targets]) / (1.0 - ab[kept])
        else:
            c1, c2, var = posterior_coefficients(ab[kept], ab[targets])
        guide_var = var
        if eta != 1.0:
            c1, c2, var = ddim_coefficients(ab[kept], ab[targets], eta)
        return [
            ReverseStep(int(t), int(s), float(np.sqrt(ab[t])), float(a), float(b), float(v), float(g))
            for t, s, a, b, v, g in zip(kept, targets, c1, c2, var, guide_var, strict=True)
        ]
