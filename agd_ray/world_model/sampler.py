"""The guided reverse process ("imagination", ALGORITHM.md section 3).

One loop over reverse steps, batched over windows and the horizon: no Python loop over either, no host-device
copy inside the loop (all noise comes from a generator on the model's device).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import NamedTuple

import torch

from agd_ray.world_model.guidance import Critic, GuideInputs, Policy, policy_score_step
from agd_ray.world_model.normalizer import NormalizerSnapshot
from agd_ray.world_model.schedule import ReverseStep


@dataclass(frozen=True)
class SamplerSettings:
    """The sampler's fixed knobs (copied from WorldModelConfig)."""

    clip_state_change: float = 0.25  # bound on |mu - x| of the states per diffusion step (normalised units)
    clip_last_steps: int = 10  # ... in the reverse steps t -> s with t <= this (diffusion-step units)
    action_clamp_sigmas: float = 3.0
    action_bound: float | None = None  # the denoiser is conditioned on actions clipped to +- this (None: not)
    policy_guidance: str = "score"  # "score" (PolyGRAD), "reparam" or "causal" (ours); see sample_windows
    action_input: str = "scaled"  # the denoiser's action input: sqrt(alpha_bar_t) * a ("scaled") or a ("clean")
    causal_warm_steps: int = 0  # "causal": later reverse processes run the last M steps from the previous window


def denoiser_actions(actions: torch.Tensor, sqrt_alpha_bar, action_input: str) -> torch.Tensor:
    """What the denoiser is given of the (normalised) actions at sqrt(alpha_bar_t): sqrt(alpha_bar_t) * a for
    "scaled" (PolyGRAD), a for "clean" (ours). One rule for training and sampling."""
    return actions if action_input == "clean" else sqrt_alpha_bar * actions


def state_change_bound(step: ReverseStep, settings: SamplerSettings) -> float | None:
    """The bound on the state change |mu - x| of reverse step t -> s, or None where there is none.

    PolyGRAD clips the state change to +-clip_state_change in the last clip_last_steps of its N reverse steps
    (ALGORITHM.md 3, step 5), that is at t = clip_last_steps..1. A strided sampler (K < N) takes the same clip
    over the same stretch of the noise schedule: at the steps with t <= clip_last_steps, with the bound scaled
    by the diffusion steps the reverse step spans (t - s). With K = N this is exactly PolyGRAD's rule; counting
    the last clip_last_steps *sampler* steps instead would clip K = 16 of N = 64 from t = 40 down, where the
    state is still mostly noise, and raise the model's one-step error by about half (RESULTS.md).
    """
    if step.t > settings.clip_last_steps:
        return None
    return settings.clip_state_change * (step.t - step.s)


def inpaint_start(x: torch.Tensor, start_obs: torch.Tensor) -> torch.Tensor:
    """Overwrite s[0] with the real start state. x: [B, H, D_x], start_obs: [B, D_s] (normalised)."""
    x = x.clone()
    x[:, 0, : start_obs.shape[-1]] = start_obs
    return x


