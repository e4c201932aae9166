"""Normaliser: streaming statistics equal numpy's, round trips, and versioned snapshots."""

import numpy as np
import pytest
import torch

from agd_ray.world_model import WorldModel, WorldModelConfig
from agd_ray.world_model.normalizer import NormalizerSnapshot, RunningStats


def _transitions(n, seed):
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.normal(3.0, 2.0, (n, 4)),
        "actions": rng.uniform(-1, 1, (n, 2)),
        "rewards": rng.normal(-1.0, 0.5, n),
        "terminals": np.zeros(n),  # a constant channel
    }


@pytest.mark.parametrize("sizes", [[10], [1, 1, 1], [7, 300, 2, 50]])
def test_running_stats_equal_numpy_over_all_chunks(sizes):
    stats = RunningStats()
    chunks = [_transitions(n, i) for i, n in enumerate(sizes)]
    for c in chunks:
        stats.update(c)
    snap = stats.snapshot(version=3)
    assert snap.count == sum(sizes) and snap.version == 3
    for key in ("observations", "actions", "rewards"):
        allv = np.concatenate([np.asarray(c[key]).reshape(len(c[key]), -1) for c in chunks])
        np.testing.assert_allclose(snap.mean[key], allv.mean(0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(snap.std[key], np.where(allv.std(0) < 1e-6, 1.0, allv.std(0)), rtol=1e-9)
    np.testing.assert_array_equal(snap.std["terminals"], [1.0])  # constant channel: scale 1, not 1e-6


def test_round_trip_numpy_and_torch():
    snap = NormalizerSnapshot.from_batch(_transitions(100, 0), version=1)
    x = np.random.default_rng(1).normal(3.0, 2.0, (5, 6, 4))
    np.testing.assert_allclose(snap.unnormalize("observations", snap.normalize("observations", x)), x, rtol=1e-12)
    xt = torch.as_tensor(x, dtype=torch.float32)
    z = snap.normalize("observations", xt)
    assert z.dtype == torch.float32
    torch.testing.assert_close(snap.unnormalize("observations", z), xt)
    r = torch.randn(5, 6)
    torch.testing.assert_close(snap.unnormalize("rewards", snap.normalize("rewards", r)), r)


def test_dict_round_trip_and_missing_fields():
    snap = NormalizerSnapshot.from_batch(_transitions(20, 0), version=4)
    back = NormalizerSnapshot.from_dict(snap.to_dict())
    assert back.version == 4 and back.count == 20
    for k in snap.mean:
        np.testing.assert_array_equal(back.mean[k], snap.mean[k])
    with pytest.raises(ValueError, match="lacks fields"):
        NormalizerSnapshot.from_dict({"version": 1, "mean": {}, "std": {}})


def test_running_stats_state_round_trip():
    a = RunningStats()
    a.update(_transitions(30, 0))
    b = RunningStats()
    b.load_state_dict(a.state_dict())
    a.update(_transitions(10, 1))
    b.update(_transitions(10, 1))
    np.testing.assert_array_equal(a.snapshot(1).mean["observations"], b.snapshot(1).mean["observations"])


def test_world_model_snapshot_versions_and_the_batch_they_normalise():
    wm = WorldModel(4, 2, WorldModelConfig(horizon=3, hidden_dim=32, num_layers=1, diffusion_steps=10,
                                           sampling_steps=10))
    assert wm.normalizer.version == 0
    rng = np.random.default_rng(0)
    batch = {"observations": rng.normal(5, 3, (8, 3, 4)), "actions": rng.normal(0, 1, (8, 3, 2)),
             "rewards": rng.normal(0, 1, (8, 3)), "terminals": np.zeros((8, 3))}
    first = wm.fit_normalizer(batch)
    second = wm.fit_normalizer(batch)
    assert (first.version, second.version) == (1, 2)
    assert wm.update(batch)["normalizer_version"] == 2
    np.testing.assert_allclose(first.mean["observations"], batch["observations"].reshape(-1, 4).mean(0))
    with pytest.raises(ValueError, match="do not match"):
        wm.set_normalizer(NormalizerSnapshot.identity(5, 2))


def test_tensor_statistics_are_converted_once_and_not_pickled():
    import pickle

    snap = NormalizerSnapshot.from_batch(_transitions(20, 0), version=1)
    x = torch.zeros(3, 4)
    first = snap._stats_like("observations", x)
    assert snap._stats_like("observations", x + 1)[0] is first[0]  # cached: no new tensor (no copy) per call
    back = pickle.loads(pickle.dumps(snap))
    assert back._tensor_cache == {} and back.version == 1
    torch.testing.assert_close(back.normalize("observations", x), snap.normalize("observations", x))


def test_imagination_reuses_the_converted_statistics():
    wm = WorldModel(4, 2, WorldModelConfig(horizon=3, hidden_dim=32, num_layers=1, diffusion_steps=6))
    policy = lambda s: (torch.zeros(s.shape[:-1] + (2,)), torch.ones(s.shape[:-1] + (2,)))  # noqa: E731
    wm.imagine(torch.zeros(5, 4), policy=policy)
    cached = dict(wm.normalizer._tensor_cache)
    wm.imagine(torch.zeros(5, 4), policy=policy)
    assert wm.normalizer._tensor_cache.keys() == cached.keys()
    assert all(wm.normalizer._tensor_cache[k][0] is cached[k][0] for k in cached)
