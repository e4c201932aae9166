"""Sampler: disabled guides are bit-identical to none, s[0] is inpainted exactly, strided K = N is the full chain."""

import math

import numpy as np
import pytest
import torch

from agd_ray.world_model import GuideConfig, WorldModel, WorldModelConfig
from agd_ray.world_model.config import GuideConfig as _GC
from agd_ray.world_model.guidance import AdvantageGuide, GuideInputs, NoGuide
from agd_ray.world_model.normalizer import NormalizerSnapshot
from agd_ray.world_model.sampler import SamplerSettings, sample_windows
from agd_ray.world_model.schedule import DiffusionSchedule, ReverseStep, posterior_coefficients

DS, DA, H, B = 4, 2, 5, 16


def policy(s):
    return torch.tanh(s[..., :DA]), torch.full(s.shape[:-1] + (DA,), 0.4)


def critic(s):
    return -(s**2).sum(-1)


@pytest.fixture(scope="module")
def model():
    cfg = WorldModelConfig(horizon=H, hidden_dim=64, num_layers=2, diffusion_steps=20, sampling_steps=20, ema_start=0)
    wm = WorldModel(DS, DA, cfg, seed=0)
    g = torch.Generator().manual_seed(1)
    batch = {
        "observations": torch.randn(64, H, DS, generator=g) * 2 + 1,
        "actions": torch.randn(64, H, DA, generator=g),
        "rewards": torch.randn(64, H, generator=g),
        "terminals": (torch.rand(64, H, generator=g) > 0.9).float(),
    }
    wm.fit_normalizer(batch)
    for _ in range(3):
        wm.update(batch)
    return wm


def _start(seed=2):
    return torch.randn(B, DS, generator=torch.Generator().manual_seed(seed)) * 2 + 1


def _imagine(wm, guide, seed=0):
    return wm.imagine(_start(), policy=policy, critic=critic, guide=guide,
                      generator=torch.Generator().manual_seed(seed))


def test_shapes_dtypes_and_exact_start_states(model):
    out = _imagine(model, GuideConfig(kind="sag", method="gradient"))
    assert out["observations"].shape == (B, H, DS) and out["observations"].dtype == torch.float32
    assert out["actions"].shape == (B, H, DA) and out["actions"].dtype == torch.float32
    assert out["rewards"].shape == (B, H) and out["terminals"].shape == (B, H)
    assert out["terminals"].dtype == torch.bool
    assert out["normalizer_version"] == model.normalizer.version
    assert torch.equal(out["observations"][:, 0], _start())  # bit for bit


@pytest.mark.parametrize(
    "disabled",
    [
        GuideConfig(kind="sag", method="gradient", scale=0.0),
        GuideConfig(kind="eag", method="gradient", temperature=math.inf),
        GuideConfig(kind="reward", scale=0.0),
        GuideConfig.reference("eag").replace(scale=0.0),
        GuideConfig(kind="sag", method="resample", candidates=1),
        GuideConfig(kind="eag", method="resample", candidates=1, temperature=0.1),
        GuideConfig(kind="eag", method="resample", candidates=8, temperature=math.inf),
        GuideConfig(kind="sag", method="resample", candidates=8, scale=0.0),
    ],
)
def test_disabled_guide_is_bit_identical_to_no_guide(model, disabled):
    base = _imagine(model, GuideConfig(kind="none"))
    out = _imagine(model, disabled)
    for key in ("observations", "actions", "rewards", "terminals"):
        assert torch.equal(out[key], base[key]), key


