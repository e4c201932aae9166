"""Chunk wire format: bit-exact round trip, every kind of bad message refused with WireError (and the
buffer left unchanged), property tests on random chunks and random bytes."""

import hashlib

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from agd_ray.replay.buffer import ReplayBuffer
from agd_ray.replay.wire import CHUNK_SCHEMA, WIRE_VERSION, WireError, decode_chunk, encode_chunk, validate_chunk

D_S, D_A, NQ, NV = 4, 2, 3, 2


def make_chunk(n=6, seed=0, runner_id=1, seq_no=0, d_s=D_S, d_a=D_A, nq=NQ, nv=NV) -> dict:
    rng = np.random.default_rng(seed)
    terminated = np.zeros(n, bool)
    terminated[-1] = True
    return {
        "observations": rng.normal(size=(n, d_s)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, d_a)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "next_observations": rng.normal(size=(n, d_s)).astype(np.float32),
        "terminated": terminated,
        "truncated": np.zeros(n, bool),
        "qpos": rng.normal(size=(n, nq)),
        "qvel": rng.normal(size=(n, nv)),
        "episode_ids": np.full(n, runner_id * 2**32 + seed, np.int64),
        "runner_id": runner_id,
        "seq_no": seq_no,
    }


def assert_bit_equal(a: dict, b: dict):
    assert set(a) == set(b)
    for key in a:
        if key in CHUNK_SCHEMA:
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            assert a[key].tobytes() == b[key].tobytes(), key
        else:
            assert a[key] == b[key] and type(b[key]) is int


def message(chunk=None) -> dict:
    """The raw msgpack map of an encoded chunk, to tamper with."""
    return msgpack.unpackb(encode_chunk(chunk or make_chunk()), raw=False)


def pack(msg) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def test_round_trip_bit_exact():
    chunk = make_chunk(n=1000, seed=3, runner_id=7, seq_no=12)
    chunk["observations"][0, 0] = -0.0  # signed zero and extremes survive
    chunk["rewards"][1] = np.finfo(np.float32).max
    chunk["qpos"][2, 1] = np.finfo(np.float64).tiny
    chunk["episode_ids"][:] = 2**62 + 5
    data = encode_chunk(chunk)
    decoded = decode_chunk(data)
    assert_bit_equal(chunk, decoded)
    assert msgpack.unpackb(data)["v"] == WIRE_VERSION == 1
    assert validate_chunk(decoded).num_transitions == 1000


def test_encode_validates_first():
    chunk = make_chunk()
    chunk["qvel"][0, 0] = np.inf
    with pytest.raises(WireError, match="'qvel'.*inf.*finite"):
        encode_chunk(chunk)
    with pytest.raises(WireError, match="'seq_no'.*-1"):
        encode_chunk({**make_chunk(), "seq_no": -1})
    with pytest.raises(WireError, match="'runner_id'.*bool"):
        encode_chunk({**make_chunk(), "runner_id": True})


def _entry(msg, field, **changes):
    msg[field] = {**msg[field], **changes}
    return msg