def q_sample(x0: torch.Tensor, sqrt_alpha_bar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward process x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (DDPM eq. 4).
    x0, noise: [B, H, D]; sqrt_alpha_bar: [B] or scalar."""
    sab = sqrt_alpha_bar.reshape(-1, *([1] * (x0.dim() - 1))) if torch.is_tensor(sqrt_alpha_bar) else sqrt_alpha_bar
    return sab * x0 + (1.0 - sab**2) ** 0.5 * noise


@dataclass
class _Prefix:
    """What the causal sampler has committed (normalised): states s[0..P-1] [B, P, D_s], rewards and terminals of
    the transitions between them [B, P-1, 2], and the actions at those states a[0..P-1] [B, P, D_a]."""

    states: torch.Tensor
    reward_terminal: torch.Tensor
    actions: torch.Tensor

    def inpaint(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        obs_dim, committed = self.states.shape[-1], self.reward_terminal.shape[1]
        x[:, : self.states.shape[1], :obs_dim] = self.states
        x[:, :committed, obs_dim: obs_dim + 2] = self.reward_terminal  # a weight channel stays the model's
        return x

    def fix_actions(self, a: torch.Tensor) -> torch.Tensor:
        a = a.clone()
        a[:, : self.actions.shape[1]] = self.actions
        return a


@torch.no_grad()
def sample_windows(
    denoiser: torch.nn.Module,
    steps: list[ReverseStep],
    start_obs: torch.Tensor,
    *,
    act_dim: int,
    policy: Policy,
    critic: Critic | None,
    guide,
    normalizer: NormalizerSnapshot,
    delta: float,
    settings: SamplerSettings,
    generator: torch.Generator,
    autocast=contextlib.nullcontext,
    policy_guidance: "PolicyGuidance | None" = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the guided reverse process from normalised start states.

    start_obs: [B, D_s] normalised. Returns normalised (x_0 [B, H, D_x], actions [B, H, D_a]), D_x the denoiser's
    channels (D_s + 2, or D_s + 3 with a weight channel).
    Each step: denoise, inpaint s[0]; policy guidance of the actions with the policy on the predicted states;
    the guide's shift of x0_hat and/or of the posterior mean; the state-change clip in the last steps (after
    guidance); posterior sample; inpaint.

    Policy guidance, a strategy like the guide (`policy_guidance`, default `POLICY_GUIDANCE[settings.policy_guidance]`):
    "score" is PolyGRAD's (clamp, step of size delta along grad log pi, posterior noise on the actions). "reparam"
    (ours) draws one eps ~ N(0, I) per window and step at the start and sets a = mu(s) + sigma(s) eps, at the start
    state s[0] before the first denoising and at the predicted states s_hat after every denoising, with no other
    action noise: the actions move only as the predicted states do, and the returned ones are exactly the policy's
    reparameterised samples at the returned states (z = eps), whatever delta is. "causal" (ours) builds the
    window one transition at a time: with s[0..h] committed, a[h] = mu(s[h]) + sigma(s[h]) eps[h] is fixed at the
    committed state, a reverse process (reparam actions beyond h) with s[0..h], r/d[0..h-1] and a[0..h] inpainted
    samples the window, and its s[h+1], r[h], d[h] are committed; H - 1 reverse processes in all. Every action is
    then the policy's sample at the state it is paired with, and every state follows the actions before it, as
    in a rollout (the joint rules let a high-gain policy and the predicted states chase each other).
    """
    job = _Job(denoiser, steps, start_obs, act_dim, policy, critic, guide, normalizer, delta, settings, generator,
               autocast)
    return (policy_guidance or POLICY_GUIDANCE[settings.policy_guidance]).sample(job)


class _Job(NamedTuple):
    """The arguments of one `sample_windows` call, shared by its reverse processes."""

    denoiser: torch.nn.Module
    steps: list
    start_obs: torch.Tensor
    act_dim: int
    policy: Policy
    critic: Critic | None
    guide: object
    normalizer: NormalizerSnapshot
    delta: float
    settings: SamplerSettings
    generator: torch.Generator
    autocast: object


# -- policy guidance: how the actions of a window follow the policy --------------------------------------------
class _ScoreActions:
    """PolyGRAD's action update within one reverse process (ALGORITHM.md 3.2): the actions start as noise, are
    clamped to mu +- k sigma and step by delta along grad log pi at every reverse step, and take the sampler's
    posterior noise (none at the last step, or with eta = 0 where the step's variance is 0)."""

    def __init__(self, job: _Job) -> None:
        self.job = job

    def initial(self, a: torch.Tensor) -> torch.Tensor:
        return a

    def _policy_step(self, a, mean, std, take_step: bool) -> torch.Tensor:
        job, norm = self.job, self.job.normalizer
        actions = policy_score_step(norm.unnormalize("actions", a), mean, std, job.delta,
                                    job.settings.action_clamp_sigmas, take_step=take_step)
        return norm.normalize("actions", actions)

    def step(self, a, mean, std, step: ReverseStep, steps_left: int, noise: torch.Tensor) -> torch.Tensor:
        a_next = self._policy_step(a, mean, std, take_step=steps_left > 0)
        # The action noise is the sampler's posterior noise: none with eta = 0 (deterministic DDIM), where the
        # actions only step along grad log pi from their initial draw (RESULTS.md, few-step sampling).
        return a_next + step.var**0.5 * noise if steps_left > 0 else a_next

    def final(self, a, mean, std) -> torch.Tensor:
        return self._policy_step(a, mean, std, take_step=False)


class _ReparamActions:
    """The reparameterised rule within one reverse process: a = mu(s) + sigma(s) eps with the window's fixed
    eps [B, H, D_a], at the start state before the first denoising and at the states the process predicts or
    returns after it; no other action noise."""

    def __init__(self, job: _Job, eps: torch.Tensor) -> None:
        self.job, self.eps = job, eps

    def _sample(self, mean, std) -> torch.Tensor:
        return self.job.normalizer.normalize("actions", mean + std * self.eps)

    def initial(self, a: torch.Tensor) -> torch.Tensor:
        # the first denoising sees policy samples too: at the start state, before any state is predicted (called
        # on [B, H, D_s], the start state repeated, so that a policy of whole action sequences, such as
        # `diagnostics.imagine_with_actions`'s, gives its actions at every step)
        job = self.job
        start = job.normalizer.unnormalize("observations", job.start_obs)[:, None].expand(-1, self.eps.shape[1], -1)
        return self._sample(*job.policy(start))

    def step(self, a, mean, std, step: ReverseStep, steps_left: int, noise: torch.Tensor) -> torch.Tensor:
        return self._sample(mean, std)

    def final(self, a, mean, std) -> torch.Tensor:
        return self._sample(mean, std)


def _window_eps(job: _Job) -> torch.Tensor:
    """One eps ~ N(0, I) per window and step: [B, H, D_a]."""
    return torch.randn((job.start_obs.shape[0], job.denoiser.horizon, job.act_dim), generator=job.generator,
                       device=job.start_obs.device)


class ScoreGuidance:
    """PolyGRAD's policy guidance ("score"; see `sample_windows`): one reverse process."""

    name = "score"

    def sample(self, job: _Job):
        return _reverse_process(job, _ScoreActions(job))


class ReparamGuidance:
    """Reparameterised policy guidance ("reparam", ours; see `sample_windows`): one reverse process."""

    name = "reparam"

    def sample(self, job: _Job):
        return _reverse_process(job, _ReparamActions(job, _window_eps(job)))


class CausalGuidance:
    """Causal policy guidance ("causal", ours; see `sample_windows`): H - 1 reverse processes, each committing
    one transition."""

    name = "causal"

    def sample(self, job: _Job):
        batch, horizon = job.start_obs.shape[0], job.denoiser.horizon
        obs_dim, norm = job.start_obs.shape[1], job.normalizer
        eps = _window_eps(job)
        actions = _ReparamActions(job, eps)

        def committed_action(state: torch.Tensor, h: int) -> torch.Tensor:  # [B, D_s] -> [B, 1, D_a] (normalised)
            mean, std = job.policy(norm.unnormalize("observations", state))
            return norm.normalize("actions", mean + std * eps[:, h])[:, None]

        start = job.start_obs
        prefix = _Prefix(start[:, None], start.new_zeros((batch, 0, 2)), committed_action(start, 0))
        warm, previous = job.settings.causal_warm_steps, None
        for h in range(horizon - 1):
            if warm and previous is not None:  # the last M steps, from the previous window noised to their start
                x, a = _reverse_process(job, actions, prefix=prefix, steps=job.steps[-warm:], warm_start=previous)
            else:
                x, a = _reverse_process(job, actions, prefix=prefix)
            previous = (x, a)
            prefix = _Prefix(torch.cat([prefix.states, x[:, h + 1: h + 2, :obs_dim]], dim=1),
                             torch.cat([prefix.reward_terminal, x[:, h: h + 1, obs_dim: obs_dim + 2]], dim=1),
                             torch.cat([prefix.actions, committed_action(x[:, h + 1, :obs_dim], h + 1)], dim=1))
        # r[H-1], d[H-1] (the transition out of the window's last state) as the last reverse process predicted them
        return prefix.inpaint(x), prefix.actions


PolicyGuidance = ScoreGuidance | ReparamGuidance | CausalGuidance
POLICY_GUIDANCE = {rule.name: rule for rule in (ScoreGuidance(), ReparamGuidance(), CausalGuidance())}


def _reverse_process(job: _Job, actions, prefix: _Prefix | None = None, steps: list | None = None,
                     warm_start: tuple | None = None):
    """One guided reverse process (see `sample_windows`), its actions moved by `actions` (`_ScoreActions` or
    `_ReparamActions`); with `prefix`, its states, rewards/terminals and actions are inpainted at every step
    (else only s[0]). `steps`: the reverse steps to run (default: all the job's). `warm_start`: (x_0, actions) of
    an earlier window (normalised), which starts the process noised to the first step's level, x_t = q(x_t | x_0),
    with its actions, instead of from pure noise."""
    (denoiser, all_steps, start_obs, act_dim, policy, critic, guide, normalizer, delta, settings, generator,
     autocast) = job
    steps = all_steps if steps is None else steps
    batch, obs_dim = start_obs.shape
    if prefix is None:
        prefix = _Prefix(start_obs[:, None], start_obs.new_zeros((batch, 0, 2)),
                         start_obs.new_zeros((batch, 0, act_dim)))
    if settings.action_bound is not None:  # the box in normalised coordinates: [D_a] each
        box = torch.full((act_dim,), float(settings.action_bound), device=start_obs.device)
        low, high = normalizer.normalize("actions", -box), normalizer.normalize("actions", box)

    def executed(a_norm: torch.Tensor) -> torch.Tensor:
        """Normalised actions as the env executes them (clipped to the box), which the model was trained on."""
        return a_norm if settings.action_bound is None else torch.clamp(a_norm, low, high)

    horizon = denoiser.horizon
    device = start_obs.device
    x_dim = getattr(denoiser, "x_dim", obs_dim + 2)  # D_x: D_s + 3 with a weight channel; any denoiser: D_s + 2
    shape_x, shape_a = (batch, horizon, x_dim), (batch, horizon, act_dim)
    if warm_start is None:
        x = prefix.inpaint(torch.randn(shape_x, generator=generator, device=device))
        a = prefix.fix_actions(actions.initial(torch.randn(shape_a, generator=generator, device=device)))
    else:
        x0, a0 = warm_start
        x = prefix.inpaint(q_sample(x0, steps[0].sqrt_alpha_bar_t,
                                    torch.randn(shape_x, generator=generator, device=device)))
        a = prefix.fix_actions(a0)
    num_steps = len(steps)
    for i, step in enumerate(steps):
        steps_left = num_steps - 1 - i
        timesteps = torch.full((batch,), step.t, device=device, dtype=torch.long)
        scaled_actions = denoiser_actions(executed(a), step.sqrt_alpha_bar_t, settings.action_input)
        with torch.set_grad_enabled(guide.differentiate_xt):
            x_in = x.requires_grad_(True) if guide.differentiate_xt else x
            with autocast():
                x0_hat = denoiser(x_in, scaled_actions, timesteps)
            x0_hat = prefix.inpaint(x0_hat.float())  # [B, H, D_x]

        # Policy guidance on actions, with the policy evaluated on the predicted clean states.
        mean, std = policy(normalizer.unnormalize("observations", x0_hat.detach()[..., :obs_dim]))  # [B, H, D_a]
        noise_a = torch.randn(shape_a, generator=generator, device=device)
        noise_x = torch.randn(shape_x, generator=generator, device=device)
        a_next = prefix.fix_actions(actions.step(a, mean, std, step, steps_left, noise_a))

        # State guidance, then the posterior mean.
        shift = guide.shift(
            GuideInputs(step=step, steps_left=steps_left, x_t=x_in, x0_hat=x0_hat, scaled_actions=scaled_actions,
                        timesteps=timesteps, normalizer=normalizer, critic=critic)
        )
        x, x0_hat = x.detach(), x0_hat.detach()
        if shift.x0 is not None:
            x0_hat = x0_hat + shift.x0
        mu = step.c1 * x0_hat + step.c2 * x
        if shift.mean is not None:
            mu = mu + shift.mean
        bound = state_change_bound(step, settings)
        if bound is not None:
            change = (mu[..., :obs_dim] - x[..., :obs_dim]).clamp(-bound, bound)
            mu = torch.cat([x[..., :obs_dim] + change, mu[..., obs_dim:]], dim=-1)
        x = mu + step.var**0.5 * noise_x if steps_left > 0 else mu
        x = prefix.inpaint(x)
        a = a_next
    # The returned states differ from the last step's predicted ones (state-change clip, guidance), so the returned
    # actions are the rule's at the states actually returned (ours): the score rule clamps them to mu +- k sigma,
    # so every imagined pair is within k sigma of the policy, as the PPO ratio and the adaptive delta assume.
    mean, std = policy(normalizer.unnormalize("observations", x[..., :obs_dim]))
    return x, prefix.fix_actions(actions.final(a, mean, std))