@pytest.mark.parametrize("mode", ["classifier", "reference"])
def test_a_live_guide_object_with_zero_scale_adds_exactly_nothing(model, mode):
    """Bypass the factory: the guide object itself computes a zero shift, and the output is unchanged."""
    norm = model.normalizer
    settings = SamplerSettings(0.25, 10, 3.0)
    common = dict(act_dim=DA, policy=policy, critic=critic, normalizer=norm, delta=0.01, settings=settings)
    start = norm.normalize("observations", _start())
    steps = model.schedule.reverse_steps(20)
    x_ref, a_ref = sample_windows(model.ema_denoiser, steps, start, guide=NoGuide(),
                                  generator=torch.Generator().manual_seed(0), **common)
    live = AdvantageGuide(_GC(kind="sag", method="gradient", scale=0.0, scale_mode=mode), DS)
    x, a = sample_windows(model.ema_denoiser, steps, start, guide=live, generator=torch.Generator().manual_seed(0),
                          **common)
    assert torch.equal(x, x_ref) and torch.equal(a, a_ref)


def test_guide_changes_samples_and_huge_temperature_converges_to_none(model):
    base = _imagine(model, GuideConfig(kind="none"))
    strong = _imagine(model, GuideConfig(kind="eag", method="gradient", temperature=0.1))
    weak = _imagine(model, GuideConfig(kind="eag", method="gradient", temperature=1e6))
    assert not torch.allclose(strong["observations"], base["observations"])
    torch.testing.assert_close(weak["observations"], base["observations"], rtol=0, atol=1e-4)


def test_same_generator_same_output_and_imagine_changes_no_state(model):
    delta, version = model.delta, model.normalizer.version
    a = _imagine(model, GuideConfig(kind="sag", method="gradient"), seed=7)
    b = _imagine(model, GuideConfig(kind="sag", method="gradient"), seed=7)
    c = _imagine(model, GuideConfig(kind="sag", method="gradient"), seed=8)
    assert torch.equal(a["observations"], b["observations"]) and torch.equal(a["actions"], b["actions"])
    assert not torch.equal(a["observations"], c["observations"])
    assert model.delta == delta and model.normalizer.version == version


def test_strided_with_k_equal_n_equals_the_full_sampler(model):
    """The full chain (DDPM per-step betas) and the same chain through the strided posterior formula agree."""
    sched = model.schedule
    full = sched.reverse_steps(20)
    ab = sched.alpha_bar
    strided = []
    for st in full:
        c1, c2, var = posterior_coefficients(ab[st.t], ab[st.s])
        strided.append(ReverseStep(st.t, st.s, st.sqrt_alpha_bar_t, float(c1), float(c2), float(var)))
    norm = model.normalizer
    common = dict(act_dim=DA, policy=policy, critic=critic, normalizer=norm, delta=0.01,
                  settings=SamplerSettings(0.25, 10, 3.0), guide=AdvantageGuide(_GC(kind="sag", method="gradient"), DS))
    start = norm.normalize("observations", _start())
    x_full, a_full = sample_windows(model.ema_denoiser, full, start, generator=torch.Generator().manual_seed(0),
                                    **common)
    x_str, a_str = sample_windows(model.ema_denoiser, strided, start, generator=torch.Generator().manual_seed(0),
                                  **common)
    torch.testing.assert_close(x_str, x_full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a_str, a_full, rtol=1e-5, atol=1e-5)


def test_strided_sampler_runs_k_denoiser_calls(model):
    cfg = model.config.replace(sampling_steps=5)
    wm = WorldModel(DS, DA, cfg, seed=0)
    wm.load_state_dict(model.state_dict() | {"config": cfg.to_dict()})
    calls = []
    wm.ema_denoiser.register_forward_hook(lambda *_: calls.append(1))
    wm.imagine(_start(), policy=policy, critic=critic, guide=GuideConfig(kind="none"))
    assert len(calls) == 5


@pytest.mark.parametrize("grad_wrt", ["x0", "xt"])
def test_all_guide_kinds_and_modes_produce_finite_windows(model, grad_wrt):
    for guide in (GuideConfig(kind="sag", method="gradient", grad_wrt=grad_wrt),
                  GuideConfig(kind="eag", method="gradient", grad_wrt=grad_wrt), GuideConfig(kind="reward"),
                  GuideConfig.reference("sag").replace(grad_wrt=grad_wrt)):
        out = _imagine(model, guide)
        assert all(torch.isfinite(out[k]).all() for k in ("observations", "actions", "rewards")), guide


