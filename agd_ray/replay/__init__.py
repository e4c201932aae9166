"""Replay: real transitions in, windows and normaliser snapshots out (ARCHITECTURE.md, data flow).

`buffer.ReplayBuffer` is plain numpy; `wire` is the msgpack chunk codec; `actor.ReplayActor` is the Ray
shell (import it from `agd_ray.replay.actor`, so that the buffer and codec do not import Ray).
"""

from agd_ray.replay.buffer import ReplayBuffer
from agd_ray.replay.wire import CHUNK_SCHEMA, WIRE_VERSION, WireError, decode_chunk, encode_chunk, validate_chunk

__all__ = [
    "CHUNK_SCHEMA",
    "WIRE_VERSION",
    "ReplayBuffer",
    "WireError",
    "decode_chunk",
    "encode_chunk",
    "validate_chunk",
]
