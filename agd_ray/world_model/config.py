"""Configuration of the world model and of guidance: frozen dataclasses that validate themselves.

Every field has a docstring-style comment; the defaults are ALGORITHM.md's. A bad value raises a ValueError
that names the field, the value and what is allowed, at construction time (before any actor starts).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

GUIDE_KINDS = ("none", "sag", "eag", "reward", "swg")
SWG_WEIGHTS = ("sigmoid", "exp")
GUIDE_METHODS = ("resample", "gradient")
MAX_CANDIDATES = 256
ADVANTAGE_MODES = ("td1", "gae")
SCALE_MODES = ("classifier", "reference")
GRAD_WRT = ("x0", "xt")
AMP_MODES = ("none", "bf16", "fp16")
POLICY_GUIDANCE = ("score", "reparam", "causal")
ACTION_INPUTS = ("scaled", "clean")


def check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")


def check_field(name: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed; {name} must be {allowed}")


class _Config:
    """Shared helpers: dict round trip with unknown keys refused by name."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; allowed: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes):
        return replace(self, **changes)


@dataclass(frozen=True)
class WorldModelConfig(_Config):
    """The trajectory diffusion world model (ALGORITHM.md sections 1-2) and its sampler (section 3)."""

    horizon: int = 10  # H, steps per imagined window (>= 2)
    hidden_dim: int = 1024  # width of the residual MLP (paper: 1024)
    num_layers: int = 6  # residual blocks (paper: 6)
    diffusion_steps: int = 128  # N, steps of the forward process
    sampling_steps: int | None = None  # K <= N reverse steps (strided when K < N); None: K = N
    # DDIM's eta, in [0, 1]: 1 is the DDPM posterior between kept steps (the strided sampler, bit-identical),
    # 0 is deterministic DDIM (schedule.ddim_coefficients). With the "score" rule it scales the actions' noise too.
    sampler_eta: float = 1.0
    tau: float = 1.0  # exponent of the cosine schedule (reference on Hopper: 0.1)
    fourier_features: int = 16  # random Fourier features of the timestep embedding
    lr: float = 3e-4  # Adam learning rate
    batch_size: int = 256  # windows per training update
    grad_clip: float = 1.0  # max global grad norm (0 disables)
    ema_decay: float = 0.99  # EMA of the weights used for imagination
    ema_every: int = 10  # EMA update period in updates
    ema_start: int = 2000  # before this many updates the EMA copies the weights
    amp: str = "bf16"  # autocast dtype on CUDA: none|bf16|fp16 (ignored on CPU)
    clip_state_change: float = 0.25  # bound on |mu_t - x_t| of the states per diffusion step (normalised units)
    clip_last_steps: int = 10  # ... in the reverse steps at t <= this (sampler.state_change_bound)
    action_clamp_sigmas: float = 3.0  # PolyGRAD: actions clamped to mu +- this many sigma
    action_bound: float | None = None  # executed-action box (policy space): the denoiser sees actions clipped to it
    # Policy guidance on actions: "score" (PolyGRAD, ALGORITHM.md 3.2: a gradient step of size delta on
    # log pi plus the posterior noise), "reparam" (ours: a = mu(s_hat) + sigma(s_hat) eps with one eps ~ N(0, I)
    # per window drawn once, so the actions follow the predicted states and end exactly on-policy) or "causal"
    # (ours: the window is built one transition at a time, H - 1 reverse processes; see sampler.sample_windows).
    policy_guidance: str = "score"
    # With "causal": the reverse processes after the first start from the previous process's window, noised to
    # the level of the last `causal_warm_steps` of the K reverse steps, and run only those (ours; the committed
    # prefix inpainted as always): K + (H - 2) * M denoiser calls per window instead of (H - 1) * K. 0: every
    # process runs all K steps from pure noise (PolyGRAD's start). Measured (RESULTS.md, "The causal sampler with
    # fewer denoiser calls"): HalfCheetah's open-loop error unchanged at M = 4 of K = 16, InvertedPendulum's
    # 1.3-1.4x at every M < K, so it is off by default.
    causal_warm_steps: int = 0
    # What the denoiser is given of the actions: "scaled" (PolyGRAD, ALGORITHM.md 2: sqrt(alpha_bar_t) * a, so
    # the actions fade out as the noise grows) or "clean" (ours: a at every t, so the coarse steps, which settle
    # the trajectory's shape, see the actions too; pair it with "reparam" or "causal", whose actions are policy
    # samples at every step, not the score rule's noisy iterate).
    action_input: str = "scaled"
    delta_init: float = 0.005  # initial policy-guidance step size ("score")
    delta_lr: float = 3e-3  # learning rate of log(delta) in the adaptive step
    return_model_hidden: int = 256  # width of the reward guide's return model J (0: not trained)
    return_gamma: float = 0.99  # discount of the return J predicts
    # Self-weighted guidance (ALGORITHM.md 6): x = [s, r, d, W] with a window-level weight W >= 0 repeated over
    # the H steps (D_s + 3 channels); `update` then needs `weights` [B] (or per-step [B, H]) in every batch.
    weight_channel: bool = False

    def __post_init__(self) -> None:
        if self.sampling_steps is None:
            object.__setattr__(self, "sampling_steps", self.diffusion_steps)
        check_field("horizon", self.horizon, isinstance(self.horizon, int) and self.horizon >= 2, "an integer >= 2")
        for name in ("hidden_dim", "num_layers", "diffusion_steps", "batch_size", "ema_every", "fourier_features"):
            value = getattr(self, name)
            check_field(name, value, isinstance(value, int) and value >= 1, "an integer >= 1")
        check_field(
            "sampling_steps",
            self.sampling_steps,
            isinstance(self.sampling_steps, int) and 1 <= self.sampling_steps <= self.diffusion_steps,
            f"an integer in [1, diffusion_steps={self.diffusion_steps}]",
        )
        check_field("causal_warm_steps", self.causal_warm_steps,
                    isinstance(self.causal_warm_steps, int) and 0 <= self.causal_warm_steps <= self.sampling_steps,
                    f"an integer in [0, sampling_steps={self.sampling_steps}]")
        check_field("sampler_eta", self.sampler_eta, math.isfinite(self.sampler_eta) and 0 <= self.sampler_eta <= 1,
                    "finite and in [0, 1]")
        check_field("tau", self.tau, self.tau > 0, "> 0")
        check_field("lr", self.lr, self.lr > 0, "> 0")
        check_field("ema_decay", self.ema_decay, 0 <= self.ema_decay < 1, "in [0, 1)")
        check_field("ema_start", self.ema_start, self.ema_start >= 0, ">= 0")
        check_field("grad_clip", self.grad_clip, self.grad_clip >= 0, ">= 0")
        check_choice("amp", self.amp, AMP_MODES)
        check_field("clip_state_change", self.clip_state_change, self.clip_state_change > 0, "> 0")
        check_field("clip_last_steps", self.clip_last_steps, self.clip_last_steps >= 0, ">= 0")
        check_field("action_clamp_sigmas", self.action_clamp_sigmas, self.action_clamp_sigmas > 0, "> 0")
        check_field("action_bound", self.action_bound, self.action_bound is None or self.action_bound > 0,
                    "None or > 0")
        check_choice("policy_guidance", self.policy_guidance, POLICY_GUIDANCE)
        check_choice("action_input", self.action_input, ACTION_INPUTS)
        check_field("delta_init", self.delta_init, self.delta_init > 0, "> 0")
        check_field("delta_lr", self.delta_lr, self.delta_lr >= 0, ">= 0")
        check_field("return_model_hidden", self.return_model_hidden, self.return_model_hidden >= 0, ">= 0")
        check_field("return_gamma", self.return_gamma, 0 <= self.return_gamma <= 1, "in [0, 1]")
        check_field("weight_channel", self.weight_channel, isinstance(self.weight_channel, bool), "True or False")