def test_bad_imagine_input(model):
    with pytest.raises(ValueError, match=r"start_obs has shape \(3, 7\)"):
        model.imagine(torch.zeros(3, 7), policy=policy, critic=critic)
    with pytest.raises(ValueError, match="NaN"):
        model.imagine(torch.full((3, DS), float("nan")), policy=policy, critic=critic)
    with pytest.raises(ValueError, match="needs a critic"):
        model.imagine(torch.zeros(3, DS), policy=policy, guide=GuideConfig(kind="sag", method="gradient"))
    with pytest.raises(ValueError, match="GuideConfig"):
        model.imagine(torch.zeros(3, DS), policy=policy, critic=critic, guide="sag")


def test_numpy_start_states_are_accepted(model):
    out = model.imagine(_start().numpy(), policy=policy, critic=critic, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(out["observations"][:, 0].numpy(), _start().numpy())


@pytest.mark.parametrize("delta", [1e-4, 0.5, 1e3])
def test_imagined_actions_stay_within_k_sigma_of_the_policy_at_the_returned_states(model, delta):
    """A near-deterministic policy and any delta: every returned pair is within 3 sigma (no divergence)."""
    sharp = lambda s: (torch.tanh(s[..., :DA]), torch.full(s.shape[:-1] + (DA,), 0.01))  # noqa: E731
    wm = WorldModel(DS, DA, model.config, seed=0)
    wm.load_state_dict(model.state_dict() | {"log_delta": math.log(delta)})
    out = wm.imagine(_start(), policy=sharp, critic=critic,
                     guide=GuideConfig(kind="eag", method="gradient", temperature=0.3),
                     generator=torch.Generator().manual_seed(0))
    mean, std = sharp(out["observations"])
    z = (out["actions"] - mean) / std
    assert torch.isfinite(z).all() and z.abs().max() <= 3.0 + 1e-3


def test_policy_step_never_overshoots_the_mean():
    from agd_ray.world_model.guidance import policy_score_step

    a = torch.tensor([[[0.3]]])
    mean, std = torch.zeros_like(a), torch.full_like(a, 0.1)
    # delta / sigma^2 = 100: an uncapped step would land at 0.3 - 100 * 0.3; capped, it lands on the mean.
    assert policy_score_step(a, mean, std, 1.0, 3.0).item() == 0.0
    torch.testing.assert_close(policy_score_step(a, mean, std, 0.005, 3.0), a - 0.5 * a)


def test_denoiser_sees_actions_clipped_to_the_executed_box(model):
    """action_bound: the denoiser is conditioned on actions clipped to the box the env executes (in the
    policy's space), while the returned actions are the policy's own; a box no action reaches changes nothing."""
    seen = []
    original = model.ema_denoiser.forward

    def recording(x, scaled_actions, t):
        seen.append((scaled_actions.detach().clone(), t.detach().clone()))
        return original(x, scaled_actions, t)

    base = model.config
    try:
        model.ema_denoiser.forward = recording
        free = _imagine(model, GuideConfig(kind="none"))
        model.config = base.replace(action_bound=1e6)
        wide = _imagine(model, GuideConfig(kind="none"))
        seen.clear()
        model.config = base.replace(action_bound=0.05)
        tight = _imagine(model, GuideConfig(kind="none"))
    finally:
        model.config = base
        del model.ema_denoiser.forward
    for key in free:
        if torch.is_tensor(free[key]):
            assert torch.equal(free[key], wide[key]), key
    alpha_bar = {s.t: s.sqrt_alpha_bar_t for s in model._reverse_steps}
    for scaled, t in seen:
        actions = model.normalizer.unnormalize("actions", scaled / alpha_bar[int(t[0])])
        assert actions.abs().max() <= 0.05 + 1e-5
    assert tight["actions"].abs().max() > 0.05  # the returned actions are not clipped


def _reparam_model(model, **changes):
    cfg = model.config.replace(**{"policy_guidance": "reparam", **changes})
    wm = WorldModel(DS, DA, cfg, seed=0)
    wm.load_state_dict(model.state_dict() | {"config": cfg.to_dict()})
    return wm


@pytest.mark.parametrize("guide", [GuideConfig(kind="none"),
                                   GuideConfig(kind="sag", method="gradient", temperature=0.3)])
def test_reparam_actions_are_exact_policy_samples_at_the_returned_states(model, guide):
    """policy_guidance="reparam": a = mu(s) + sigma(s) eps at the states returned, with eps ~ N(0, I) drawn once
    per window (so z is standard normal: a statistical check over many pairs), for any delta."""
    wm = _reparam_model(model)
    start = torch.randn(512, DS, generator=torch.Generator().manual_seed(3)) * 2 + 1
    outs = []
    for log_delta in (math.log(1e-4), math.log(10.0)):
        wm.log_delta = log_delta
        outs.append(wm.imagine(start, policy=policy, critic=critic, guide=guide,
                               generator=torch.Generator().manual_seed(0)))
    for key in ("observations", "actions"):  # delta plays no part
        assert torch.equal(outs[0][key], outs[1][key]), key
    out = outs[0]
    mean, std = policy(out["observations"])
    z = ((out["actions"] - mean) / std).reshape(-1)
    n = z.numel()
    assert abs(z.mean().item()) < 4 / math.sqrt(n) and abs(z.std().item() - 1) < 4 / math.sqrt(2 * n)
    # the score rule on the same model is far from on-policy at these states (the claim reparam fixes)
    score = model.imagine(start, policy=policy, critic=critic, guide=guide, generator=torch.Generator().manual_seed(0))
    mean, std = policy(score["observations"])
    assert ((score["actions"] - mean) / std).std().item() > 1.2


def test_reparam_actions_follow_the_predicted_states_without_noise(model):
    """Inside the loop the denoiser sees a = mu(s_hat) + sigma(s_hat) eps of the previous step's predicted
    states, with the same eps at every step: with a constant-sigma policy, (a - mu(s_hat)) / sigma is the same
    tensor at every step after the first."""
    wm = _reparam_model(model)
    seen, predicted = [], []
    original = wm.ema_denoiser.forward

    def recording(x, scaled_actions, t):
        seen.append((scaled_actions.detach().clone(), int(t[0])))
        out = original(x, scaled_actions, t)
        predicted.append(out.detach().clone())
        return out

    wm.ema_denoiser.forward = recording
    wm.imagine(_start(), policy=policy, critic=critic, guide=GuideConfig(kind="none"),
               generator=torch.Generator().manual_seed(0))
    alpha_bar = {s.t: s.sqrt_alpha_bar_t for s in wm._reverse_steps}
    norm = wm.normalizer
    eps = []
    for (scaled, t), prev in zip(seen[1:], predicted[:-1]):
        actions = norm.unnormalize("actions", scaled / alpha_bar[t])
        states = norm.unnormalize("observations", prev[..., :DS])
        states[:, 0] = _start()  # s[0] is inpainted
        mean, std = policy(states)
        eps.append((actions - mean) / std)
    for e in eps[1:]:
        torch.testing.assert_close(e, eps[0], rtol=0, atol=1e-4)


def test_policy_guidance_is_checked():
    with pytest.raises(ValueError, match="policy_guidance='sample'.*'score', 'reparam'"):
        WorldModelConfig(policy_guidance="sample")


@pytest.mark.parametrize("warm", [0, 3, 1])
def test_causal_windows_commit_one_transition_per_reverse_process(model, warm):
    """policy_guidance="causal": H - 1 reverse processes, the first of K steps and the others of K steps (warm = 0)
    or of the last `warm` of them, started from the previous window; while the h-th runs, the returned s[0..h],
    r/d[0..h-1] and a[0..h] are already what it is fed (inpainted, never changed later), and every returned action
    is the policy's sample at the state it is paired with (z standard normal, a statistical check)."""
    wm = _reparam_model(model, policy_guidance="causal", causal_warm_steps=warm)
    seen = []
    original = wm.ema_denoiser.forward

    def recording(x, scaled_actions, t):
        seen.append((x.detach().clone(), scaled_actions.detach().clone(), int(t[0])))
        return original(x, scaled_actions, t)

    wm.ema_denoiser.forward = recording
    start = torch.randn(256, DS, generator=torch.Generator().manual_seed(4)) * 2 + 1
    out = wm.imagine(start, policy=policy, critic=critic,
                     guide=GuideConfig(kind="sag", method="gradient", temperature=0.3),
                     generator=torch.Generator().manual_seed(0))
    del wm.ema_denoiser.forward
    k = len(wm._reverse_steps)
    later = warm or k  # denoiser calls of each process after the first
    assert len(seen) == k + (H - 2) * later
    timesteps = [t for _, _, t in seen]
    every_t = [s.t for s in wm._reverse_steps]
    assert timesteps == every_t + every_t[k - later:] * (H - 2)  # the schedule's last `later` steps, in order
    norm = wm.normalizer
    states = norm.normalize("observations", out["observations"])
    actions = norm.normalize("actions", out["actions"])
    rewards = norm.normalize("rewards", out["rewards"])
    alpha_bar = {s.t: s.sqrt_alpha_bar_t for s in wm._reverse_steps}
    for i, (x, scaled, t) in enumerate(seen):
        h = 0 if i < k else 1 + (i - k) // later
        torch.testing.assert_close(x[:, : h + 1, :DS], states[:, : h + 1], rtol=0, atol=1e-5)
        torch.testing.assert_close(x[:, :h, DS], rewards[:, :h], rtol=0, atol=1e-5)
        torch.testing.assert_close(scaled[:, : h + 1] / alpha_bar[t], actions[:, : h + 1], rtol=0, atol=1e-4)
    mean, std = policy(out["observations"])
    z = ((out["actions"] - mean) / std).reshape(-1)
    n = z.numel()
    assert abs(z.mean().item()) < 4 / math.sqrt(n) and abs(z.std().item() - 1) < 4 / math.sqrt(2 * n)
    again = wm.imagine(start, policy=policy, critic=critic,
                       guide=GuideConfig(kind="sag", method="gradient", temperature=0.3),
                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["observations"], out["observations"]) and torch.equal(again["actions"], out["actions"])


def test_state_change_bound_is_polygrads_clip_at_k_equal_n_and_keeps_its_stretch_when_strided():
    """K = N: +-0.25 at t = 10..1 (PolyGRAD's last ten steps), none above. Strided: the steps with t <= 10,
    each bound scaled by the diffusion steps it spans, so the total allowed change over the clipped stretch is
    0.25 * (the largest clipped t) whatever K is (a conserved sum)."""
    from agd_ray.world_model.sampler import state_change_bound
    from agd_ray.world_model.schedule import DiffusionSchedule

    settings = SamplerSettings(0.25, 10, 3.0)
    full = DiffusionSchedule(64).reverse_steps(64)
    bounds = [state_change_bound(step, settings) for step in full]
    assert bounds[:-10] == [None] * 54 and bounds[-10:] == [0.25] * 10
    for k in (16, 7, 33):
        steps = DiffusionSchedule(64).reverse_steps(k)
        clipped = [(step, state_change_bound(step, settings)) for step in steps]
        clipped = [(step, b) for step, b in clipped if b is not None]
        assert all(step.t <= 10 for step, _ in clipped)
        assert all(step.t > 10 for step in steps[:len(steps) - len(clipped)])  # the clipped steps are the last ones
        assert sum(b for _, b in clipped) == pytest.approx(0.25 * clipped[0][0].t)
    assert state_change_bound(full[-1], SamplerSettings(0.25, 0, 3.0)) is None  # 0: no clip at all


class _AlwaysFarther(torch.nn.Module):
    """A denoiser whose x0 prediction is always 100 above its input, and that records its inputs."""

    horizon = H

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, x, scaled_actions, timesteps):
        self.inputs.append(x.detach().clone())
        return x + 100.0


