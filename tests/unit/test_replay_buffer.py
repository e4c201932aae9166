"""ReplayBuffer: exact counts, window semantics against a reference loop, eviction, seq numbers, snapshots,
save/load. Observations encode (episode index, step) so every sampled value can be traced to its source."""

import hashlib
import os

import numpy as np
import pytest

from agd_ray.replay.buffer import ReplayBuffer
from agd_ray.replay.wire import WireError

D_S, D_A, NQ, NV = 3, 2, 2, 1


def episode(k: int, length: int, end: str, runner: int = 0, noise: np.random.Generator | None = None) -> dict:
    """One episode's transitions. obs = (k, step, x), next_obs = (k, step + 1, x'), qpos = (k, step)."""
    step = np.arange(length, dtype=np.float32)
    extra = noise.normal(size=length + 1).astype(np.float32) if noise is not None else np.zeros(length + 1, np.float32)
    observations = np.stack([np.full(length, k, np.float32), step, extra[:-1]], axis=1)
    next_observations = np.stack([np.full(length, k, np.float32), step + 1, extra[1:]], axis=1)
    terminated = np.zeros(length, bool)
    truncated = np.zeros(length, bool)
    if end == "terminated":
        terminated[-1] = True
    elif end == "truncated":
        truncated[-1] = True
    return {
        "observations": observations,
        "actions": np.stack([step + 0.5, np.full(length, -k, np.float32)], axis=1),
        "rewards": (100 * k + step).astype(np.float32),
        "next_observations": next_observations,
        "terminated": terminated,
        "truncated": truncated,
        "qpos": np.stack([np.full(length, k, np.float64), step.astype(np.float64)], axis=1),
        "qvel": step.astype(np.float64)[:, None] * 0.25,
        "episode_ids": np.full(length, runner * 2**32 + k, np.int64),
    }


def concat(parts: list[dict]) -> dict:
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def split(stream: dict, sizes, runner: int) -> list[dict]:
    """Cut a runner's transition stream into chunks of the given sizes (the last takes the rest)."""
    n = len(stream["rewards"])
    bounds = np.cumsum([0, *sizes])
    bounds = [int(b) for b in bounds if b < n] + [n]
    return [
        {**{k: v[lo:hi] for k, v in stream.items()}, "runner_id": runner, "seq_no": i}
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
    ]


