"""Advantage-weighted resampling (ALGORITHM.md 6) against closed forms and conditional expectations, and the
guidance-effect measures that report it (ALGORITHM.md 7)."""

import math

import numpy as np
import pytest
import torch

from agd_ray.world_model import GuideConfig, WorldModel, WorldModelConfig
from agd_ray.world_model.diagnostics import advantage_gain, gain_from_sums, gain_in_sigma, resampling_gain_sums
from agd_ray.world_model.guidance import (
    resample_indices,
    resample_log_weights,
    window_advantages,
    within_start_spread,
)

DS, DA, H = 3, 2, 4


def _policy(s):
    return torch.tanh(s[..., :DA]), torch.full(s.shape[:-1] + (DA,), 0.4)


def _critic(s):
    return s.sum(-1)


@pytest.fixture(scope="module")
def model():
    """A small model fitted briefly to random windows: what it imagines varies with the noise."""
    wm = WorldModel(DS, DA, WorldModelConfig(horizon=H, hidden_dim=32, num_layers=1, diffusion_steps=8,
                                             batch_size=32, ema_start=0, return_model_hidden=0), seed=0)
    g = torch.Generator().manual_seed(0)
    batch = {"observations": torch.randn(32, H, DS, generator=g), "actions": torch.randn(32, H, DA, generator=g),
             "rewards": torch.randn(32, H, generator=g), "terminals": torch.zeros(32, H)}
    wm.fit_normalizer(batch)
    for _ in range(5):
        wm.update(batch)
    return wm


def _start(n=6):
    return torch.randn(n, DS, generator=torch.Generator().manual_seed(3))


def test_selected_windows_follow_the_weights_given_the_candidates():
    """E[A of the kept window | candidates] = sum_k w_k A_k / sum_k w_k, row by row: over many draws the mean of
    the kept advantages matches it within four standard errors (EAG and SAG, K = 5)."""
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(2000, 5, generator=g, dtype=torch.float64)
    for kind in ("eag", "sag"):
        config = GuideConfig(kind=kind, temperature=0.5, normalize_advantage=False)
        log_w = resample_log_weights(adv, config)
        w = torch.exp(log_w - log_w.max(dim=1, keepdim=True).values)
        p = w / w.sum(dim=1, keepdim=True)  # [S, K]
        want = (p * adv).sum(dim=1)  # [S]: conditional mean of the kept advantage
        var = (p * adv**2).sum(dim=1) - want**2  # [S]: its conditional variance
        draws = torch.stack([adv[torch.arange(2000), resample_indices(log_w, g)] for _ in range(20)])  # [20, S]
        error = (draws.mean() - want.mean()).item()
        stderr = math.sqrt(var.sum().item() / 20) / 2000
        assert abs(error) < 4 * stderr, (kind, error, stderr)


def test_many_candidates_give_the_exponentially_tilted_normal():
    """With A ~ N(0, 1) and EAG's w = exp(A / beta), the tilted distribution p(A) w(A) / Z is N(1 / beta, 1): the
    kept windows' mean and std approach it as K grows (self-normalised importance resampling's bias is O(1/K))."""
    g = torch.Generator().manual_seed(1)
    beta = 1.0
    adv = torch.randn(4000, 256, generator=g, dtype=torch.float64)
    config = GuideConfig(kind="eag", temperature=beta, normalize_advantage=False)
    kept = adv[torch.arange(4000), resample_indices(resample_log_weights(adv, config), g)]
    assert kept.mean().item() == pytest.approx(1.0 / beta, abs=0.06)
    assert kept.std().item() == pytest.approx(1.0, abs=0.06)


