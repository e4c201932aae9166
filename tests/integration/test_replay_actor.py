"""ReplayActor on a local Ray: two sender tasks stream encoded chunks concurrently; counts are exact."""

import sys

import numpy as np
import pytest
import ray
from ray import cloudpickle

from agd_ray.replay.actor import ReplayActor
from agd_ray.replay.wire import encode_chunk
from agd_ray.world_model.normalizer import NormalizerSnapshot

pytestmark = pytest.mark.integration

D_S, D_A, NQ, NV = 3, 2, 2, 2
EPISODE_LENGTH, CHUNK_SIZE, NUM_CHUNKS = 70, 1000, 5


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # Workers cannot import this test module by name: ship its functions by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def runner_chunks(runner_id: int) -> list[dict]:
    """NUM_CHUNKS chunks of one runner: terminated episodes of EPISODE_LENGTH; obs = (episode, step, runner)."""
    n = CHUNK_SIZE * NUM_CHUNKS
    t = np.arange(n)
    local_episode, step = t // EPISODE_LENGTH, t % EPISODE_LENGTH
    observations = np.stack([local_episode, step, np.full(n, runner_id)], axis=1).astype(np.float32)
    stream = {
        "observations": observations,
        "actions": np.zeros((n, D_A), np.float32),
        "rewards": step.astype(np.float32),
        "next_observations": observations + np.float32([0, 1, 0]),
        "terminated": step == EPISODE_LENGTH - 1,
        "truncated": np.zeros(n, bool),
        "qpos": np.zeros((n, NQ)),
        "qvel": np.zeros((n, NV)),
        "episode_ids": (runner_id * 2**32 + local_episode).astype(np.int64),
    }
    return [
        {**{k: v[i * CHUNK_SIZE:(i + 1) * CHUNK_SIZE] for k, v in stream.items()}, "runner_id": runner_id, "seq_no": i}
        for i in range(NUM_CHUNKS)
    ]


@ray.remote(num_cpus=0.5)
def send(replay, runner_id: int) -> list[int]:
    """One runner's stream, one call per chunk, in order (as an env runner sends them)."""
    return [ray.get(replay.add_encoded.remote(encode_chunk(chunk))) for chunk in runner_chunks(runner_id)]


def test_two_senders_exact_counts_and_windows(tmp_path):
    capacity = 8000
    replay = ReplayActor.as_remote(num_cpus=0.5).remote(
        obs_dim=D_S, act_dim=D_A, qpos_dim=NQ, qvel_dim=NV, capacity=capacity, seed=0
    )
    added = ray.get([send.remote(replay, 0), send.remote(replay, 1)])
    assert added == [[CHUNK_SIZE] * NUM_CHUNKS] * 2
    total = 2 * CHUNK_SIZE * NUM_CHUNKS
    metrics = ray.get(replay.metrics.remote())
    assert metrics["replay/num_added"] == total
    assert metrics["replay/size"] == ray.get(replay.size.remote()) == capacity
    assert metrics["replay/num_gaps"] == metrics["replay/num_duplicate_chunks"] == 0
    assert metrics["replay/num_rejected_chunks"] == 0

    # a resent chunk is a duplicate, a malformed one is rejected
    chunk = runner_chunks(0)[1]
    assert ray.get(replay.add_encoded.remote(encode_chunk(chunk))) == 0
    with pytest.raises(ValueError, match="'rewards'"):
        ray.get(replay.add_chunk.remote({**chunk, "rewards": chunk["rewards"].astype(np.float64), "seq_no": 9}))
    metrics = ray.get(replay.metrics.remote())
    assert metrics["replay/num_duplicate_chunks"] == metrics["replay/num_rejected_chunks"] == 1

    windows = ray.get(replay.sample_windows.remote(batch_size=512, horizon=10, seed=1))
    assert windows["observations"].shape == (512, 10, D_S) and windows["qpos"].shape == (512, NQ)
    obs = windows["observations"]
    # one episode of one runner per window, and steps consecutive (padding repeats the last state)
    assert (obs[:, :, [0, 2]] == obs[:, :1, [0, 2]]).all()
    steps = np.diff(obs[:, :, 1], axis=1)
    assert (steps[:, 0] == 1).all() and (steps[:, 1:] == 1 - windows["terminals"][:, :-2]).all()
    again = ray.get(replay.sample_windows.remote(batch_size=512, horizon=10, seed=1))
    np.testing.assert_array_equal(again["observations"], obs)
    assert ray.get(replay.sample_start_states.remote(batch_size=7, seed=0)).shape == (7, D_S)

    snapshot = NormalizerSnapshot.from_dict(ray.get(replay.normalizer_snapshot.remote()))
    assert snapshot.count == total and snapshot.version == 1

    # runner 1 lost two chunks: the next one counts two gaps (its data is arbitrary, one open episode)
    late = {**runner_chunks(1)[0], "episode_ids": np.full(CHUNK_SIZE, 2**32 + 999), "seq_no": NUM_CHUNKS + 2,
            "terminated": np.zeros(CHUNK_SIZE, bool)}
    assert ray.get(replay.add_encoded.remote(encode_chunk(late))) == CHUNK_SIZE
    total += CHUNK_SIZE
    metrics = ray.get(replay.metrics.remote())
    assert metrics["replay/num_duplicate_chunks"] == metrics["replay/num_rejected_chunks"] == 1
    assert metrics["replay/num_gaps"] == 2 and metrics["replay/num_added"] == total

    ray.get(replay.save.remote(str(tmp_path / "replay")))
    restored = ReplayActor.as_remote(num_cpus=0.5).remote(
        obs_dim=D_S, act_dim=D_A, qpos_dim=NQ, qvel_dim=NV, capacity=10
    )
    ray.get(restored.restore.remote(str(tmp_path / "replay")))
    assert ray.get(restored.metrics.remote()) == metrics
    a, b = ray.get([actor.sample_windows.remote(batch_size=512, horizon=10, seed=2) for actor in (replay, restored)])
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
