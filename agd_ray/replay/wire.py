"""The transition-chunk wire format: msgpack, schema-checked on both ends, never pickle.

A chunk is N consecutive transitions from one env runner (ARCHITECTURE.md, data flow). On the wire it is a
msgpack map::

    {"v": 1, "runner_id": int, "seq_no": int,
     "<field>": {"dtype": "<f4", "shape": [N, D_s], "data": <raw little-endian bytes>}, ...}

with one entry per array field of `CHUNK_SCHEMA`. `validate_chunk` is the one schema check; the codec and
the replay buffer both call it, so a chunk the buffer accepts is exactly a chunk the codec accepts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgpack
import numpy as np

WIRE_VERSION = 1
DEFAULT_MAX_BYTES = 64 * 2**20  # a 1000-transition HalfCheetah chunk is ~0.25 MB

# field -> (exact dtype string, shape in symbols). N: transitions in the chunk; D_s, D_a: observation and
# action dims; nq, nv: MuJoCo qpos/qvel dims (the state *before* the transition, for set_state).
CHUNK_SCHEMA: dict[str, tuple[str, tuple[str, ...]]] = {
    "observations": ("<f4", ("N", "D_s")),
    "actions": ("<f4", ("N", "D_a")),
    "rewards": ("<f4", ("N",)),
    "next_observations": ("<f4", ("N", "D_s")),
    "terminated": ("|b1", ("N",)),
    "truncated": ("|b1", ("N",)),
    "qpos": ("<f8", ("N", "nq")),
    "qvel": ("<f8", ("N", "nv")),
    "episode_ids": ("<i8", ("N",)),
}
SCALAR_FIELDS = ("runner_id", "seq_no")  # non-negative ints below 2**63
_MAX_SCALAR = 2**63 - 1
_ARRAY_ENTRY_KEYS = ("dtype", "shape", "data")


class WireError(ValueError):
    """A chunk (encoded or in memory) that does not match `CHUNK_SCHEMA`; the message names the field."""


@dataclass(frozen=True)
class ChunkInfo:
    """What `validate_chunk` learned: the number of transitions and the size of every symbolic dim."""

    num_transitions: int
    dims: dict[str, int]
    runner_id: int
    seq_no: int


def _check_scalar(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise WireError(f"field {name!r}: got {type(value).__name__} {value!r:.60}; allowed: an int in [0, 2**63)")
    value = int(value)
    if not 0 <= value <= _MAX_SCALAR:
        raise WireError(f"field {name!r}: got {value}; allowed: an int in [0, 2**63)")
    return value


def validate_chunk(chunk, *, expected_dims: dict[str, int] | None = None) -> ChunkInfo:
    """Check an in-memory chunk against `CHUNK_SCHEMA`; return its sizes or raise `WireError`.

    Checks: a dict with exactly the schema's fields; numpy arrays of exactly the schema's dtype and rank;
    one N >= 1 for all fields; D_s shared by observations and next_observations; every dim >= 1 and equal
    to `expected_dims` where given; finite floats; booleans stored as 0/1 bytes.
    """
    if not isinstance(chunk, dict):
        raise WireError(f"chunk: got {type(chunk).__name__}; allowed: a dict with fields {sorted(CHUNK_SCHEMA)}")
    allowed = set(CHUNK_SCHEMA) | set(SCALAR_FIELDS)
    unknown = sorted(str(k) for k in chunk if k not in allowed)
    if unknown:
        raise WireError(f"field {unknown[0]!r}: unknown field; allowed: {sorted(allowed)}")
    missing = [k for k in (*CHUNK_SCHEMA, *SCALAR_FIELDS) if k not in chunk]
    if missing:
        raise WireError(f"field {missing[0]!r}: missing; required: {sorted(allowed)}")
    runner_id = _check_scalar("runner_id", chunk["runner_id"])
    seq_no = _check_scalar("seq_no", chunk["seq_no"])

    dims: dict[str, int] = {}
    for name, (dtype, symbols) in CHUNK_SCHEMA.items():
        array = chunk[name]
        if not isinstance(array, np.ndarray):
            raise WireError(f"field {name!r}: got {type(array).__name__}; allowed: a numpy array of dtype {dtype}")
        if array.dtype.str != dtype:
            raise WireError(f"field {name!r}: dtype {array.dtype.str}; allowed: exactly {dtype}")
        if array.ndim != len(symbols):
            raise WireError(f"field {name!r}: shape {list(array.shape)}; allowed: [{', '.join(symbols)}]")
        for symbol, size in zip(symbols, array.shape, strict=True):
            if symbol not in dims:
                dims[symbol] = int(size)
            elif dims[symbol] != size:
                raise WireError(
                    f"field {name!r}: shape {list(array.shape)} has {symbol}={size}; "
                    f"allowed: {symbol}={dims[symbol]} as in the fields before it"
                )
    for symbol, size in dims.items():
        if size < 1:
            raise WireError(f"dim {symbol}: got {size}; allowed: >= 1")
        if expected_dims is not None and symbol in expected_dims and size != expected_dims[symbol]:
            raise WireError(f"dim {symbol}: got {size}; allowed: {expected_dims[symbol]} (this buffer's size)")

    for name, (dtype, _) in CHUNK_SCHEMA.items():
        array = chunk[name]
        if dtype[1] == "f":
            finite = np.isfinite(array)
            if not finite.all():
                first = int(np.flatnonzero(~finite.reshape(-1))[0])
                raise WireError(
                    f"field {name!r}: {int((~finite).sum())} non-finite value(s), first {array.reshape(-1)[first]} "
                    f"at flat index {first}; allowed: finite floats only"
                )
        elif dtype == "|b1" and (array.view(np.uint8) > 1).any():
            raise WireError(f"field {name!r}: boolean bytes other than 0/1; allowed: 0 or 1")
    return ChunkInfo(num_transitions=dims["N"], dims=dims, runner_id=runner_id, seq_no=seq_no)


def encode_chunk(chunk: dict) -> bytes:
    """Validate `chunk` and pack it as a msgpack map (format `WIRE_VERSION`)."""
    info = validate_chunk(chunk)
    message: dict = {"v": WIRE_VERSION, "runner_id": info.runner_id, "seq_no": info.seq_no}
    for name, (dtype, _) in CHUNK_SCHEMA.items():
        array = np.ascontiguousarray(chunk[name])
        message[name] = {"dtype": dtype, "shape": list(array.shape), "data": array.tobytes()}
    return msgpack.packb(message, use_bin_type=True)


def _refuse_ext(code, data):
    raise WireError(f"chunk: msgpack ext type {code}; allowed: no ext types")


def decode_chunk(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Unpack and validate one encoded chunk; any problem raises `WireError`.

    The arrays are read-only views of `data` (no copy). `max_bytes` bounds the message before unpacking.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"chunk: got {type(data).__name__}; allowed: bytes")
    if len(data) > max_bytes:
        raise WireError(f"chunk: {len(data)} bytes; allowed: at most max_bytes={max_bytes}")
    try:
        message = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            ext_hook=_refuse_ext,
            max_bin_len=max_bytes,
            max_str_len=256,
            max_array_len=16,
            max_map_len=32,
            max_ext_len=0,
        )
    except WireError:
        raise
    except Exception as error:  # msgpack raises several types (ExtraData, FormatError, ValueError, ...)
        if "max_ext_len" in str(error):  # max_ext_len=0 refuses every ext type, timestamps included
            raise WireError("chunk: contains a msgpack ext type; allowed: no ext types") from None
        detail = f"{type(error).__name__}: {error}"[:160]
        raise WireError(f"chunk: not a valid msgpack message ({detail}); "
                        "allowed: a map as encode_chunk writes") from None

    if not isinstance(message, dict):
        raise WireError(f"chunk: top level is {type(message).__name__}; allowed: a msgpack map")
    version = message.get("v")
    if type(version) is not int or version != WIRE_VERSION:
        raise WireError(f"field 'v': got {version!r:.60}; allowed: {WIRE_VERSION}")
    chunk: dict = {}
    for key, value in message.items():
        if key == "v":
            continue
        if key not in CHUNK_SCHEMA:
            chunk[key] = value  # scalars, and unknown keys for validate_chunk to name
            continue
        chunk[key] = _decode_array(key, value)
    validate_chunk(chunk)
    return chunk


def _decode_array(name: str, entry) -> np.ndarray:
    dtype, symbols = CHUNK_SCHEMA[name]
    if not isinstance(entry, dict) or sorted(entry) != sorted(_ARRAY_ENTRY_KEYS):
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise WireError(f"field {name!r}: entry {keys!r:.80}; allowed: a map with keys {list(_ARRAY_ENTRY_KEYS)}")
    if entry["dtype"] != dtype:
        raise WireError(f"field {name!r}: dtype {entry['dtype']!r:.40}; allowed: exactly {dtype!r}")
    shape = entry["shape"]
    if (
        not isinstance(shape, list)
        or len(shape) != len(symbols)
        or any(type(s) is not int or s < 0 for s in shape)
    ):
        raise WireError(f"field {name!r}: shape {shape!r:.80}; "
                        f"allowed: {len(symbols)} non-negative ints {list(symbols)}")
    raw = entry["data"]
    if not isinstance(raw, bytes):
        raise WireError(f"field {name!r}: data is {type(raw).__name__}; allowed: bin bytes")
    itemsize = np.dtype(dtype).itemsize
    expected = math.prod(shape) * itemsize
    if len(raw) != expected:
        raise WireError(
            f"field {name!r}: {len(raw)} data bytes; allowed: prod(shape {shape}) * {itemsize} = {expected}"
        )
    return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
