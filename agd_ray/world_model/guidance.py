"""Guidance (ALGORITHM.md sections 3 and 6): policy guidance on actions, advantage, reward and self-weighted
guidance on states.

The equations are pure functions. Guides are objects the sampler calls once per reverse step through one
method, `shift(inputs) -> GuideShift`; the sampler never asks which kind of guide it holds. A guide that
cannot have an effect (kind none, scale 0, infinite temperature) is `NoGuide`, so it is bit-identical to
no guidance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from agd_ray.envs.termination import TerminalRule, window_terminals
from agd_ray.world_model.config import GuideConfig
from agd_ray.world_model.normalizer import NormalizerSnapshot
from agd_ray.world_model.schedule import ReverseStep

Policy = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # obs [..., D_s] -> (mean, std) [..., D_a]
Critic = Callable[[torch.Tensor], torch.Tensor]  # obs [..., D_s] -> value [...]


# ---------------------------------------------------------------------------------------------- equations
def policy_score_step(actions, mean, std, delta: float, clamp_sigmas: float, take_step: bool = True):
    """PolyGRAD's action update (ALGORITHM.md 3.2), in unnormalised action space.

    Clamp a to mu +- k sigma, then a <- a + delta * grad_a log N(a; mu, sigma) = a - delta (a - mu) / sigma^2,
    with the step factor delta / sigma^2 capped at 1 (ours): a gradient step on this quadratic longer than
    1 / curvature overshoots the mean, and past 2 it diverges, which a near-deterministic policy (small sigma)
    and a grown delta otherwise reach. actions, mean, std: [B, H, D_a].
    """
    actions = torch.clamp(actions, mean - clamp_sigmas * std, mean + clamp_sigmas * std)
    if not take_step:
        return actions
    return actions - torch.clamp(delta / std**2, max=1.0) * (actions - mean)


def td1_advantage(rewards, values, continues, gamma: float):
    """One-step TD advantage A[h] = r[h] + gamma (1 - d[h]) V(s[h+1]) - V(s[h]), h = 0..H-2 (reference).

    rewards, values, continues (= 1 - d): [B, H] -> [B, H-1].
    """
    return rewards[:, :-1] + gamma * continues[:, :-1] * values[:, 1:] - values[:, :-1]


def gae_advantage(rewards, values, continues, gamma: float, lam: float):
    """GAE(gamma, lambda) inside the window, bootstrapped with V(s[H-1]) (Schulman et al. 2016, eq. 16).

    A[h] = sum_{j >= h} (prod_{h <= k < j} gamma lam (1 - d[k])) delta[j], delta = td1_advantage.
    Vectorised over the horizon with a cumulative product of a masked factor matrix (no Python loop).
    rewards, values, continues: [B, H] -> [B, H-1].
    """
    deltas = td1_advantage(rewards, values, continues, gamma)  # [B, M], M = H-1
    m = deltas.shape[1]
    factors = gamma * lam * continues[:, : m - 1]  # [B, M-1]: factor between delta[k] and delta[k+1]
    idx = torch.arange(m, device=deltas.device)
    later = idx[None, :] > idx[:, None]  # [M, M]: j > h
    # F[b, h, j] = factors[b, j-1] where j > h, else 1; the cumulative product along j gives the coefficients.
    shifted = torch.cat([torch.ones_like(deltas[:, :1]), factors], dim=1)  # [B, M]: shifted[j] = factors[j-1]
    fmat = torch.where(later, shifted[:, None, :], torch.ones_like(shifted[:, None, :]))  # [B, M, M]
    coeffs = torch.cumprod(fmat, dim=-1) * (idx[None, :] >= idx[:, None])  # zero for j < h
    return torch.einsum("bhj,bj->bh", coeffs, deltas)


def n_step_advantage(rewards, values, continues, gamma: float):
    """sum_{h<H-1} gamma^h r[h] + gamma^(H-1) V(s[H-1]) - V(s[0]), cut at a predicted termination
    (ALGORITHM.md 3.3, the measure a guide must raise). rewards, values, continues: [B, H] -> [B]."""
    h = rewards.shape[1]
    alive = torch.cumprod(torch.cat([torch.ones_like(continues[:, :1]), continues[:, :-1]], dim=1), dim=1)
    discount = gamma ** torch.arange(h, device=rewards.device, dtype=rewards.dtype)  # [H]
    ret = (discount[: h - 1] * alive[:, : h - 1] * rewards[:, : h - 1]).sum(dim=1)
    bootstrap = discount[h - 1] * alive[:, h - 1] * values[:, h - 1]
    return ret + bootstrap - values[:, 0]


def sag_log_weight(advantages, temperature: float):
    """Sigmoid Advantage Guidance: log w = log sigmoid(A / beta) (AGD-MBRL)."""
    return F.logsigmoid(advantages / temperature)


def eag_log_weight(advantages, temperature: float):
    """Exponential Advantage Guidance: log w = A / beta (AGD-MBRL)."""
    return advantages / temperature


def window_advantages(out: dict, critic: Critic, gamma: float) -> torch.Tensor:
    """The n-step advantage (`n_step_advantage`) of each imagined window of `out` (`WorldModel.imagine`'s
    unnormalised dict: observations [B, H, D_s], rewards [B, H], terminals [B, H]), critic on its states: [B]."""
    values = critic(out["observations"])  # [B, H]
    continues = 1.0 - out["terminals"].to(values.dtype)  # [B, H]
    return n_step_advantage(out["rewards"].to(values.dtype), values, continues, gamma)


def within_start_spread(advantages: torch.Tensor) -> torch.Tensor:
    """The spread of the advantages [S, K] of K windows from each of S start states within their start, the spread
    a choice among a start's windows acts on, as a robust standard deviation: the median of |A[s, k] - A[s, k+1]|
    (k + 1 taken mod K) over 0.6745 sqrt(2). For normal data A - A' ~ N(0, 2 sigma^2), whose median absolute value
    is 0.6745 sqrt(2) sigma: the standard deviation, unbiased at any K >= 2 (no fitted centre). Robust because a
    window's n-step advantage is heavy-tailed where an imagined termination cuts the bootstrap: on a trained Hopper
    agent the within-start standard deviation is about 14x the robust one, and normalising by it made every temperature
    act as a high one on all but the few falling windows (docs/RESULTS.md). A scalar, > 0."""
    differences = advantages - torch.roll(advantages, shifts=1, dims=1)  # [S, K]: each window against its neighbour
    return (differences.abs().median() / (0.6744897501960817 * 2**0.5)).clamp_min(1e-8)


def resample_log_weights(advantages: torch.Tensor, config: GuideConfig) -> torch.Tensor:
    """log w(A / beta) of K candidate windows per start state, advantages: [S, K] -> [S, K] (ALGORITHM.md 6).

    With `normalize_advantage` A is first divided by its within-start spread (`within_start_spread`, detached), so
    that beta = 1 means one (robust) standard deviation of what the choice among candidates can gain, on every task.
    With `advantage_clip` c, A (normalised or not) is then clipped to [-c, c]: no window's weight is more than
    w(c / beta) / w(-c / beta) times another's, so a window the model imagines falling is kept less often, not never.
    """
    if config.normalize_advantage:
        advantages = advantages / within_start_spread(advantages.detach())
    if config.advantage_clip is not None:
        advantages = advantages.clamp(-config.advantage_clip, config.advantage_clip)
    return LOG_WEIGHTS[config.kind](advantages, config.temperature)


def resample_indices(log_weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Self-normalised importance resampling: for each row of log_weights [S, K], one index drawn with
    probability w[k] / sum_j w[j]: [S] (long). As K grows the kept windows follow p(tau) w(tau) / Z."""
    probs = torch.softmax(log_weights.double(), dim=1)  # [S, K]; softmax of log w is w / sum w, overflow-free
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def window_weights(windows: dict, critic: Critic, config: GuideConfig) -> torch.Tensor:
    """The self-weighted guide's training weight W = w(A_win / beta) of each real window (ALGORITHM.md 6): [B].

    A_win is the window's n-step advantage (`window_advantages`, the critic on its unnormalised states), divided by
    its batch standard deviation with `normalize_advantage`; w is sigmoid (`swg_weight="sigmoid"`, SAG's form) or
    exp ("exp", EAG's form). windows: observations [B, H, D_s], rewards [B, H], terminals [B, H] (arrays or
    tensors). Computed in float64 so that exp weights of large A / beta stay finite; the caller runs it without
    gradients (the weights are training targets).
    """
    windows = {k: torch.as_tensor(windows[k]) for k in ("observations", "rewards", "terminals")}
    windows["observations"] = windows["observations"].to(torch.float32)  # what the critic takes
    advantages = window_advantages(windows, lambda states: critic(states).double(), config.gamma)  # [B], float64
    if config.normalize_advantage and advantages.numel() > 1:
        advantages = advantages / advantages.std().clamp_min(1e-8)
    return torch.exp(SWG_LOG_WEIGHTS[config.swg_weight](advantages, config.temperature))


