"""The tasks' own termination rules as functions of the observation (gymnasium v5, default arguments).

`imagination.termination="env"` decides the imagined windows' terminations with these instead of the world
model's diffused terminal channel: d[h] = rule(s[h+1]), as the env decides `terminated` on the observation a
step returns. The rules restate gymnasium's health checks on the observation layout with the x position
excluded (the default): for Hopper and Walker2d obs[0] is the torso height z and obs[1] its angle.

Each rule maps observations [..., D_s] (torch) to terminated [...] (bool); a non-finite observation is
terminated wherever the env checks it (an unhealthy comparison is False for NaN).
"""

from __future__ import annotations

from typing import Callable

import torch

from agd_ray.envs.core import validate_env_id

TerminalRule = Callable[[torch.Tensor], torch.Tensor]

# env_config keys of gymnasium's v5 tasks that change what terminates; the rules below assume their defaults.
TERMINATION_ARGS = ("terminate_when_unhealthy", "healthy_z_range", "healthy_angle_range", "healthy_state_range",
                    "exclude_current_positions_from_observation")


def _never(obs: torch.Tensor) -> torch.Tensor:
    return torch.zeros(obs.shape[:-1], dtype=torch.bool, device=obs.device)


def _inverted_pendulum(obs: torch.Tensor) -> torch.Tensor:
    return ~torch.isfinite(obs).all(dim=-1) | (obs[..., 1].abs() > 0.2)


def _hopper(obs: torch.Tensor) -> torch.Tensor:
    z, angle = obs[..., 0], obs[..., 1]
    healthy = ((obs[..., 1:] > -100.0) & (obs[..., 1:] < 100.0)).all(dim=-1)
    healthy &= (z > 0.7) & (z < float("inf")) & (angle > -0.2) & (angle < 0.2)
    return ~healthy


def _walker2d(obs: torch.Tensor) -> torch.Tensor:
    z, angle = obs[..., 0], obs[..., 1]
    return ~((z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0))


TERMINAL_RULES: dict[str, TerminalRule] = {
    "HalfCheetah-v5": _never,
    "Hopper-v5": _hopper,
    "Walker2d-v5": _walker2d,
    "Reacher-v5": _never,
    "InvertedPendulum-v5": _inverted_pendulum,
}


def terminal_rule(env_id: str, env_config: dict | None = None) -> TerminalRule:
    """The termination rule of `env_id`; raises ValueError for an unknown id or an `env_config` that changes
    the rule (one of TERMINATION_ARGS)."""
    validate_env_id(env_id)
    changed = sorted(set(env_config or {}) & set(TERMINATION_ARGS))
    if changed:
        raise ValueError(f"imagination.termination='env' applies {env_id}'s default termination rule, but "
                         f"env_config sets {', '.join(changed)}; use termination='model' with these")
    return TERMINAL_RULES[env_id]


def window_terminals(rule: TerminalRule, states: torch.Tensor) -> torch.Tensor:
    """d[h] = rule(s[h+1]) for h < H-1 and False at h = H-1 (s[H] is not in the window: the window is
    truncated there and bootstrapped). states [B, H, D_s] -> [B, H] bool."""
    terminals = torch.zeros(states.shape[:-1], dtype=torch.bool, device=states.device)
    terminals[:, :-1] = rule(states[:, 1:])
    return terminals