def test_sigmoid_weights_tilt_toward_the_closed_form_mean():
    """SAG's w = sigmoid(A / beta) with A ~ N(0, 1): E[A w] / E[w] = E[w'(A)] / E[w] (Stein), E[w] = 1/2 by
    symmetry; computed here by quadrature, and matched by the kept windows with K = 256."""
    beta = 0.5
    grid = np.linspace(-10, 10, 200001)
    density = np.exp(-grid**2 / 2) / math.sqrt(2 * math.pi)
    weight = 1 / (1 + np.exp(-grid / beta))
    want = np.trapezoid(grid * weight * density, grid) / np.trapezoid(weight * density, grid)
    g = torch.Generator().manual_seed(2)
    adv = torch.randn(4000, 256, generator=g, dtype=torch.float64)
    config = GuideConfig(kind="sag", temperature=beta, normalize_advantage=False)
    kept = adv[torch.arange(4000), resample_indices(resample_log_weights(adv, config), g)]
    assert kept.mean().item() == pytest.approx(want, abs=0.05)


def test_equal_weights_select_uniformly():
    """Zero log weights (an infinite temperature's limit): each of K candidates kept equally often (chi-square
    with K - 1 = 3 degrees of freedom below its 0.999 quantile, 16.27)."""
    counts = torch.bincount(resample_indices(torch.zeros(20000, 4), torch.Generator().manual_seed(4)), minlength=4)
    expected = 20000 / 4
    chi2 = (((counts.double() - expected) ** 2) / expected).sum().item()
    assert chi2 < 16.27, counts