@dataclass(frozen=True)
class GuideConfig(_Config):
    """How imagined windows are guided (ALGORITHM.md section 3, steps 3-4, and section 6).

    kind: none (PolyGRAD: policy guidance on actions only), sag / eag (advantage guidance), reward (Diffuser-style
    return guidance, the baseline), swg (self-weighted guidance, ALGORITHM.md 6: the model diffuses a weight channel
    W = w(A / beta) computed at training time and the reverse process follows grad log of its prediction; needs
    WorldModelConfig.weight_channel, ignores `method` and `candidates`). For sag / eag, `method` says how the
    weight w(A / beta) acts: "resample" (default) imagines `candidates` unguided windows per start state and keeps
    one drawn in proportion to its weight (exact reweighting, dynamics untouched); "gradient" moves the states
    along grad log w in the reverse process (the AGD paper's guide). `GuideConfig.reference(...)` reproduces the
    published reference code.
    """

    kind: str = "none"  # none|sag|eag|reward|swg
    temperature: float = 1.0  # beta > 0; math.inf switches the advantage guide off exactly
    method: str = "resample"  # sag/eag: resample (K candidates, one kept by weight; ours) or gradient (the paper's)
    candidates: int = 4  # K, unguided candidate windows per start state (method resample); 1 is PolyGRAD exactly
    # resample: clip the (normalised) advantage to [-c, c] before the weight, bounding any two windows' weight ratio
    # (None: no clip). Without it a window with an imagined fall is almost never kept (docs/RESULTS.md).
    advantage_clip: float | None = None
    scale: float = 0.1  # c >= 0; 0 switches the guide off exactly (x0 classifier steps diverge past ~0.3, RESULTS.md)
    scale_mode: str = "classifier"  # classifier: mu += c*var*g (ours); reference: x0 += c*var**2*g
    advantage: str = "gae"  # td1 (reference) or gae (ours)
    gamma: float = 0.99  # discount of the advantage
    lam: float = 0.9  # GAE lambda (advantage="gae")
    normalize_advantage: bool = True  # divide A by its detached batch std (ours)
    guide_rewards: bool = True  # gradient flows through the rewards (ours; the reference detaches them)
    guide_last_state: bool = True  # the last state is guided (ours; the reference zeroes it)
    grad_wrt: str = "x0"  # x0: gradient w.r.t. x0_hat (reference); xt: through the denoiser (ours, optional)
    reward_guide_steps: int = 2  # reward guide: gradient steps per reverse step (Diffuser: 2)
    reward_t_stop: int = 2  # reward guide: no guidance in this many final reverse steps (Diffuser: 2)
    # swg: the form of the trained weight W = w(A / beta): sigmoid (SAG's) or exp (EAG's). swg's temperature acts
    # when the weights are computed for training; its scale c multiplies the sampling step (c = 1: exact tilt).
    swg_weight: str = "sigmoid"

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, GUIDE_KINDS)
        check_field("temperature", self.temperature,
                    isinstance(self.temperature, (int, float)) and self.temperature > 0, "> 0 (inf: no guidance)")
        check_field("scale", self.scale, self.scale >= 0 and math.isfinite(self.scale), "finite and >= 0")
        check_choice("method", self.method, GUIDE_METHODS)
        check_field("advantage_clip", self.advantage_clip,
                    self.advantage_clip is None or (isinstance(self.advantage_clip, (int, float))
                                                    and 0 < self.advantage_clip < math.inf), "None or finite and > 0")
        check_field("candidates", self.candidates,
                    isinstance(self.candidates, int) and not isinstance(self.candidates, bool)
                    and 1 <= self.candidates <= MAX_CANDIDATES, f"an integer in [1, {MAX_CANDIDATES}]")
        check_choice("scale_mode", self.scale_mode, SCALE_MODES)
        check_choice("advantage", self.advantage, ADVANTAGE_MODES)
        check_choice("grad_wrt", self.grad_wrt, GRAD_WRT)
        check_field("gamma", self.gamma, 0 <= self.gamma <= 1, "in [0, 1]")
        check_field("lam", self.lam, 0 <= self.lam <= 1, "in [0, 1]")
        check_field("reward_guide_steps", self.reward_guide_steps, self.reward_guide_steps >= 1, ">= 1")
        check_field("reward_t_stop", self.reward_t_stop, self.reward_t_stop >= 0, ">= 0")
        check_choice("swg_weight", self.swg_weight, SWG_WEIGHTS)

    @property
    def resampling(self) -> bool:
        """True when this guide acts by advantage-weighted resampling (sag / eag with method "resample")."""
        return self.kind in ("sag", "eag") and self.method == "resample"

    @property
    def enabled(self) -> bool:
        """False when the guide can have no effect: kind none, scale 0, or infinite temperature."""
        if self.kind == "none" or self.scale == 0:
            return False
        return self.kind == "reward" or math.isfinite(self.temperature)

    @classmethod
    def reference(cls, kind: str = "sag", temperature: float = 1.0) -> "GuideConfig":
        """The published reference code's advantage guide (ALGORITHM.md section 3, step 3)."""
        return cls(
            kind=kind,
            temperature=temperature,
            method="gradient",
            advantage="td1",
            guide_rewards=False,
            guide_last_state=False,
            normalize_advantage=False,
            scale_mode="reference",
            scale=4.0,
        )