ADVANTAGES = {
    "td1": lambda r, v, c, cfg: td1_advantage(r, v, c, cfg.gamma),
    "gae": lambda r, v, c, cfg: gae_advantage(r, v, c, cfg.gamma, cfg.lam),
}
LOG_WEIGHTS = {"sag": sag_log_weight, "eag": eag_log_weight}
SWG_LOG_WEIGHTS = {"sigmoid": sag_log_weight, "exp": eag_log_weight}
# The smallest predicted weight the self-weighted guide takes the log of (weights are self-normalised to a batch
# mean of 1, see `WorldModel.update`, so this is a thousandth of a typical window's weight).
MIN_PREDICTED_WEIGHT = 1e-3


# ---------------------------------------------------------------------------------------------- guides
@dataclass
class GuideInputs:
    """What the sampler hands a guide at one reverse step (normalised coordinates throughout)."""

    step: ReverseStep
    steps_left: int  # reverse steps after this one (0 at the last step)
    x_t: torch.Tensor  # [B, H, D_x] (D_x = D_s + 2, + 1 with a weight); requires grad if `differentiate_xt`
    x0_hat: torch.Tensor  # [B, H, D_x]; a function of x_t when `differentiate_xt`
    scaled_actions: torch.Tensor  # [B, H, D_a]: sqrt(alpha_bar_t) * a_t, as the denoiser saw them
    timesteps: torch.Tensor  # [B] int
    normalizer: NormalizerSnapshot
    critic: Critic | None