def test_the_sampler_bounds_each_state_change_by_the_clip_and_leaves_reward_and_terminal_free(model):
    """Steps with mu = x0_hat and no noise: every unclipped step moves the states by 100, a clipped one by exactly
    its bound (0.25 * (t - s)); rewards and terminals always move by 100; s[0] stays the start state."""
    steps = [ReverseStep(t, s, 1.0, 1.0, 0.0, 0.0) for t, s in ((20, 16), (16, 12), (12, 8), (8, 4), (4, 1), (1, 0))]
    denoiser = _AlwaysFarther()
    norm = model.normalizer
    start = norm.normalize("observations", _start())
    x, _ = sample_windows(denoiser, steps, start, act_dim=DA, policy=policy, critic=critic, normalizer=norm,
                          delta=0.01, settings=SamplerSettings(0.25, 10, 3.0), guide=NoGuide(),
                          generator=torch.Generator().manual_seed(0))
    seen = denoiser.inputs + [x]
    changes = torch.stack([b - a for a, b in zip(seen, seen[1:])])  # [6, B, H, D_s + 2]
    expected = torch.tensor([100.0, 100.0, 100.0, 1.0, 0.75, 0.25])
    torch.testing.assert_close(changes[:, :, 1:, :DS], expected[:, None, None, None].expand(6, B, H - 1, DS))
    torch.testing.assert_close(changes[..., DS:], torch.full((6, B, H, 2), 100.0))
    assert torch.equal(x[:, 0, :DS], start)