def test_normalised_weights_use_the_within_start_spread():
    """Normalised, the weights do not change when every start's advantages are shifted by its own constant or the
    whole batch is scaled: the temperature is in units of what the choice among a start's candidates can gain."""
    g = torch.Generator().manual_seed(5)
    adv = torch.randn(50, 6, generator=g, dtype=torch.float64)
    shifted = 3.0 * adv + 100.0 * torch.randn(50, 1, generator=g, dtype=torch.float64)
    config = GuideConfig(kind="eag", temperature=0.7)
    torch.testing.assert_close(torch.softmax(resample_log_weights(adv, config), 1),
                               torch.softmax(resample_log_weights(shifted, config), 1))
    neighbours = [abs(row[k] - row[k - 1]) for row in adv.tolist() for k in range(len(row))]  # k - 1 wraps at 0
    ordered = sorted(neighbours)
    want = ordered[(len(ordered) - 1) // 2] / (0.6744897501960817 * math.sqrt(2))  # torch's median: the lower one
    assert within_start_spread(adv).item() == pytest.approx(want, rel=1e-12)


def test_within_start_spread_is_the_standard_deviation_for_normal_data_and_ignores_outliers():
    """For N(0, 1) advantages the robust spread is 1 (within sampling error) at small and large K; 3% of windows at
    -100 (a fall that cuts the bootstrap) multiply the standard deviation by ~6 and leave the robust spread within
    10%."""
    g = torch.Generator().manual_seed(7)
    assert within_start_spread(torch.randn(20000, 2, generator=g, dtype=torch.float64)).item() == pytest.approx(
        1.0, abs=0.03)
    adv = torch.randn(4000, 9, generator=g, dtype=torch.float64)
    assert within_start_spread(adv).item() == pytest.approx(1.0, abs=0.03)
    falls = torch.rand(4000, 9, generator=g, dtype=torch.float64) < 0.03
    heavy = torch.where(falls, torch.full_like(adv, -100.0), adv)
    assert heavy.std().item() > 5.0
    assert within_start_spread(heavy).item() == pytest.approx(within_start_spread(adv).item(), rel=0.1)


def test_resampling_keeps_one_of_its_candidates_per_start(model):
    """The kept window of start b is candidate b*K + selected[b], field by field, and the candidate advantages are
    those of the candidate windows under the critic."""
    guide = GuideConfig(kind="eag", temperature=0.5, candidates=4)
    out = model.imagine(_start(), policy=_policy, critic=_critic, guide=guide,
                        generator=torch.Generator().manual_seed(0))
    candidates = out["candidates"]
    assert candidates["observations"].shape == (6 * 4, H, DS)
    rows = torch.arange(6) * 4 + out["selected"]
    for key in ("observations", "actions", "rewards", "terminals"):
        assert torch.equal(out[key], candidates[key][rows]), key
    torch.testing.assert_close(out["candidate_advantages"].reshape(-1),
                               window_advantages(candidates, _critic, guide.gamma))
    assert torch.equal(candidates["observations"][:, 0], _start().repeat_interleave(4, dim=0))


def test_gain_from_shard_sums_equals_the_whole_batch_measure():
    """The per-shard sums combine exactly: the gain of the kept windows against all candidates equals
    gain_in_sigma on the whole batch, whatever the split."""
    g = torch.Generator().manual_seed(6)
    adv = torch.randn(10, 4, generator=g, dtype=torch.float64)
    selected = torch.randint(0, 4, (10,), generator=g)
    whole = gain_in_sigma(adv[torch.arange(10), selected], adv)
    parts = [resampling_gain_sums(adv[a:b], selected[a:b]) for a, b in ((0, 3), (3, 4), (4, 10))]
    summed = gain_from_sums({k: sum(p[k] for p in parts) for k in parts[0]})
    assert summed["advantage_gain"] == pytest.approx(whole["advantage_gain"], rel=1e-12)
    assert summed["advantage_gain_sigma"] == pytest.approx(whole["advantage_gain_sigma"], rel=1e-12)


def test_advantage_gain_of_resampling_compares_with_its_own_candidates(model):
    guide = GuideConfig(kind="eag", temperature=0.25, candidates=4)
    result = advantage_gain(model, _start(), policy=_policy, critic=_critic, guide=guide, seed=1)
    out = model.imagine(_start(), policy=_policy, critic=_critic, guide=guide,
                        generator=torch.Generator().manual_seed(1))
    adv = out["candidate_advantages"]
    kept = adv[torch.arange(6), out["selected"]]
    assert result["guidance/advantage_gain"] == pytest.approx((kept.mean() - adv.mean()).item(), rel=1e-5)
    assert result["guidance/advantage_gain_sigma"] == pytest.approx(
        ((kept.mean() - adv.mean()) / adv.std()).item(), rel=1e-5)


def test_advantage_clip_bounds_the_weight_ratio_and_leaves_the_bulk_alone():
    """With advantage_clip c, a window far below its start's others (a fall) keeps weight w(-c / beta): its chance of
    being kept among K candidates has the closed form w(-c/b) / (w(-c/b) + (K-1) w(0)) when the others sit at 0; the
    windows inside [-c, c] keep their weights exactly."""
    adv = torch.tensor([[-1000.0, 0.0, 0.0, 0.0], [0.5, -0.5, 0.25, -0.25]], dtype=torch.float64)
    for kind, w in (("eag", lambda x: math.exp(x)), ("sag", lambda x: 1 / (1 + math.exp(-x)))):
        config = GuideConfig(kind=kind, temperature=0.5, normalize_advantage=False, advantage_clip=2.0)
        p = torch.softmax(resample_log_weights(adv, config), dim=1)
        assert p[0, 0].item() == pytest.approx(w(-4.0) / (w(-4.0) + 3 * w(0.0)), rel=1e-12)
        unclipped = torch.softmax(resample_log_weights(adv, config.replace(advantage_clip=None)), dim=1)
        torch.testing.assert_close(p[1], unclipped[1])
        assert unclipped[0, 0].item() < 1e-100


@pytest.mark.parametrize("bad", [dict(advantage_clip=0.0), dict(advantage_clip=float("inf")),
                                 dict(advantage_clip=-1.0), dict(candidates=0), dict(candidates=257),
                                 dict(candidates=2.5),
                                 dict(candidates=True), dict(method="sgd"), dict(temperature=-1.0),
                                 dict(temperature=float("nan"))])
def test_bad_resampling_settings_are_refused_by_name(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"^{name}="):
        GuideConfig(kind="sag", **bad)