@dataclass
class GuideShift:
    """Additive corrections: `x0` is added to x0_hat, `mean` to the posterior mean mu_t."""

    x0: torch.Tensor | None = None
    mean: torch.Tensor | None = None


def guided_channel_mask(obs_dim: int, horizon: int, *, rewards: bool, last_state: bool, device,
                        x_dim: int | None = None, weight: bool = False) -> torch.Tensor:
    """[H, D_x] of 0/1: which entries of x a state guide may move. Never s[0] (inpainted) or d. D_x = x_dim
    (default D_s + 2); a weight channel (x_dim = D_s + 3) is moved only with `weight`."""
    mask = torch.zeros(horizon, x_dim or obs_dim + 2, device=device)
    mask[1:, :obs_dim] = 1.0
    if not last_state:
        mask[horizon - 1, :obs_dim] = 0.0
    if rewards:
        mask[:, obs_dim] = 1.0
    if weight:
        mask[:, obs_dim + 2] = 1.0
    return mask


class NoGuide:
    """PolyGRAD: no state guidance."""

    differentiate_xt = False

    def shift(self, inputs: GuideInputs) -> GuideShift:
        return GuideShift()


class AdvantageGuide:
    """SAG / EAG: raise the log weight sum_h log w(A[h] / beta) of the window (ALGORITHM.md 3.3)."""

    def __init__(self, config: GuideConfig, obs_dim: int, terminal_rule: TerminalRule | None = None) -> None:
        self.config, self.obs_dim, self.terminal_rule = config, obs_dim, terminal_rule
        self.log_weight = LOG_WEIGHTS[config.kind]
        self.advantage = ADVANTAGES[config.advantage]
        self.differentiate_xt = config.grad_wrt == "xt"

    def advantages(self, x0: torch.Tensor, normalizer: NormalizerSnapshot, critic: Critic) -> torch.Tensor:
        """A[h] of windows x0 (normalised, [B, H, D_x]) with the critic on unnormalised states: [B, H-1]."""
        cfg, ds = self.config, self.obs_dim
        states = normalizer.unnormalize("observations", x0[..., :ds])  # [B, H, D_s]
        rewards = normalizer.unnormalize("rewards", x0[..., ds])  # [B, H]
        if not cfg.guide_rewards:
            rewards = rewards.detach()
        # Terminations are never guided: (1 - d) is a detached, clamped continuation probability, or with a
        # terminal rule 1 - rule(s[h+1]) on the current estimate of the states (as the returned windows decide).
        if self.terminal_rule is None:
            continues = 1.0 - normalizer.unnormalize("terminals", x0[..., ds + 1]).detach().clamp(0.0, 1.0)
        else:
            continues = 1.0 - window_terminals(self.terminal_rule, states.detach()).to(states.dtype)
        values = critic(states)  # [B, H]
        advantages = self.advantage(rewards, values, continues, cfg)
        if cfg.normalize_advantage and advantages.numel() > 1:
            advantages = advantages / advantages.detach().std().clamp_min(1e-8)
        return advantages

    def objective(self, x0: torch.Tensor, normalizer: NormalizerSnapshot, critic: Critic) -> torch.Tensor:
        """sum over the batch and h of log w[h]: a scalar."""
        return self.log_weight(self.advantages(x0, normalizer, critic), self.config.temperature).sum()

    def gradient(self, inputs: GuideInputs) -> torch.Tensor:
        """g = grad log w w.r.t. x0_hat (grad_wrt x0) or x_t (grad_wrt xt), masked: [B, H, D_x]."""
        cfg = self.config
        with torch.enable_grad():
            if self.differentiate_xt:
                wrt, x0 = inputs.x_t, inputs.x0_hat
            else:
                wrt = x0 = inputs.x0_hat.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.objective(x0, inputs.normalizer, inputs.critic), wrt)
        mask = guided_channel_mask(
            self.obs_dim, g.shape[1], rewards=cfg.guide_rewards, last_state=cfg.guide_last_state, device=g.device,
            x_dim=g.shape[2],
        )
        return g * mask

    def shift(self, inputs: GuideInputs) -> GuideShift:
        g = self.gradient(inputs)
        var = inputs.step.guide_var  # beta_tilde whatever the sampler's eta (schedule.ReverseStep)
        if self.config.scale_mode == "reference":
            return GuideShift(x0=self.config.scale * var**2 * g)
        return GuideShift(mean=self.config.scale * var * g)


