"""WorldModel: the trajectory diffusion world model, its training step and guided imagination.

Plain PyTorch, no Ray and no RLlib: the policy and critic come in as torch callables. The Ray actor in
`actor.py` is a thin shell around this class.
"""

from __future__ import annotations

import contextlib
import copy
import math

import numpy as np
import torch

from agd_ray.envs.termination import TerminalRule, window_terminals
from agd_ray.world_model.config import GuideConfig, WorldModelConfig
from agd_ray.world_model.denoiser import ResidualMLPDenoiser, ReturnModel
from agd_ray.world_model.diagnostics import action_z_stats
from agd_ray.world_model.guidance import (
    Critic,
    Policy,
    build_guide,
    resample_indices,
    resample_log_weights,
    window_advantages,
)
from agd_ray.world_model.normalizer import FIELDS, NormalizerSnapshot
from agd_ray.world_model.sampler import (
    POLICY_GUIDANCE,
    PolicyGuidance,
    SamplerSettings,
    denoiser_actions,
    inpaint_start,
    q_sample,
    sample_windows,
)
from agd_ray.world_model.schedule import DiffusionSchedule

STATE_VERSION = 1


def _to_tensor(value, device, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.float32)
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float32), device=device)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array, got {type(value).__name__}") from err


def _adam(parameters, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam with the fused kernel (one call per step for all parameters; CPU and CUDA in this torch), else the
    multi-tensor one. The same update rule as the per-tensor loop, up to floating-point rounding."""
    parameters = list(parameters)
    try:
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # a device or torch build without the fused kernel
        return torch.optim.Adam(parameters, lr=lr, foreach=True)


class WorldModel:
    """Trajectory diffusion world model over windows x = [s, r, d] conditioned on actions (ALGORITHM.md 1-3),
    or x = [s, r, d, W] with `WorldModelConfig.weight_channel` (self-weighted guidance, ALGORITHM.md 6).

    update(batch) trains the x0 denoiser (and the reward guide's return model); imagine(...) runs the
    guided reverse process with the EMA weights; adapt_policy_step(...) is the explicit adaptive-delta step.
    """

    def __init__(self, obs_dim: int, act_dim: int, config: WorldModelConfig | None = None, device="cpu",
                 seed: int = 0, terminal_rule: TerminalRule | None = None) -> None:
        if obs_dim < 1 or act_dim < 1:
            raise ValueError(f"obs_dim={obs_dim}, act_dim={act_dim}: both must be >= 1")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        # None: terminations are the diffused terminal channel (d_hat > 0.5); a rule: the task's own check on the
        # imagined states (`agd_ray.envs.termination`, imagination.termination="env"), in the guide too.
        self.terminal_rule = terminal_rule
        self.config = config = config or WorldModelConfig()
        self.device = torch.device(device)
        self.schedule = DiffusionSchedule(config.diffusion_steps, config.tau)
        self._sqrt_alpha_bar = torch.as_tensor(np.sqrt(self.schedule.alpha_bar), dtype=torch.float32,
                                               device=self.device)  # [N+1]
        self._reverse_steps = self.schedule.reverse_steps(config.sampling_steps, config.sampler_eta)
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
            torch.manual_seed(seed)
            self.denoiser = ResidualMLPDenoiser(obs_dim, act_dim, config.horizon, config.hidden_dim,
                                                config.num_layers, config.diffusion_steps,
                                                config.fourier_features, config.weight_channel).to(self.device)
            self.return_model = None
            if config.return_model_hidden > 0:
                self.return_model = ReturnModel(obs_dim, act_dim, config.horizon, config.return_model_hidden,
                                                config.diffusion_steps, config.weight_channel).to(self.device)
        self.ema_denoiser = copy.deepcopy(self.denoiser).requires_grad_(False).eval()
        self.optimizer = _adam(self.denoiser.parameters(), config.lr, self.device)
        self.return_optimizer = None
        if self.return_model is not None:
            self.return_optimizer = _adam(self.return_model.parameters(), config.lr, self.device)
        self._discounts = config.return_gamma ** torch.arange(config.horizon, dtype=torch.float32,
                                                               device=self.device)  # [H]
        self._train_generator = torch.Generator(device=self.device).manual_seed(seed)
        use_amp = self.device.type == "cuda" and config.amp != "none"
        self._amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp) if use_amp else None
        self._scaler = torch.amp.GradScaler("cuda") if self._amp_dtype == torch.float16 else None
        self.normalizer = NormalizerSnapshot.identity(obs_dim, act_dim)
        self.log_delta = math.log(config.delta_init)
        self.num_updates = 0
        self.num_rejected_batches = 0

    # ------------------------------------------------------------------------------------------ data
    @property
    def delta(self) -> float:
        return math.exp(self.log_delta)

    def _autocast(self):
        if self._amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._amp_dtype)

    def _check_batch(self, batch: dict) -> dict[str, torch.Tensor]:
        """Tensors of a window batch after shape and finiteness checks (ValueError naming what is wrong)."""
        if not isinstance(batch, dict):
            raise ValueError(f"batch must be a dict with {list(FIELDS)}, got {type(batch).__name__}")
        missing = [k for k in FIELDS if k not in batch]
        if missing:
            raise ValueError(f"batch lacks fields {missing}; needs {list(FIELDS)}")
        out = {k: _to_tensor(batch[k], self.device, k) for k in FIELDS}
        b, h = out["rewards"].shape[:2] if out["rewards"].dim() == 2 else (None, None)
        expected = {
            "observations": (b, self.config.horizon, self.obs_dim),
            "actions": (b, self.config.horizon, self.act_dim),
            "rewards": (b, self.config.horizon),
            "terminals": (b, self.config.horizon),
        }
        for key, shape in expected.items():
            if b is None or tuple(out[key].shape) != shape or b < 1:
                got = tuple(out[key].shape)
                want = tuple("B" if s is None else s for s in (None,) + shape[1:])
                raise ValueError(f"{key} has shape {got}; expected {want} (horizon={self.config.horizon})")
        for key, value in out.items():
            if not torch.isfinite(value).all():
                raise ValueError(f"{key} contains NaN or inf; a training batch must be finite")
        return out

    def fit_normalizer(self, batch: dict) -> NormalizerSnapshot:
        """Set the normaliser to the statistics of `batch` as a new snapshot version; returns it."""
        checked = {k: v.cpu().numpy() for k, v in self._check_batch(batch).items()}
        self.normalizer = NormalizerSnapshot.from_batch(checked, version=self.normalizer.version + 1)
        return self.normalizer

    def set_normalizer(self, snapshot: NormalizerSnapshot) -> None:
        """Use statistics computed elsewhere (the replay buffer's running statistics)."""
        if snapshot.mean["observations"].shape != (self.obs_dim,) or snapshot.mean["actions"].shape != (self.act_dim,):
            raise ValueError(
                f"normalizer dims {snapshot.mean['observations'].shape}/{snapshot.mean['actions'].shape} do not "
                f"match obs_dim={self.obs_dim}, act_dim={self.act_dim}"
            )
        self.normalizer = snapshot

    def _check_weights(self, batch: dict, batch_size: int) -> torch.Tensor:
        """The weight channel of a batch: `weights` [B] (one per window) or [B, H] (per step), finite and >= 0
        with a positive mean, self-normalised to a batch mean of 1: [B, H].

        Dividing by the batch mean keeps the channel's scale near 1 for either weight form (exp weights span
        orders of magnitude) without statistics in the normaliser, and changes nothing the guide uses: the tilt
        p(tau) W(tau) / Z and grad log W0_hat are the same for W and W / const. Otherwise unnormalised, so that a
        predicted weight is a weight (positive, its log defined) without an unnormalise step."""
        if "weights" not in batch:
            raise ValueError("batch lacks field 'weights' ([B] or [B, H]); a model with weight_channel=True "
                             "needs the self-weighted guide's weights in every training batch")
        value = batch["weights"]
        try:  # float64: exp weights overflow float32 long before they lose meaning
            weights = (value.detach().to("cpu", torch.float64) if torch.is_tensor(value)
                       else torch.as_tensor(np.asarray(value, dtype=np.float64)))
        except (TypeError, ValueError) as err:
            raise ValueError(f"weights must be a numeric array, got {type(value).__name__}") from err
        horizon = self.config.horizon
        if weights.dim() == 1 and weights.shape[0] == batch_size:
            weights = weights[:, None].expand(batch_size, horizon)
        if tuple(weights.shape) != (batch_size, horizon):
            raise ValueError(f"weights has shape {tuple(weights.shape)}; expected ({batch_size},) or "
                             f"({batch_size}, {horizon})")
        if not torch.isfinite(weights).all():
            raise ValueError("weights contains NaN or inf; a training batch must be finite")
        if (weights < 0).any() or weights.mean() <= 0:
            raise ValueError(f"weights has min {weights.min().item():.3g} and mean {weights.mean().item():.3g}; "
                             "weights must be >= 0 with a positive mean")
        return (weights / weights.mean()).to(device=self.device, dtype=torch.float32)

    def _normalized_windows(self, data: dict[str, torch.Tensor],
                            weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 = [s, r, d] normalised: [B, H, D_s + 2], or [s, r, d, W] [B, H, D_s + 3] with weights [B, H]
        (`_check_weights`), and normalised actions [B, H, D_a]."""
        norm = self.normalizer
        channels = [
            norm.normalize("observations", data["observations"]),
            norm.normalize("rewards", data["rewards"])[..., None],
            norm.normalize("terminals", data["terminals"])[..., None],
        ]
        if weights is not None:
            channels.append(weights[..., None])
        return torch.cat(channels, dim=-1), norm.normalize("actions", data["actions"])

    # ------------------------------------------------------------------------------------------ training
    def _action_input(self, sab: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The denoiser's action input at sqrt(alpha_bar_t) = sab [B] (`sampler.denoiser_actions`)."""
        return denoiser_actions(actions, sab[:, None, None], self.config.action_input)

    def diffusion_loss(self, x0: torch.Tensor, actions: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
        """Unreduced x0-prediction loss (x0_hat - x0)^2: [B, H, D_x] (ALGORITHM.md 2), and x_t."""
        sab = self._sqrt_alpha_bar[t]  # [B]
        x_t = inpaint_start(q_sample(x0, sab, noise), x0[:, 0, : self.obs_dim])
        with self._autocast():
            x0_hat = self.denoiser(x_t, self._action_input(sab, actions), t)
        x0_hat = inpaint_start(x0_hat.float(), x0[:, 0, : self.obs_dim])
        return (x0_hat - x0) ** 2, x_t

    def update(self, batch: dict) -> dict:
        """One Adam step on a batch of windows. A batch with a wrong shape or NaN/inf is refused with a
        ValueError and counted (`num_rejected_batches`); the model is then unchanged. With the weight channel the
        batch also needs `weights` [B] or [B, H] (`_check_weights`), refused the same way when missing or bad."""
        try:
            data = self._check_batch(batch)
            weights = None
            if self.config.weight_channel:
                weights = self._check_weights(batch, data["rewards"].shape[0])
        except ValueError:
            self.num_rejected_batches += 1
            raise
        x0, actions = self._normalized_windows(data, weights)
        batch_size = x0.shape[0]
        gen = self._train_generator
        t = torch.randint(1, self.config.diffusion_steps + 1, (batch_size,), generator=gen, device=self.device)
        noise = torch.randn(x0.shape, generator=gen, device=self.device)
        self.denoiser.train()
        loss = self.diffusion_loss(x0, actions, t, noise)[0].mean()
        if not torch.isfinite(loss):
            self.num_rejected_batches += 1
            raise ValueError(f"loss is {loss.item()}; the update was skipped and the model is unchanged")
        self._step(self.optimizer, self.denoiser, loss)
        metrics = {"loss": loss.item()}
        if self.return_model is not None:
            metrics["return_model_loss"] = self._update_return_model(x0, actions, t, noise)
        self.num_updates += 1
        self._update_ema()
        metrics.update(num_updates=self.num_updates, normalizer_version=self.normalizer.version)
        return metrics

    def _step(self, optimizer, module, loss) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self._scaler is not None:
            self._scaler.scale(loss).backward()
            self._scaler.unscale_(optimizer)
        else:
            loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.config.grad_clip)
        if self._scaler is not None:
            self._scaler.step(optimizer)
            self._scaler.update()
        else:
            optimizer.step()

    def _update_return_model(self, x0, actions, t, noise) -> float:
        """J(x_t, a, t) regresses the discounted return of the clean window (normalised rewards)."""
        sab = self._sqrt_alpha_bar[t]
        x_t = inpaint_start(q_sample(x0, sab, noise), x0[:, 0, : self.obs_dim])
        target = (x0[..., self.obs_dim] * self._discounts).sum(dim=1)  # [B]
        with self._autocast():
            pred = self.return_model(x_t, self._action_input(sab, actions), t)
        loss = ((pred.float() - target) ** 2).mean()
        self._step(self.return_optimizer, self.return_model, loss)
        return loss.item()

    @torch.no_grad()
    def _update_ema(self) -> None:
        """EMA of the weights (decay, every `ema_every` updates, from `ema_start`); a copy before that."""
        cfg = self.config
        # One fused call over all tensors instead of a state-dict round trip or a Python loop per tensor.
        if self.num_updates < cfg.ema_start:
            ema = [*self.ema_denoiser.parameters(), *self.ema_denoiser.buffers()]
            live = [*self.denoiser.parameters(), *self.denoiser.buffers()]
            torch._foreach_copy_(ema, [t.detach() for t in live])
        elif self.num_updates % cfg.ema_every == 0:
            torch._foreach_lerp_(list(self.ema_denoiser.parameters()),
                                 [t.detach() for t in self.denoiser.parameters()], 1.0 - cfg.ema_decay)

    # ------------------------------------------------------------------------------------------ imagination
    def _device_generator(self, generator: torch.Generator | None) -> torch.Generator:
        if generator is None:
            return torch.Generator(device=self.device).manual_seed(int(torch.randint(2**62, (1,)).item()))
        if generator.device == self.device or (generator.device.type == self.device.type == "cpu"):
            return generator
        seed = int(torch.randint(2**62, (1,), generator=generator).item())
        return torch.Generator(device=self.device).manual_seed(seed)

    def imagine(self, start_obs, *, policy: Policy, critic: Critic | None = None, guide: GuideConfig | None = None,
                generator: torch.Generator | None = None, policy_guidance: str | None = None) -> dict:
        """Guided imagined windows from real start states (ALGORITHM.md 3 and 6); changes no state of the model.

        start_obs: [B, D_s]. Returns unnormalised torch tensors: observations [B, H, D_s], actions
        [B, H, D_a], rewards [B, H], terminals [B, H] (bool), plus `normalizer_version`. A resampling guide
        (`GuideConfig.resampling`) also returns `candidate_advantages` [B, K], the n-step advantage of every
        unguided candidate window, `selected` [B], the candidate kept for each start state, and `candidates`, the
        B * K candidate windows themselves (the same dict, start state b's at rows b*K..b*K+K-1).
        policy_guidance: the action rule for this call ("score", "reparam", "causal"; None: the config's).
        """
        guide = guide or GuideConfig()
        if not isinstance(guide, GuideConfig):
            raise ValueError(f"guide must be a GuideConfig, got {type(guide).__name__}")
        start = _to_tensor(start_obs, self.device, "start_obs")
        if start.dim() != 2 or start.shape[1] != self.obs_dim or start.shape[0] < 1:
            raise ValueError(f"start_obs has shape {tuple(start.shape)}; expected (B, {self.obs_dim}) with B >= 1")
        if not torch.isfinite(start).all():
            raise ValueError("start_obs contains NaN or inf")
        if guide.kind in ("sag", "eag") and guide.enabled and critic is None:
            raise ValueError(f"guide kind={guide.kind!r} needs a critic")
        rule = policy_guidance or self.config.policy_guidance
        if rule not in POLICY_GUIDANCE:
            raise ValueError(f"policy_guidance={rule!r}; allowed: {', '.join(POLICY_GUIDANCE)}")
        generator = self._device_generator(generator)
        if guide.resampling and guide.enabled:
            return self._imagine_resampled(start, policy, critic, guide, generator, POLICY_GUIDANCE[rule])
        return self._imagine(start, policy, critic, guide, generator, POLICY_GUIDANCE[rule])

    @torch.no_grad()
    def _imagine_resampled(self, start, policy: Policy, critic: Critic, guide: GuideConfig, generator,
                           rule: PolicyGuidance) -> dict:
        """Advantage-weighted resampling (ALGORITHM.md 6): K unguided candidate windows per start state in one
        batched reverse process, then one kept per start state with probability proportional to w(A / beta)."""
        k = guide.candidates
        out = self._imagine(start.repeat_interleave(k, dim=0), policy, critic, GuideConfig(kind="none"), generator,
                            rule)
        advantages = window_advantages(out, critic, guide.gamma).reshape(-1, k)  # [B, K]
        selected = resample_indices(resample_log_weights(advantages, guide), generator)  # [B]
        rows = torch.arange(len(start), device=selected.device) * k + selected  # [B] into the B*K candidates
        kept = {key: value[rows] if torch.is_tensor(value) else value for key, value in out.items()}
        return {**kept, "candidate_advantages": advantages, "selected": selected, "candidates": out}

    def _imagine(self, start, policy: Policy, critic: Critic | None, guide: GuideConfig, generator,
                 rule: PolicyGuidance) -> dict:
        """The reverse process from checked start states [B, D_s] with the sampler's guide (section 3)."""
        norm = self.normalizer
        settings = SamplerSettings(self.config.clip_state_change, self.config.clip_last_steps,
                                   self.config.action_clamp_sigmas, self.config.action_bound,
                                   self.config.policy_guidance, self.config.action_input,
                                   self.config.causal_warm_steps)
        x0, actions = sample_windows(
            self.ema_denoiser, self._reverse_steps, norm.normalize("observations", start),
            act_dim=self.act_dim, policy=policy, critic=critic,
            guide=build_guide(guide, self.obs_dim, self.return_model, self.terminal_rule,
                              self.config.weight_channel), normalizer=norm,
            delta=self.delta, settings=settings, generator=generator, autocast=self._autocast, policy_guidance=rule,
        )
        ds = self.obs_dim
        observations = norm.unnormalize("observations", x0[..., :ds])
        observations[:, 0] = start  # s[0] is the real state, bit for bit (not a normalise/unnormalise round trip)
        if self.terminal_rule is None:
            terminals = norm.unnormalize("terminals", x0[..., ds + 1]) > 0.5
        else:
            terminals = window_terminals(self.terminal_rule, observations)
        return {
            "observations": observations,
            "actions": norm.unnormalize("actions", actions),
            "rewards": norm.unnormalize("rewards", x0[..., ds]),
            "terminals": terminals,
            "normalizer_version": norm.version,
        }

    @torch.no_grad()
    def adapt_policy_step(self, out: dict, policy: Policy) -> dict:
        """Adaptive delta (ALGORITHM.md 3.2): z = (a - mu)/sigma on the imagined pairs,
        log delta += delta_lr * (mean_dims std(z) - 1). Returns the z statistics and the new delta."""
        stats = action_z_stats(out, policy)
        self.adapt_delta(stats["action_z_std"])
        return {**stats, "delta": self.delta}

    def adapt_delta(self, action_z_std: float) -> float:
        """log delta += delta_lr * (action_z_std - 1) (ALGORITHM.md 3.2); a non-finite z std changes nothing.
        Returns the new delta."""
        if math.isfinite(action_z_std):
            self.log_delta += self.config.delta_lr * (float(action_z_std) - 1.0)
        return self.delta

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything a restored model needs to continue: weights, EMA, optimisers, normaliser, delta."""
        return {
            "version": STATE_VERSION,
            "dims": (self.obs_dim, self.act_dim),
            "config": self.config.to_dict(),
            "denoiser": self.denoiser.state_dict(),
            "ema_denoiser": self.ema_denoiser.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "return_model": self.return_model.state_dict() if self.return_model else None,
            "return_optimizer": self.return_optimizer.state_dict() if self.return_optimizer else None,
            "normalizer": self.normalizer.to_dict(),
            "log_delta": self.log_delta,
            "num_updates": self.num_updates,
            "num_rejected_batches": self.num_rejected_batches,
            "train_generator": self._train_generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"world model state version {state.get('version')!r}; this code reads {STATE_VERSION}")
        if tuple(state["dims"]) != (self.obs_dim, self.act_dim):
            raise ValueError(f"world model state dims {tuple(state['dims'])} != ({self.obs_dim}, {self.act_dim})")
        saved = bool(state.get("config", {}).get("weight_channel", False))
        if saved != self.config.weight_channel:
            raise ValueError(f"world model state has weight_channel={saved}, this model weight_channel="
                             f"{self.config.weight_channel}; the self-weighted guide (kind 'swg') needs a model "
                             f"trained with the weight channel, the other guides one without")
        self.denoiser.load_state_dict(state["denoiser"])
        self.ema_denoiser.load_state_dict(state["ema_denoiser"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.return_model is not None and state.get("return_model") is not None:
            self.return_model.load_state_dict(state["return_model"])
            self.return_optimizer.load_state_dict(state["return_optimizer"])
        self.normalizer = NormalizerSnapshot.from_dict(state["normalizer"])
        self.log_delta = float(state["log_delta"])
        self.num_updates = int(state["num_updates"])
        self.num_rejected_batches = int(state["num_rejected_batches"])
        try:
            self._train_generator.set_state(state["train_generator"])
        except RuntimeError:  # saved on another device kind (CUDA vs CPU states differ): reseed deterministically
            self._train_generator.manual_seed(int(state["num_updates"]) + 1)

    def metrics(self) -> dict:
        return {
            "world_model/num_updates": self.num_updates,
            "world_model/num_rejected_batches": self.num_rejected_batches,
            "world_model/delta": self.delta,
            "world_model/normalizer_version": self.normalizer.version,
        }
