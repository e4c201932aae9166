"""`WorldModelWorker` and the imagination pool's split/merge driven as plain classes, without Ray (STYLE.md).

The worker pulls training windows from an in-process `ReplayBuffer` (a few hundred made-up transitions): counts of
updates and of pulled chunks against closed forms, imagined windows' shapes and versions, shards of a request that
reassemble into the whole request, and `split_request` / `ImaginationPool.merge` against plain loops and
`diagnostics.gain_in_sigma` on the whole batch.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

from agd_ray.imagination import WINDOW_KEYS, ImaginedBatch
from agd_ray.replay.buffer import ReplayBuffer
from agd_ray.world_model import GuideConfig, WorldModelConfig
from agd_ray.world_model.actor import ImaginationPool, WorldModelWorker, split_request
from agd_ray.world_model.diagnostics import gain_in_sigma, resampling_gain_sums

from tiny_module import tiny_module_spec

D_S, D_A, NQ, NV, H = 4, 1, 2, 2, 4
TRAIN_BATCH, BATCHES_PER_CALL = 8, 3  # windows per update, updates per pulled chunk


class CountingReplay(ReplayBuffer):
    """A `ReplayBuffer` that records each `sample_windows` call's (batch_size, horizon)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.window_calls = []

    def sample_windows(self, batch_size, horizon, *, rng=None):
        self.window_calls.append((int(batch_size), int(horizon)))
        return super().sample_windows(batch_size, horizon, rng=rng)