class RewardGuide:
    """Diffuser-style return guidance: mu_t <- mu_t + c beta_tilde grad_{x_t} J (ALGORITHM.md 3.4),
    `reward_guide_steps` gradient steps per reverse step, none in the last `reward_t_stop` steps."""

    differentiate_xt = False

    def __init__(self, config: GuideConfig, obs_dim: int, return_model: torch.nn.Module) -> None:
        self.config, self.obs_dim, self.return_model = config, obs_dim, return_model

    def shift(self, inputs: GuideInputs) -> GuideShift:
        cfg = self.config
        if inputs.steps_left < cfg.reward_t_stop:
            return GuideShift()
        mask = guided_channel_mask(self.obs_dim, inputs.x_t.shape[1], rewards=True, last_state=True,
                                   device=inputs.x_t.device, x_dim=inputs.x_t.shape[2])
        x = inputs.x_t.detach()
        for _ in range(cfg.reward_guide_steps):
            with torch.enable_grad():
                leaf = x.detach().requires_grad_(True)
                ret = self.return_model(leaf, inputs.scaled_actions, inputs.timesteps).sum()
                (g,) = torch.autograd.grad(ret, leaf)
            x = x + cfg.scale * inputs.step.guide_var * g * mask
        return GuideShift(mean=x - inputs.x_t.detach())


