"""A known stochastic linear system with a known critic, for checking what guidance does (tests and bench).

    s' = A s + B a + noise * eps,   r = -|s|^2,   V(s) = -5 |s|^2,   a ~ U[-1, 1]

Because the true dynamics and rewards are known, an imagined window can be checked exactly: its one-step
dynamics residual and its reward error against the system (ALGORITHM.md 3.3, "what a guide must achieve").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agd_ray.world_model.guidance import window_advantages, window_weights


@dataclass(frozen=True)
class LinearSystem:
    obs_dim: int = 2
    act_dim: int = 2
    horizon: int = 6
    a: float = 0.9
    b: float = 0.3
    noise: float = 0.1
    start_std: float = 1.5
    gamma: float = 0.99

    def windows(self, n: int, rng: np.random.Generator) -> dict:
        """n windows from random start states under uniform random actions: observations [n, H, D_s], ..."""
        s = np.zeros((n, self.horizon, self.obs_dim))
        a = rng.uniform(-1, 1, (n, self.horizon, self.act_dim))
        s[:, 0] = rng.normal(0, self.start_std, (n, self.obs_dim))
        for h in range(self.horizon - 1):
            s[:, h + 1] = self.a * s[:, h] + self.b * a[:, h] + self.noise * rng.normal(size=(n, self.obs_dim))
        return {"observations": s, "actions": a, "rewards": -(s**2).sum(-1), "terminals": np.zeros((n, self.horizon))}

    def start_states(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        return torch.as_tensor(rng.normal(0, self.start_std, (n, self.obs_dim)), dtype=torch.float32)

    def policy(self, s: torch.Tensor):
        """The data's action distribution, roughly: mean 0, the std of U[-1, 1]."""
        return torch.zeros(s.shape[:-1] + (self.act_dim,)), torch.full(s.shape[:-1] + (self.act_dim,), 0.58)

    @staticmethod
    def critic(s: torch.Tensor) -> torch.Tensor:
        return -5.0 * (s**2).sum(-1)

    def consistency(self, out: dict) -> tuple[float, float]:
        """Mean squared one-step dynamics residual and reward error of imagined windows."""
        s, a, r = out["observations"], out["actions"], out["rewards"]
        residual = s[:, 1:] - self.a * s[:, :-1] - self.b * a[:, :-1]
        return (residual**2).mean().item(), ((r + (s**2).sum(-1)) ** 2).mean().item()

    def advantage(self, out: dict) -> float:
        """Mean n-step advantage of imagined windows under the known critic."""
        return window_advantages(out, self.critic, self.gamma).mean().item()

    def train(self, config, *, updates: int, num_windows: int = 20000, seed: int = 0, guide=None):
        """A WorldModel fitted to `num_windows` windows of this system; returns (model, losses [updates]).
        With `config.weight_channel`, each batch carries the weights `guidance.window_weights` of `guide` (a
        GuideConfig, kind swg) under the known critic."""
        from agd_ray.world_model.model import WorldModel

        rng = np.random.default_rng(seed)
        data = self.windows(num_windows, rng)
        wm = WorldModel(self.obs_dim, self.act_dim, config, seed=seed)
        wm.fit_normalizer(data)
        losses = np.empty(updates)
        for i in range(updates):
            idx = rng.integers(0, num_windows, config.batch_size)
            batch = {k: v[idx] for k, v in data.items()}
            if config.weight_channel:
                batch["weights"] = window_weights(batch, self.critic, guide)
            losses[i] = wm.update(batch)["loss"]
        return wm, losses
