"""Networks: the residual-MLP x0 denoiser (ALGORITHM.md section 2) and the reward guide's return model."""

from __future__ import annotations

import math

import torch
from torch import nn


class FourierTimeEmbedding(nn.Module):
    """Random Fourier features of the diffusion time t/N, then a small MLP (as in PolyGRAD's denoiser)."""

    def __init__(self, num_features: int, out_dim: int, num_steps: int) -> None:
        super().__init__()
        self.num_steps = num_steps
        # Fixed random frequencies: part of the state dict so that a restored model embeds t identically.
        self.register_buffer("frequencies", torch.randn(num_features) * 16.0)
        self.mlp = nn.Sequential(nn.Linear(2 * num_features, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # t: [B] integer steps -> [B, out_dim]
        phase = 2 * math.pi * (t.to(self.frequencies.dtype) / self.num_steps)[:, None] * self.frequencies
        return self.mlp(torch.cat([phase.sin(), phase.cos()], dim=-1))


class ResidualBlock(nn.Module):
    """Pre-LayerNorm residual block: y <- y + W relu(LN(y))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, width)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.linear(torch.relu(self.norm(y)))


class ResidualMLPDenoiser(nn.Module):
    """D(x_t, sqrt(alpha_bar_t) a, t) -> x0_hat over a whole flattened window (PolyGRAD, ALGORITHM.md 2).

    x_t: [B, H, D_x] (states, reward, terminal, and the weight with `weight_channel`: D_x = D_s + 2 or D_s + 3),
    actions: [B, H, D_a] (already scaled), t: [B] int. Returns x0_hat: [B, H, D_x]. The caller inpaints s[0].
    """

    def __init__(
        self, obs_dim: int, act_dim: int, horizon: int, hidden_dim: int, num_layers: int, num_steps: int,
        fourier_features: int = 16, weight_channel: bool = False,
    ) -> None:
        super().__init__()
        self.horizon, self.x_dim = horizon, obs_dim + 2 + int(weight_channel)
        in_dim = horizon * (self.x_dim + act_dim)
        embed_dim = max(in_dim, 128)  # E = max(H (D_x + D_a), 128)
        self.input = nn.Linear(in_dim, embed_dim)
        self.time_embedding = FourierTimeEmbedding(fourier_features, embed_dim, num_steps)
        self.to_hidden = nn.Linear(embed_dim, hidden_dim)
        self.blocks = nn.Sequential(*[ResidualBlock(hidden_dim) for _ in range(num_layers)])
        self.out_norm = nn.LayerNorm(hidden_dim)
        self.output = nn.Linear(hidden_dim, horizon * self.x_dim)

    def forward(self, x_t: torch.Tensor, actions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch = x_t.shape[0]
        flat = torch.cat([x_t.reshape(batch, -1), actions.reshape(batch, -1)], dim=-1)
        y = self.to_hidden(self.input(flat) + self.time_embedding(t))
        y = self.output(torch.relu(self.out_norm(self.blocks(y))))
        return y.reshape(batch, self.horizon, self.x_dim)

    def flops_per_sample(self) -> int:
        """Multiply-adds x 2 of one forward pass for one window (linear layers only)."""
        return 2 * sum(m.in_features * m.out_features for m in self.modules() if isinstance(m, nn.Linear))


class ReturnModel(nn.Module):
    """J(x_t, a_t, t) -> predicted discounted return sum_h gamma^h r[h] of the clean window (Diffuser's guide).
    x_t: [B, H, D_x] as the denoiser's (D_x = D_s + 2, or D_s + 3 with `weight_channel`)."""

    def __init__(self, obs_dim: int, act_dim: int, horizon: int, hidden_dim: int, num_steps: int,
                 weight_channel: bool = False) -> None:
        super().__init__()
        in_dim = horizon * (obs_dim + 2 + int(weight_channel) + act_dim)
        self.time_embedding = FourierTimeEmbedding(16, hidden_dim, num_steps)
        self.input = nn.Linear(in_dim, hidden_dim)
        self.body = nn.Sequential(nn.SiLU(), nn.Linear(hidden_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, 1))

    def forward(self, x_t: torch.Tensor, actions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch = x_t.shape[0]
        flat = torch.cat([x_t.reshape(batch, -1), actions.reshape(batch, -1)], dim=-1)
        return self.body(self.input(flat) + self.time_embedding(t)).squeeze(-1)  # [B]