class SelfWeightedGuide:
    """SWG (ALGORITHM.md 6): mu_t <- mu_t + c beta_tilde_t grad_{x_t} log W0_hat(x_t), no critic call.

    The model diffuses a weight channel W (`WorldModelConfig.weight_channel`); trained with squared error, its x0
    prediction of that channel is the posterior mean W0_hat(x_t) = E[W | x_t], so g is the exact classifier-guidance
    term of the tilt p(tau) W(tau) and c = 1 is the exact tilt for the DDPM step. W0_hat is the mean over h of the
    predicted channel (one window-level weight repeated over the H steps). The step moves the states (never s[0]),
    the rewards and the weight channel itself, never d: the weight channel is part of the tilted x, and left
    unguided it would keep telling the denoiser the untilted weight while the states move.
    """

    differentiate_xt = True

    def __init__(self, config: GuideConfig, obs_dim: int) -> None:
        self.config, self.obs_dim = config, obs_dim

    def log_weight(self, x0_hat: torch.Tensor) -> torch.Tensor:
        """log W0_hat of each window, x0_hat: [B, H, D_s + 3] -> [B]. A regression output can dip to or below 0
        (at high noise, or for a window the data gives almost no weight), where the log is undefined: it is clamped
        to MIN_PREDICTED_WEIGHT, so such a window gets no push (a zero gradient) instead of a NaN or an unbounded
        one."""
        predicted = x0_hat[..., self.obs_dim + 2].mean(dim=1)  # [B]
        return torch.log(predicted.clamp_min(MIN_PREDICTED_WEIGHT))

    def shift(self, inputs: GuideInputs) -> GuideShift:
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.log_weight(inputs.x0_hat).sum(), inputs.x_t)  # [B, H, D_s + 3]
        mask = guided_channel_mask(self.obs_dim, g.shape[1], rewards=True, last_state=True, device=g.device,
                                   x_dim=g.shape[2], weight=True)
        return GuideShift(mean=self.config.scale * inputs.step.guide_var * g * mask)


def build_guide(config: GuideConfig, obs_dim: int, return_model: torch.nn.Module | None = None,
                terminal_rule: TerminalRule | None = None, weight_channel: bool = False):
    """The guide object for a GuideConfig; a config that cannot have an effect gives `NoGuide`. `terminal_rule`:
    the advantage guides cut at the task's terminations instead of the diffused terminal channel. Resampling
    (`GuideConfig.resampling`) acts on whole windows after the reverse process (`WorldModel.imagine`), so its
    reverse process is unguided: `NoGuide`. `weight_channel`: whether the model diffuses the weight swg needs."""
    if config.kind == "swg" and not weight_channel:
        raise ValueError("guide kind='swg' needs a model with the weight channel; set "
                         "WorldModelConfig.weight_channel=True (this model has weight_channel=False)")
    if not config.enabled or config.resampling:
        return NoGuide()
    if config.kind == "reward":
        if return_model is None:
            raise ValueError("guide kind='reward' needs the return model; set WorldModelConfig.return_model_hidden > 0")
        return RewardGuide(config, obs_dim, return_model)
    if config.kind == "swg":
        return SelfWeightedGuide(config, obs_dim)
    return AdvantageGuide(config, obs_dim, terminal_rule)