def _replay(num_transitions=400, episode_length=50) -> CountingReplay:
    rng = np.random.default_rng(0)
    step = np.arange(num_transitions) % episode_length
    observations = rng.normal(size=(num_transitions, D_S)).astype(np.float32)
    chunk = {
        "observations": observations,
        "actions": rng.uniform(-1, 1, size=(num_transitions, D_A)).astype(np.float32),
        "rewards": rng.normal(size=num_transitions).astype(np.float32),
        "next_observations": np.roll(observations, -1, axis=0),
        "terminated": step == episode_length - 1,
        "truncated": np.zeros(num_transitions, bool),
        "qpos": np.zeros((num_transitions, NQ)),
        "qvel": np.zeros((num_transitions, NV)),
        "episode_ids": (np.arange(num_transitions) // episode_length).astype(np.int64),
        "runner_id": 0,
        "seq_no": 0,
    }
    replay = CountingReplay(obs_dim=D_S, act_dim=D_A, qpos_dim=NQ, qvel_dim=NV, capacity=1000, seed=0)
    assert replay.add_chunk(chunk) == num_transitions
    return replay


@pytest.fixture(scope="module")
def setup():
    """A worker on a counting replay, with module state version 7 loaded (sag: advantage-weighted resampling)."""
    replay, spec = _replay(), tiny_module_spec(D_S, D_A)
    torch.manual_seed(0)
    state = spec.build().get_state()
    worker = WorldModelWorker(
        obs_dim=D_S, act_dim=D_A, module_spec=spec, replay=replay, batches_per_call=BATCHES_PER_CALL, seed=0,
        device="cpu", guide_config=GuideConfig(kind="sag", temperature=1.0),
        world_model_config=WorldModelConfig(horizon=H, hidden_dim=16, num_layers=1, diffusion_steps=8,
                                            sampling_steps=3, batch_size=TRAIN_BATCH, ema_start=0))
    assert worker.set_module_state(state, 7) == 7
    return worker, replay, state


# -- training -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_updates", [1, 2, 3, 4, 7])
def test_train_does_exactly_the_updates_asked_for_in_ceil_n_over_k_chunks(setup, num_updates):
    worker, replay, _ = setup
    before = worker.model.num_updates
    replay.window_calls.clear()
    result = worker.train(num_updates=num_updates)

    assert worker.model.num_updates - before == num_updates == result["updates_done"]
    assert result["num_updates"] == worker.counters()["num_updates"] == before + num_updates
    assert len(replay.window_calls) == math.ceil(num_updates / BATCHES_PER_CALL)
    want, left = [], num_updates  # a full chunk of K batches per pull while there are K left, then the rest
    while left:
        want.append((min(BATCHES_PER_CALL, left) * TRAIN_BATCH, H))
        left -= min(BATCHES_PER_CALL, left)
    assert replay.window_calls == want
    assert result["normalizer_version"] == replay.normalizer_snapshot().version == 1  # one chunk added
    assert math.isfinite(result["loss"])


def test_train_with_no_updates_pulls_nothing(setup):
    worker, replay, _ = setup
    before = worker.model.num_updates
    replay.window_calls.clear()
    result = worker.train(num_updates=0)
    assert replay.window_calls == [] and worker.model.num_updates == before == result["num_updates"]
    assert result["updates_done"] == 0 and math.isnan(result["loss"])


# -- imagination ----------------------------------------------------------------------------------------------
BATCH, UNIT = 10, 4  # windows per request and per generator unit: units [0, 4), [4, 8), [8, 10)


def test_imagine_returns_the_requested_windows_from_replay_start_states(setup):
    worker, replay, _ = setup
    out = worker.imagine(seed=5, batch_size=BATCH, unit_size=UNIT)
    windows = out.windows
    shapes = {"observations": (BATCH, H, D_S), "actions": (BATCH, H, D_A), "rewards": (BATCH, H),
              "terminals": (BATCH, H), "action_logp": (BATCH, H), "action_dist_inputs": (BATCH, H, 2 * D_A)}
    assert {k: v.shape for k, v in windows.items()} == shapes
    assert out.weights_seq_no == 7 and out.start_index == 0
    assert out.normalizer_version == replay.normalizer_snapshot().version
    assert out.metrics["num_transitions"] == BATCH * (H - 1)
    assert len(out.metrics["resampling_gain_sums"]) == math.ceil(BATCH / UNIT)  # one per unit
    # The start states are replay's, drawn with the request's seed, and inpainted exactly.
    starts = replay.sample_start_states(BATCH, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(windows["observations"][:, 0], starts)


def test_imagine_reports_the_module_version_it_was_given(setup):
    worker, _, state = setup
    try:
        worker.set_module_state(state, 12)
        assert worker.imagine(seed=1, batch_size=2).weights_seq_no == 12
    finally:
        worker.set_module_state(state, 7)


def test_shards_of_a_request_merged_out_of_order_equal_the_whole_request(setup):
    worker, replay, _ = setup
    starts = replay.sample_start_states(BATCH, rng=np.random.default_rng(3))
    whole = ImaginationPool.merge([worker.imagine(seed=3, start_observations=starts, unit_size=UNIT)])
    ranges = split_request(BATCH, 3, UNIT)
    assert ranges == [(0, 4), (4, 8), (8, 10)]
    shards = [worker.imagine(seed=3, start_observations=starts, start_index=lo, stop_index=hi, unit_size=UNIT)
              for lo, hi in ranges]
    merged = ImaginationPool.merge([shards[2], shards[0], shards[1]])

    assert merged.windows.keys() == whole.windows.keys()
    for key in whole.windows:
        np.testing.assert_array_equal(merged.windows[key], whole.windows[key], err_msg=key)
    assert merged.weights_seq_no == whole.weights_seq_no == 7
    assert merged.metrics["num_shards"] == 3 and whole.metrics["num_shards"] == 1
    assert merged.metrics["num_transitions"] == whole.metrics["num_transitions"] == BATCH * (H - 1)
    for key in ("advantage_gain", "advantage_gain_sigma"):  # the same unit sums, added in the same order
        assert merged.metrics[key] == whole.metrics[key], key

    shards[1] = dataclasses.replace(shards[1], weights_seq_no=8)
    with pytest.raises(RuntimeError, match="weights_seq_no"):
        ImaginationPool.merge(shards)


# -- splitting and merging, no model ------------------------------------------------------------------------
def test_split_request_covers_every_window_exactly_once():
    for batch in range(1, 41):
        for workers in range(1, 6):
            for unit in range(1, 8):
                ranges = split_request(batch, workers, unit)
                covered = [0] * batch
                for lo, hi in ranges:
                    for i in range(lo, hi):
                        covered[i] += 1
                assert covered == [1] * batch, (batch, workers, unit, ranges)
                num_units = -(-batch // unit)
                assert len(ranges) == min(workers, num_units)
                assert all(lo % unit == 0 and lo < hi for lo, hi in ranges)
                assert [lo for lo, _ in ranges[1:]] == [hi for _, hi in ranges[:-1]]  # contiguous, in order
                units = [-(-(hi - lo) // unit) for lo, hi in ranges]
                assert sum(units) == num_units and units == sorted(units, reverse=True)
                assert units[0] - units[-1] <= 1, (batch, workers, unit, units)


def _made_up_shard(lo, hi, unit, advantages, selected, imagine_s):
    """A worker's answer for windows lo..hi with the gain sums of each unit in it, and row markers as windows."""
    sums = [resampling_gain_sums(advantages[u:min(u + unit, hi)], selected[u:min(u + unit, hi)])
            for u in range(lo, hi, unit)]
    windows = {k: np.zeros((hi - lo, H)) for k in WINDOW_KEYS}
    windows["observations"] = np.arange(lo, hi, dtype=np.float32)[:, None, None] * np.ones((1, H, D_S))
    return ImaginedBatch(windows=windows, start_index=lo, weights_seq_no=4, normalizer_version=2,
                         metrics={"num_transitions": (hi - lo) * (H - 1), "imagine_s": imagine_s, "delta": 0.1,
                                  "resampling_gain_sums": sums})


@pytest.mark.parametrize("batch, workers, unit, candidates", [(10, 3, 4, 4), (37, 4, 5, 3), (64, 2, 64, 8),
                                                              (9, 5, 1, 2), (33, 3, 8, 6)])
def test_merge_concatenates_in_request_order_and_combines_gains_exactly(batch, workers, unit, candidates):
    g = torch.Generator().manual_seed(batch)
    advantages = torch.randn(batch, candidates, generator=g, dtype=torch.float64) * 2 + 1  # [B, K]
    selected = torch.randint(0, candidates, (batch,), generator=g)  # [B]
    ranges = split_request(batch, workers, unit)
    seconds = [0.5 + i for i in range(len(ranges))]
    shards = [_made_up_shard(lo, hi, unit, advantages, selected, s)
              for (lo, hi), s in zip(ranges, seconds, strict=True)]
    merged = ImaginationPool.merge(shards[::-1])  # answers arrive in any order

    rows = merged.windows["observations"][:, 0, 0]
    np.testing.assert_array_equal(rows, np.arange(batch))
    metrics = merged.metrics
    assert metrics["num_shards"] == len(ranges) and metrics["num_transitions"] == batch * (H - 1)
    assert metrics["transitions_per_s"] == pytest.approx(batch * (H - 1) / max(seconds), rel=1e-12)
    kept = advantages[torch.arange(batch), selected]  # [B]: the windows the guide kept, the whole batch at once
    want = gain_in_sigma(kept, advantages)
    assert metrics["advantage_gain"] == pytest.approx(want["advantage_gain"], rel=1e-9, abs=1e-12)
    assert metrics["advantage_gain_sigma"] == pytest.approx(want["advantage_gain_sigma"], rel=1e-9)


def test_non_finite_windows_are_dropped_where_imagined_and_counted_through_the_merge():
    """A window with a NaN or inf in any of its arrays (states, actions, rewards, the policy's outputs) leaves
    the shard it was imagined in; the others keep their order, and the merged request counts every drop."""
    rng = np.random.default_rng(0)

    def shard(lo, hi, bad):
        windows = {"observations": rng.normal(size=(hi - lo, H, D_S)), "actions": rng.normal(size=(hi - lo, H, D_A)),
                   "rewards": rng.normal(size=(hi - lo, H)), "terminals": np.zeros((hi - lo, H), dtype=bool),
                   "action_logp": rng.normal(size=(hi - lo, H)),
                   "action_dist_inputs": rng.normal(size=(hi - lo, H, 2 * D_A))}
        windows["observations"][:, 0, 0] = np.arange(lo, hi)  # row markers
        for row, (key, value) in bad.items():
            windows[key][row - lo].flat[-1] = value
        return ImaginedBatch.from_windows(windows, weights_seq_no=1, normalizer_version=1, start_index=lo,
                                          metrics={"num_transitions": (hi - lo) * (H - 1), "imagine_s": 1.0,
                                                   "delta": 0.1})

    first = shard(0, 5, {1: ("rewards", np.nan), 4: ("action_dist_inputs", np.inf)})
    second = shard(5, 9, {5: ("action_logp", -np.inf)})
    assert first.num_nonfinite == 2 and first.num_windows == 3
    assert second.num_nonfinite == 1 and second.num_windows == 3
    merged = ImaginedBatch.merge([second, first])
    np.testing.assert_array_equal(merged.windows["observations"][:, 0, 0], [0, 2, 3, 6, 7, 8])
    assert merged.num_nonfinite == 3 and merged.metrics["num_transitions"] == 9 * (H - 1)
    assert all(np.isfinite(v.astype(float)).all() for v in merged.windows.values())
    assert [len(e) for e in merged.to_episodes()] == [H - 1] * 6  # no terminals: truncated windows