def _tampered():
    """name -> (bytes, a regex the one-line message must match)."""
    good = encode_chunk(make_chunk())
    obs_f64 = np.zeros((6, D_S), np.float64).tobytes()
    nan_rewards = np.array([0, 0, np.nan, 0, 0, 0], np.float32).tobytes()
    inf_qpos = np.full((6, NQ), np.inf).tobytes()
    bad_bool = np.array([0, 0, 2, 0, 0, 1], np.uint8).tobytes()
    ragged = message()
    ragged["rewards"] = {"dtype": "<f4", "shape": [5], "data": np.zeros(5, np.float32).tobytes()}
    obs_dims = message()
    obs_dims["next_observations"] = {"dtype": "<f4", "shape": [6, D_S + 1],
                                     "data": np.zeros((6, D_S + 1), np.float32).tobytes()}
    return {
        "corrupt_first_byte": (b"\xc1" + good[1:], "not a valid msgpack"),
        "truncated": (good[: len(good) // 2], "not a valid msgpack"),
        "trailing_garbage": (good + b"\x00", "not a valid msgpack"),
        "empty": (b"", "not a valid msgpack"),
        "not_a_map": (pack([1, 2, 3]), "top level is list"),
        "wrong_version": (pack({**message(), "v": 2}), "'v'.*2.*allowed: 1"),
        "version_bool": (pack({**message(), "v": True}), "'v'.*True"),
        "no_version": (pack({k: v for k, v in message().items() if k != "v"}), "'v'.*None"),
        "unknown_field": (pack({**message(), "rewardz": 1}), "'rewardz'.*unknown"),
        "missing_field": (pack({k: v for k, v in message().items() if k != "qvel"}), "'qvel'.*missing"),
        "missing_scalar": (pack({k: v for k, v in message().items() if k != "seq_no"}), "'seq_no'.*missing"),
        "wrong_dtype": (pack(_entry(message(), "observations", dtype="<f8", data=obs_f64)), "'observations'.*<f8"),
        "big_endian": (pack(_entry(message(), "actions", dtype=">f4")), "'actions'.*>f4"),
        "wrong_rank": (pack(_entry(message(), "rewards", shape=[6, 1])), "'rewards'.*shape"),
        "bytes_vs_shape": (pack(_entry(message(), "qpos", shape=[6, NQ + 1])), "'qpos'.*data bytes"),
        "negative_shape": (pack(_entry(message(), "qpos", shape=[-6, NQ])), "'qpos'.*shape"),
        "ragged_n": (pack(ragged), "'rewards'.*N=5"),
        "obs_dims_differ": (pack(obs_dims), "'next_observations'.*D_s=5"),
        "extra_entry_key": (pack(_entry(message(), "rewards", endian="little")), "'rewards'.*entry"),
        "data_as_str": (pack(_entry(message(), "rewards", data="abc")), "'rewards'"),
        "nan": (pack(_entry(message(), "rewards", data=nan_rewards)), "'rewards'.*nan.*finite"),
        "inf": (pack(_entry(message(), "qpos", data=inf_qpos)), "'qpos'.*inf.*finite"),
        "bool_byte_2": (pack(_entry(message(), "terminated", data=bad_bool)), "'terminated'.*0/1"),
        "runner_id_str": (pack({**message(), "runner_id": "1"}), "'runner_id'"),
        "seq_no_negative": (pack({**message(), "seq_no": -3}), "'seq_no'.*-3"),
        "seq_no_float": (pack({**message(), "seq_no": 1.0}), "'seq_no'"),
        "ext_type": (pack({**message(), "rewards": msgpack.ExtType(42, b"\x00" * 8)}), "ext type; allowed: no ext"),
        "ext_top_level": (pack(msgpack.ExtType(1, b"x")), "ext type; allowed: no ext"),
        "timestamp": (pack({**message(), "seq_no": msgpack.Timestamp(1, 0)}), "ext type; allowed: no ext"),
        "int_map_key": (pack({**message(), 7: 1}), "not a valid msgpack"),
        "empty_chunk": (encode_chunk_unchecked(make_chunk(n=1), n=0), "dim N: got 0"),
    }


def encode_chunk_unchecked(chunk: dict, n: int) -> bytes:
    """Encode the first n transitions without validation (to build messages encode_chunk refuses)."""
    msg = {"v": WIRE_VERSION, "runner_id": chunk["runner_id"], "seq_no": chunk["seq_no"]}
    for name, (dtype, _) in CHUNK_SCHEMA.items():
        array = chunk[name][:n]
        msg[name] = {"dtype": dtype, "shape": list(array.shape), "data": array.tobytes()}
    return pack(msg)


TAMPERED = _tampered()


def storage_digest(buffer: ReplayBuffer) -> str:
    h = hashlib.sha256()
    for name in sorted(buffer._slots):
        h.update(buffer._slots[name].tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_bad_message_refused_and_buffer_unchanged(case):
    data, pattern = TAMPERED[case]
    with pytest.raises(WireError, match=pattern) as info:
        decode_chunk(data)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300
    buffer = ReplayBuffer(D_S, D_A, NQ, NV, capacity=8)
    buffer.add_encoded(encode_chunk(make_chunk(n=5, seq_no=0)))
    digest, size = storage_digest(buffer), len(buffer)
    with pytest.raises(WireError):
        buffer.add_encoded(data)
    assert (storage_digest(buffer), len(buffer), buffer.num_added) == (digest, size, 5)
    assert buffer.metrics()["replay/num_rejected_chunks"] == 1


def test_oversized_message_refused_before_unpacking():
    data = encode_chunk(make_chunk(n=100))
    decode_chunk(data, max_bytes=len(data))
    with pytest.raises(WireError, match=rf"{len(data)} bytes; allowed: at most max_bytes={len(data) - 1}"):
        decode_chunk(data, max_bytes=len(data) - 1)
    buffer = ReplayBuffer(D_S, D_A, NQ, NV, capacity=8)
    with pytest.raises(WireError, match="max_bytes"):
        buffer.add_encoded(data, max_bytes=1000)
    assert len(buffer) == 0 and buffer.num_rejected_chunks == 1


def test_buffer_refuses_chunk_of_other_dims():
    buffer = ReplayBuffer(D_S, D_A, NQ, NV, capacity=8)
    with pytest.raises(WireError, match="dim D_a: got 3; allowed: 2"):
        buffer.add_encoded(encode_chunk(make_chunk(d_a=3)))
    assert len(buffer) == 0


def test_decode_refuses_non_bytes():
    with pytest.raises(WireError, match="got str"):
        decode_chunk("abc")


# ---------------------------------------------------------------------------------------------- properties
finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
finite64 = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def valid_chunks(draw):
    n = draw(st.integers(1, 12))
    d_s, d_a, nq, nv = (draw(st.integers(1, 4)) for _ in range(4))
    return {
        "observations": draw(hnp.arrays(np.float32, (n, d_s), elements=finite32)),
        "actions": draw(hnp.arrays(np.float32, (n, d_a), elements=finite32)),
        "rewards": draw(hnp.arrays(np.float32, (n,), elements=finite32)),
        "next_observations": draw(hnp.arrays(np.float32, (n, d_s), elements=finite32)),
        "terminated": draw(hnp.arrays(np.bool_, (n,))),
        "truncated": draw(hnp.arrays(np.bool_, (n,))),
        "qpos": draw(hnp.arrays(np.float64, (n, nq), elements=finite64)),
        "qvel": draw(hnp.arrays(np.float64, (n, nv), elements=finite64)),
        "episode_ids": draw(hnp.arrays(np.int64, (n,))),
        "runner_id": draw(st.integers(0, 2**63 - 1)),
        "seq_no": draw(st.integers(0, 2**63 - 1)),
    }


@settings(max_examples=60, deadline=None)
@given(valid_chunks())
def test_property_round_trip(chunk):
    assert_bit_equal(chunk, decode_chunk(encode_chunk(chunk)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_property_random_bytes_only_wire_error(data):
    try:
        decode_chunk(data)
    except WireError:
        pass


GOOD = encode_chunk(make_chunk(n=3))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, len(GOOD)))
def test_property_mutated_messages_decode_validly_or_raise_wire_error(edits, cut):
    data = bytearray(GOOD)
    for position, value in edits:
        data[position] = value
    try:
        chunk = decode_chunk(bytes(data[:cut]))
    except WireError:
        return
    validate_chunk(chunk)  # whatever decodes is a valid chunk