def test_action_input_is_checked():
    with pytest.raises(ValueError, match="action_input='noisy'.*'scaled', 'clean'"):
        WorldModelConfig(action_input="noisy")


@pytest.mark.parametrize("action_input", ["scaled", "clean"])
def test_the_denoiser_sees_the_actions_scaled_or_clean_in_training_and_sampling(model, action_input):
    """"scaled": sqrt(alpha_bar_t) * a, "clean": a, at every t, in the training loss and in the reparam sampler
    (whose actions are the policy's mu + sigma eps; sigma tiny here, so they are the policy's mean)."""
    cfg = model.config.replace(action_input=action_input, policy_guidance="reparam")
    wm = WorldModel(DS, DA, cfg, seed=0)
    wm.load_state_dict(model.state_dict() | {"config": cfg.to_dict()})
    seen = []
    for net in (wm.denoiser, wm.ema_denoiser):
        forward = net.forward
        net.forward = lambda x, a, t, forward=forward: seen.append((a.detach().clone(), t.clone())) or forward(x, a, t)

    def scale(t):
        return torch.ones_like(t, dtype=torch.float32) if action_input == "clean" else wm._sqrt_alpha_bar[t]

    g = torch.Generator().manual_seed(3)
    actions = torch.randn(8, H, DA, generator=g)
    x0 = torch.randn(8, H, DS + 2, generator=g)
    t = torch.tensor([1, 5, 10, 20, 2, 7, 13, 19])
    wm.diffusion_loss(x0, actions, t, torch.randn(x0.shape, generator=g))
    [(a, _)] = seen
    torch.testing.assert_close(a, scale(t)[:, None, None] * actions)

    seen.clear()
    fixed = lambda s: (torch.full_like(s[..., :DA], 0.3), torch.full_like(s[..., :DA], 1e-6))  # noqa: E731
    wm.imagine(_start(), policy=fixed, guide=GuideConfig(kind="none"), generator=torch.Generator().manual_seed(0))
    assert len(seen) == cfg.sampling_steps
    target = wm.normalizer.normalize("actions", torch.full((B, H, DA), 0.3))
    for a, t_step in seen:
        torch.testing.assert_close(a, scale(t_step)[:, None, None] * target, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------------- DDIM (eta)
@pytest.mark.parametrize("eta", [-0.1, 1.5, float("nan"), float("inf")])
def test_sampler_eta_is_checked(eta):
    with pytest.raises(ValueError, match=r"sampler_eta=.*finite and in \[0, 1\]"):
        WorldModelConfig(sampler_eta=eta)


class _GaussianPosteriorMean(torch.nn.Module):
    """The exact x0 denoiser for data x0 ~ N(m, s^2) in every entry: E[x0 | x_t] = m + k_t (x_t - sqrt(ab_t) m),
    k_t = sqrt(ab_t) s^2 / (ab_t s^2 + 1 - ab_t)."""

    horizon = H

    def __init__(self, alpha_bar, m, s):
        super().__init__()
        self.alpha_bar, self.m, self.s = torch.as_tensor(alpha_bar, dtype=torch.float32), m, s

    def forward(self, x, scaled_actions, timesteps):
        ab = self.alpha_bar[timesteps][:, None, None]
        k = ab.sqrt() * self.s**2 / (ab * self.s**2 + 1 - ab)
        return self.m + k * (x - ab.sqrt() * self.m)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sampler_output_has_the_closed_form_moments_of_its_steps_on_a_gaussian_toy(eta):
    """With the exact denoiser of a Gaussian, each reverse step is affine in x_t, so the output's mean and variance
    follow in closed form (from x_N ~ N(0, 1)); the sampler's samples match them (a statistical check), and
    deterministic DDIM keeps visibly more of the data's variance than the DDPM posterior at K = 8 of N = 128."""
    m, s = 0.7, 0.3
    sched = DiffusionSchedule(128)
    steps = sched.reverse_steps(8, eta=eta)
    mean, var = 0.0, 1.0
    for st in steps:
        sab = st.sqrt_alpha_bar_t
        k = sab * s**2 / (sab**2 * s**2 + 1 - sab**2)
        slope = st.c1 * k + st.c2
        mean, var = slope * mean + st.c1 * m * (1 - k * sab), slope**2 * var + st.var
    assert var / s**2 == pytest.approx(0.536 if eta == 0.0 else 0.424, abs=1e-3)  # RESULTS.md / test_schedule
    norm = NormalizerSnapshot.identity(DS, DA)
    x, _ = sample_windows(_GaussianPosteriorMean(sched.alpha_bar, m, s), steps, torch.zeros(4000, DS), act_dim=DA,
                          policy=policy, critic=None, guide=NoGuide(), normalizer=norm, delta=0.01,
                          settings=SamplerSettings(0.25, 0, 3.0), generator=torch.Generator().manual_seed(0))
    samples = x[:, 1:].reshape(-1).double()  # every entry but the inpainted row is an independent draw
    n = samples.numel()
    assert abs(samples.mean().item() - mean) < 4 * var**0.5 / n**0.5
    assert abs(samples.var().item() / var - 1) < 4 * (2 / n) ** 0.5


def test_gradient_guides_take_the_same_step_whatever_eta():
    """The classifier step c beta_tilde g uses the DDPM posterior variance (guide_var), so with eta = 0, where the
    sampler's variance is 0, the guide still acts, and by the same shift as with eta = 1."""
    sched = DiffusionSchedule(20)
    x0 = torch.randn(8, H, DS + 2, generator=torch.Generator().manual_seed(5))
    norm = NormalizerSnapshot.identity(DS, DA)
    guide = AdvantageGuide(_GC(kind="sag", temperature=0.5), DS)
    shifts = []
    for eta in (1.0, 0.0):
        step = sched.reverse_steps(20, eta=eta)[3]
        inputs = GuideInputs(step=step, steps_left=16, x_t=x0.clone(), x0_hat=x0, scaled_actions=torch.zeros(8, H, DA),
                             timesteps=torch.full((8,), step.t), normalizer=norm, critic=critic)
        shifts.append(guide.shift(inputs).mean)
    assert shifts[1].abs().max() > 0 and torch.equal(shifts[0], shifts[1])


@pytest.mark.parametrize("policy_guidance", ["score", "reparam", "causal"])
def test_ddim_windows_with_every_action_rule_and_a_guide(model, policy_guidance):
    """eta = 0 with each action rule and the advantage guide: finite windows, exact start states, repeatable with
    the same generator, different from eta = 1, and the guide still moves them; sampler_eta=1 is the default."""
    wms = {}
    for eta in (0.0, 1.0):
        cfg = model.config.replace(sampler_eta=eta, policy_guidance=policy_guidance)
        wms[eta] = WorldModel(DS, DA, cfg, seed=0)
        wms[eta].load_state_dict(model.state_dict() | {"config": cfg.to_dict()})
    assert all(st.var == 0.0 for st in wms[0.0]._reverse_steps)
    assert wms[1.0]._reverse_steps == model._reverse_steps
    norm = model.normalizer
    start = norm.normalize("observations", _start())
    settings = SamplerSettings(0.25, 10, 3.0, policy_guidance=policy_guidance)
    common = dict(act_dim=DA, policy=policy, critic=critic, normalizer=norm, delta=0.01, settings=settings)

    def run(eta, guide, seed=0):
        return sample_windows(model.ema_denoiser, wms[eta]._reverse_steps, start, guide=guide,
                              generator=torch.Generator().manual_seed(seed), **common)

    sag = AdvantageGuide(_GC(kind="sag", temperature=0.3), DS)
    x, a = run(0.0, sag)
    assert torch.isfinite(x).all() and torch.isfinite(a).all() and torch.equal(x[:, 0, :DS], start)
    again, _ = run(0.0, sag)
    assert torch.equal(x, again)
    assert not torch.allclose(x, run(1.0, sag)[0])
    assert not torch.allclose(x, run(0.0, NoGuide())[0])


@pytest.mark.parametrize("rule", ["score", "reparam", "causal"])
def test_a_rule_passed_per_call_equals_the_model_configured_with_it(model, rule):
    """The action rule is a strategy the sampler is given: `imagine(policy_guidance=...)` on a model configured
    with another rule gives, bit for bit, what a model configured with that rule gives, and leaves the config."""
    other = "causal" if rule == "score" else "score"
    base = model.config
    try:
        model.config = base.replace(policy_guidance=rule)
        configured = _imagine(model, GuideConfig(kind="sag", method="gradient"))
        model.config = base.replace(policy_guidance=other)
        passed = model.imagine(_start(), policy=policy, critic=critic, guide=GuideConfig(kind="sag", method="gradient"),
                               generator=torch.Generator().manual_seed(0), policy_guidance=rule)
        assert model.config.policy_guidance == other
    finally:
        model.config = base
    for key in ("observations", "actions", "rewards", "terminals"):
        assert torch.equal(configured[key], passed[key]), key


def test_an_unknown_rule_per_call_is_refused_by_name(model):
    with pytest.raises(ValueError, match=r"policy_guidance='joint'; allowed: score, reparam, causal"):
        model.imagine(_start(), policy=policy, policy_guidance="joint")


@pytest.mark.parametrize("warm", [-1, 21, 2.5])
def test_causal_warm_steps_are_checked(warm):
    with pytest.raises(ValueError, match="causal_warm_steps"):
        WorldModelConfig(horizon=H, diffusion_steps=20, sampling_steps=20, causal_warm_steps=warm)