def single_runner_chunks(lengths, ends, chunk_size, runner=0, first_k=0):
    eps = [episode(first_k + i, n, e, runner) for i, (n, e) in enumerate(zip(lengths, ends, strict=True))]
    stream = concat(eps)
    return split(stream, [chunk_size] * (len(stream["rewards"]) // chunk_size + 1), runner)


def storage_digest(buffer: ReplayBuffer) -> str:
    h = hashlib.sha256()
    for name in sorted(buffer._slots):
        h.update(buffer._slots[name].tobytes())
    for name in sorted(buffer._table):
        h.update(buffer._table[name][: buffer._num_rows].tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- counts
@pytest.mark.parametrize("capacity", [5, 16, 64, 1000])
@pytest.mark.parametrize("episode_length", [1, 3, 7, 50])
@pytest.mark.parametrize("chunk_size", [1, 4, 33])
def test_exact_counts(capacity, episode_length, chunk_size):
    num_episodes = 9
    buffer = ReplayBuffer(D_S, D_A, NQ, NV, capacity)
    for chunk in single_runner_chunks([episode_length] * num_episodes, ["terminated"] * num_episodes, chunk_size):
        assert buffer.add_chunk(chunk) == len(chunk["rewards"])
    total = episode_length * num_episodes
    stored = min(capacity, total)
    assert len(buffer) == stored
    assert buffer.num_added == total
    # the stored transitions are the last `stored`; count the distinct episodes among them
    first_stored = total - stored
    assert buffer.num_episodes == num_episodes - first_stored // episode_length
    m = buffer.metrics()
    assert (m["replay/size"], m["replay/num_added"], m["replay/num_episodes"]) == (
        stored, total, buffer.num_episodes)
    assert (m["replay/num_rejected_chunks"], m["replay/num_duplicate_chunks"], m["replay/num_gaps"]) == (0, 0, 0)
    # rows of fully evicted episodes are recycled: the table never outgrows what is stored plus one open
    assert buffer._num_rows <= max(16, 2 * (stored + 1))


# ---------------------------------------------------------------------------------------------- windows
def build_stream(seed: int):
    """Two runners, random episode lengths and ends, random chunk sizes, chunks interleaved at random.
    Returns the chunks in arrival order and the log of all transitions in the same order."""
    rng = np.random.default_rng(seed)
    per_runner = []
    k = 0
    for runner in (0, 1):
        eps = []
        for i in range(8):
            length = int(rng.integers(1, 15))
            end = "open" if i == 7 else str(rng.choice(["terminated", "truncated"]))
            eps.append(episode(k, length, end, runner, noise=rng))
            k += 1
        stream = concat(eps)
        per_runner.append(split(stream, rng.integers(1, 12, size=100), runner))
    order = np.array([0] * len(per_runner[0]) + [1] * len(per_runner[1]))
    rng.shuffle(order)
    queues = [list(c) for c in per_runner]
    chunks = [queues[r].pop(0) for r in order]
    log = concat([{k_: c[k_] for k_ in c if k_ not in ("runner_id", "seq_no")} for c in chunks])
    return chunks, log


def reference(log: dict, capacity: int, horizon: int):
    """Valid starts and expected windows by a plain Python loop over the stored part of the log."""
    n = len(log["rewards"])
    stored = range(max(0, n - capacity), n)
    by_episode: dict[int, list[int]] = {}
    for t in range(n):
        by_episode.setdefault(int(log["observations"][t, 0]), []).append(t)
    windows = {}
    for t in stored:
        k, s = int(log["observations"][t, 0]), int(log["observations"][t, 1])
        idx = by_episode[k]
        assert idx[s] == t
        terminated = bool(log["terminated"][idx[-1]])
        if not terminated and s + horizon > len(idx):
            continue
        obs, act, rew, term = [], [], [], []
        for h in range(horizon):
            if s + h < len(idx):
                u = idx[s + h]
                obs.append(log["observations"][u]), act.append(log["actions"][u])
                rew.append(log["rewards"][u]), term.append(float(log["terminated"][u]))
            else:  # padding after the termination
                last = idx[-1]
                obs.append(log["next_observations"][last]), act.append(log["actions"][last])
                rew.append(0.0), term.append(1.0)
        windows[(k, s)] = (np.array(obs), np.array(act), np.array(rew, np.float32), np.array(term, np.float32),
                           log["qpos"][t], log["qvel"][t])
    return windows


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("capacity", [7, 40, 1000])
@pytest.mark.parametrize("horizon", [1, 4, 10])
def test_windows_match_reference_loop(seed, capacity, horizon):
    chunks, log = build_stream(seed)
    buffer = ReplayBuffer(D_S, D_A, NQ, NV, capacity, seed=seed)
    for chunk in chunks:
        buffer.add_chunk(chunk)
    expected = reference(log, capacity, horizon)
    if not expected:
        with pytest.raises(ValueError, match="no valid window start"):
            buffer.sample_windows(4, horizon)
        return
    B = 3000
    batch = buffer.sample_windows(B, horizon, rng=np.random.default_rng(seed))
    assert batch["observations"].shape == (B, horizon, D_S)
    assert batch["actions"].shape == (B, horizon, D_A)
    assert batch["rewards"].shape == batch["terminals"].shape == (B, horizon)
    assert batch["qpos"].shape == (B, NQ) and batch["qvel"].shape == (B, NV)
    assert batch["terminals"].dtype == np.float32 and batch["qpos"].dtype == np.float64
    keys = batch["observations"][:, 0, :2].astype(np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    starts = {(int(keys[b, 0]), int(keys[b, 1])): int(b) for b in first}
    # every valid start is sampled (3000 draws over at most ~120 starts), and nothing else
    assert set(starts) == set(expected)
    # a start's window is a deterministic gather: one sample per distinct start suffices
    for key, b in starts.items():
        obs, act, rew, term, qpos, qvel = expected[key]
        np.testing.assert_array_equal(batch["observations"][b], obs)
        np.testing.assert_array_equal(batch["actions"][b], act)
        np.testing.assert_array_equal(batch["rewards"][b], rew)
        np.testing.assert_array_equal(batch["terminals"][b], term)
        np.testing.assert_array_equal(batch["qpos"][b], qpos)
        np.testing.assert_array_equal(batch["qvel"][b], qvel)
    start_states = buffer.sample_start_states(500, horizon=horizon, rng=np.random.default_rng(1))
    assert {(int(o[0]), int(o[1])) for o in start_states} <= set(expected)


def test_padding_after_termination_exactly():
    buffer = ReplayBuffer(D_S, D_A, NQ, NV, 100)
    buffer.add_chunk({**episode(4, 3, "terminated"), "runner_id": 0, "seq_no": 0})
    batch = buffer.sample_windows(50, 5, rng=np.random.default_rng(0))
    first = batch["observations"][:, 0, 1] == 0
    assert first.any()
    w = {k: v[first][0] for k, v in batch.items()}
    np.testing.assert_array_equal(w["observations"][:, 1], [0, 1, 2, 3, 3])  # step 3 = the last next_obs
    np.testing.assert_array_equal(w["actions"][:, 0], [0.5, 1.5, 2.5, 2.5, 2.5])
    np.testing.assert_array_equal(w["rewards"], [400, 401, 402, 0, 0])
    np.testing.assert_array_equal(w["terminals"], [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(w["qpos"], [4, 0])
    # a start at the terminating transition itself: all padding after it
    last = batch["observations"][:, 0, 1] == 2
    assert last.any()
    np.testing.assert_array_equal(batch["terminals"][last][0], [1, 1, 1, 1, 1])
    np.testing.assert_array_equal(batch["rewards"][last][0], [402, 0, 0, 0, 0])


@pytest.mark.parametrize("end", ["truncated", "open"])
def test_no_padding_for_truncated_or_ongoing(end):
    buffer = ReplayBuffer(D_S, D_A, NQ, NV, 100)
    buffer.add_chunk({**episode(0, 3, end), "runner_id": 0, "seq_no": 0})
    with pytest.raises(ValueError, match="no valid window start for horizon=4"):
        buffer.sample_windows(2, 4)
    batch = buffer.sample_windows(20, 3, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(batch["observations"][:, :, 1], np.tile([0, 1, 2], (20, 1)))
    assert not batch["terminals"].any()
    batch = buffer.sample_windows(200, 2, rng=np.random.default_rng(0))
    assert set(batch["observations"][:, 0, 1].tolist()) == {0, 1}


def test_ongoing_episode_grows_across_chunks():
    buffer = ReplayBuffer(D_S, D_A, NQ, NV, 100)
    chunks = split({**episode(0, 6, "open")}, [2, 2, 2], runner=0)
    buffer.add_chunk(chunks[0])
    with pytest.raises(ValueError, match="no valid window start"):
        buffer.sample_windows(1, 3)
    buffer.add_chunk(chunks[1])
    starts = set(buffer.sample_windows(100, 3, rng=np.random.default_rng(0))["observations"][:, 0, 1].tolist())
    assert starts == {0, 1}
    buffer.add_chunk(chunks[2])
    starts = set(buffer.sample_windows(200, 3, rng=np.random.default_rng(0))["observations"][:, 0, 1].tolist())
    assert starts == {0, 1, 2, 3}
    assert buffer.num_episodes == 1


def test_wraparound_never_reads_overwritten_slots():
    """A 25-step open episode in a 10-slot ring: only steps 15..24 remain, windows start at 15..21."""
    buffer = ReplayBuffer(D_S, D_A, NQ, NV, 10)
    for chunk in split(episode(0, 25, "open"), [4] * 7, runner=0):
        buffer.add_chunk(chunk)
    assert len(buffer) == 10 and buffer.num_added == 25
    batch = buffer.sample_windows(500, 4, rng=np.random.default_rng(0))
    steps = batch["observations"][:, :, 1]
    assert set(steps[:, 0].tolist()) == set(range(15, 22))
    np.testing.assert_array_equal(steps, steps[:, :1] + np.arange(4))
    # now a new episode overwrites slots of the old one: old windows shrink, new ones never mix in
    buffer.add_chunk({**episode(1, 6, "terminated"), "runner_id": 0, "seq_no": 7})
    batch = buffer.sample_windows(500, 4, rng=np.random.default_rng(0))
    k, steps = batch["observations"][:, :, 0], batch["observations"][:, :, 1]
    assert (k == k[:, :1]).all()
    old = k[:, 0] == 0
    assert set(steps[old, 0].tolist()) == {21}  # steps 21..24 are all that is left of episode 0
    assert set(steps[~old, 0].tolist()) == set(range(6))


def test_chunk_larger_than_capacity_keeps_its_tail():
    buffer = ReplayBuffer(D_S, D_A, NQ, NV, 4)
    assert buffer.add_chunk({**episode(0, 11, "terminated"), "runner_id": 0, "seq_no": 0}) == 11
    assert len(buffer) == 4 and buffer.num_added == 11 and buffer.num_episodes == 1
    batch = buffer.sample_windows(200, 2, rng=np.random.default_rng(0))
    assert set(batch["observations"][:, 0, 1].tolist()) == {7, 8, 9, 10}


def test_interleaved_runners_exact_counts():
    buffer = ReplayBuffer(D_S, D_A, NQ, NV, 10_000)
    a = single_runner_chunks([5, 6, 7], ["truncated", "truncated", "open"], 4, runner=0)
    b = single_runner_chunks([3, 9], ["truncated", "open"], 5, runner=1, first_k=10)
    for i in range(max(len(a), len(b))):
        for chunks in (a, b):
            if i < len(chunks):
                buffer.add_chunk(chunks[i])
    assert len(buffer) == buffer.num_added == 30
    assert buffer.num_episodes == 5
    batch = buffer.sample_windows(1000, 3, rng=np.random.default_rng(0))
    k = batch["observations"][:, :, 0]
    assert (k == k[:, :1]).all()
    np.testing.assert_array_equal(batch["observations"][:, :, 1], batch["observations"][:, :1, 1] + np.arange(3))


# ---------------------------------------------------------------------------------------------- seq numbers
def test_duplicate_chunk_refused_and_buffer_unchanged():
    buffer = ReplayBuffer(D_S, D_A, NQ, NV, 50)
    chunks = single_runner_chunks([4, 4], ["terminated", "open"], 3)
    for chunk in chunks[:2]:
        buffer.add_chunk(chunk)
    digest, size = storage_digest(buffer), len(buffer)
    assert buffer.add_chunk(chunks[1]) == 0
    assert buffer.add_chunk(chunks[0]) == 0
    assert (storage_digest(buffer), len(buffer), buffer.num_added) == (digest, size, 6)
    assert buffer.num_duplicate_chunks == 2 and buffer.num_gaps == 0
    assert buffer.metrics()["replay/num_duplicate_chunks"] == 2


def test_gap_counts_missing_seq_and_ends_open_episodes():
    buffer = ReplayBuffer(D_S, D_A, NQ, NV, 50)
    chunks = split(episode(0, 12, "terminated"), [3, 3, 3, 3], runner=0)
    buffer.add_chunk(chunks[0])
    buffer.add_chunk(chunks[3])  # seq 1 and 2 lost
    assert buffer.num_gaps == 2
    assert len(buffer) == 6 and buffer.num_episodes == 2  # the episode is split into two segments
    batch = buffer.sample_windows(500, 3, rng=np.random.default_rng(0))
    steps = batch["observations"][:, :, 1]
    # the first segment (steps 0..2) was ended as truncated; the second (9..11) terminates and pads
    assert set(steps[:, 0].tolist()) == {0, 9, 10, 11}
    before = steps[:, 0] == 0
    np.testing.assert_array_equal(steps[before], np.tile([0, 1, 2], (before.sum(), 1)))
    assert not batch["terminals"][before].any()
    # a runner whose first chunk is not seq 0 counts the missing ones
    buffer.add_chunk({**episode(5, 2, "terminated", runner=1), "runner_id": 1, "seq_no": 3})
    assert buffer.num_gaps == 5


# ---------------------------------------------------------------------------------------------- rejections
def _bad_chunks():
    good = {**episode(0, 5, "open"), "runner_id": 0, "seq_no": 0}
    continues = {**episode(0, 5, "open"), "runner_id": 0, "seq_no": 0}
    continues["terminated"] = np.array([0, 0, 1, 0, 0], bool)
    wrong_dim = {**good, "observations": np.zeros((5, D_S + 1), np.float32),
                 "next_observations": np.zeros((5, D_S + 1), np.float32)}
    nan = {**good, "rewards": np.array([0, 1, np.nan, 0, 0], np.float32)}
    wrong_dtype = {**good, "actions": good["actions"].astype(np.float64)}
    return {"continues_after_end": continues, "wrong_obs_dim": wrong_dim, "nan": nan, "wrong_dtype": wrong_dtype}


@pytest.mark.parametrize("case", sorted(_bad_chunks()))
def test_bad_chunk_refused_and_buffer_unchanged(case):
    buffer = ReplayBuffer(D_S, D_A, NQ, NV, 8)
    for chunk in single_runner_chunks([3, 4], ["terminated", "open"], 5, runner=3):
        buffer.add_chunk(chunk)
    digest, size, snap = storage_digest(buffer), len(buffer), buffer.normalizer_snapshot()
    with pytest.raises(ValueError) as info:
        buffer.add_chunk(_bad_chunks()[case])
    assert "\n" not in str(info.value)
    assert (storage_digest(buffer), len(buffer), buffer.num_added) == (digest, size, 7)
    assert buffer.num_rejected_chunks == 1
    assert buffer.normalizer_snapshot() is snap
    if case in ("wrong_obs_dim", "nan", "wrong_dtype"):
        assert isinstance(info.value, WireError)


def test_episode_id_open_from_another_runner_refused():
    buffer = ReplayBuffer(D_S, D_A, NQ, NV, 50)
    buffer.add_chunk({**episode(0, 3, "open", runner=0), "runner_id": 0, "seq_no": 0})
    with pytest.raises(ValueError, match="is open from runner 0"):
        buffer.add_chunk({**episode(0, 3, "open", runner=0), "runner_id": 1, "seq_no": 0})
    assert buffer.num_rejected_chunks == 1 and len(buffer) == 3


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_constructor_refuses_bad_sizes(bad):
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(D_S, D_A, NQ, NV, bad)


# ---------------------------------------------------------------------------------------------- normaliser
def test_normalizer_snapshot_matches_numpy_and_versions_rise_only_with_data():
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(D_S, D_A, NQ, NV, 10)  # small: statistics cover evicted transitions too
    identity = buffer.normalizer_snapshot()
    assert identity.version == 0
    eps = [episode(k, int(rng.integers(1, 9)), "terminated", noise=rng) for k in range(6)]
    added = []
    version = 0
    for seq, ep in enumerate(eps):
        buffer.add_chunk({**ep, "runner_id": 0, "seq_no": seq})
        added.append(ep)
        snap = buffer.normalizer_snapshot()
        assert snap.version == version + 1
        version = snap.version
        assert buffer.normalizer_snapshot() is snap  # nothing new: same version, same object
        data = concat(added)
        for key, values in (("observations", data["observations"]), ("actions", data["actions"]),
                            ("rewards", data["rewards"][:, None]), ("terminals", data["terminated"][:, None])):
            values = values.astype(np.float64)
            std = values.std(axis=0)
            np.testing.assert_allclose(snap.mean[key], values.mean(axis=0), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(snap.std[key], np.where(std < 1e-6, 1.0, std), rtol=1e-9, atol=1e-12)
        assert snap.count == len(data["rewards"])
    # a duplicate adds nothing: same version
    buffer.add_chunk({**eps[0], "runner_id": 0, "seq_no": 0})
    assert buffer.normalizer_snapshot().version == version


# ---------------------------------------------------------------------------------------------- save / load
def _filled_buffer(capacity=30, seed=3):
    chunks, _ = build_stream(seed)
    buffer = ReplayBuffer(D_S, D_A, NQ, NV, capacity, seed=seed)
    for chunk in chunks:
        buffer.add_chunk(chunk)
    buffer.sample_windows(3, 2)  # advance the buffer's own generator
    return buffer


def test_save_load_round_trip_samples_identically(tmp_path):
    buffer = _filled_buffer()
    snap = buffer.normalizer_snapshot()
    buffer.save(tmp_path / "replay")
    restored = ReplayBuffer.load(tmp_path / "replay")
    assert len(restored) == len(buffer) and restored.metrics() == buffer.metrics()
    assert restored.normalizer_snapshot().to_dict() == snap.to_dict()
    for horizon in (1, 3, 6):
        a = buffer.sample_windows(64, horizon, rng=np.random.default_rng(horizon))
        b = restored.sample_windows(64, horizon, rng=np.random.default_rng(horizon))
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # the buffers' own generators continue identically too
    np.testing.assert_array_equal(buffer.sample_start_states(16), restored.sample_start_states(16))
    # and both keep accepting the same stream: the next chunk of runner 0 is seq no 100
    nxt = {**episode(50, 4, "terminated"), "runner_id": 0, "seq_no": 100}
    assert buffer.add_chunk(nxt) == restored.add_chunk(nxt) == 4
    assert storage_digest(buffer) == storage_digest(restored)
    # saving again replaces the files, leaving one npz
    buffer.save(tmp_path / "replay")
    assert sorted(p.suffix for p in (tmp_path / "replay").iterdir()) == [".json", ".npz"]


def test_load_refuses_corrupt_or_missing_files(tmp_path):
    path = tmp_path / "replay"
    _filled_buffer().save(path)
    (npz,) = path.glob("*.npz")
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    npz.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"{npz}.*sha256"):
        ReplayBuffer.load(path)
    npz.unlink()
    with pytest.raises(ValueError, match=str(npz)):
        ReplayBuffer.load(path)
    (path / "replay.json").write_text("{not json")
    with pytest.raises(ValueError, match="replay.json"):
        ReplayBuffer.load(path)
    with pytest.raises(ValueError, match="missing-dir"):
        ReplayBuffer.load(tmp_path / "missing-dir")


def test_empty_buffer_round_trip(tmp_path):
    buffer = ReplayBuffer(D_S, D_A, NQ, NV, 5)
    buffer.save(tmp_path)
    restored = ReplayBuffer.load(tmp_path)
    assert len(restored) == 0 and restored.normalizer_snapshot().version == 0
    assert os.path.exists(tmp_path / "replay.json")


def test_actions_outside_the_executed_box_refused_and_bound_survives_save(tmp_path):
    # episode(k=0) actions are (step + 0.5, 0): within [-5, 5] for 4 steps, 5.5 at the fifth
    buffer = ReplayBuffer(D_S, D_A, NQ, NV, 50, action_bound=5.0)
    buffer.add_chunk({**episode(0, 4, "terminated"), "runner_id": 0, "seq_no": 0})
    digest = storage_digest(buffer)
    with pytest.raises(ValueError, match=r"'actions'.*5\.5.*\[-5, 5\]") as info:
        buffer.add_chunk({**episode(1, 6, "terminated"), "runner_id": 0, "seq_no": 1})
    assert "\n" not in str(info.value)
    assert (storage_digest(buffer), len(buffer), buffer.num_rejected_chunks) == (digest, 4, 1)
    buffer.save(tmp_path / "r")
    assert ReplayBuffer.load(tmp_path / "r").action_bound == 5.0
    with pytest.raises(ValueError, match="action_bound"):
        ReplayBuffer(D_S, D_A, NQ, NV, 50, action_bound=-1.0)
