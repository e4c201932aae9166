"""Ray shell around `ReplayBuffer`: one actor that env runners stream chunks to (ARCHITECTURE.md).

Usage: `actor = ReplayActor.as_remote(num_cpus=1).remote(obs_dim=..., act_dim=..., qpos_dim=...,
qvel_dim=..., capacity=...)`. Windows come back as numpy arrays (Ray's zero-copy path), not msgpack.
"""

from __future__ import annotations

import os

import numpy as np
import ray

from agd_ray.replay.buffer import _JSON_NAME, ReplayBuffer


class ReplayActor:
    """Owns one `ReplayBuffer`; every method is a remote call on the actor."""

    def __init__(self, *, obs_dim: int, act_dim: int, qpos_dim: int, qvel_dim: int, capacity: int, seed: int = 0,
                 action_bound: float | None = None):
        self.buffer = ReplayBuffer(obs_dim, act_dim, qpos_dim, qvel_dim, capacity, seed=seed, action_bound=action_bound)

    @classmethod
    def as_remote(cls, *, num_cpus: float = 1, **options):
        """The Ray actor class, with resources decided at use time."""
        return ray.remote(num_cpus=num_cpus, **options)(cls)

    def add_encoded(self, data: bytes) -> int:
        """Add one msgpack-encoded chunk (wire.py); returns transitions added (0 for a duplicate)."""
        return self.buffer.add_encoded(data)

    def add_chunk(self, chunk: dict) -> int:
        """Add one chunk given as a dict of numpy arrays (validated like an encoded one)."""
        return self.buffer.add_chunk(chunk)

    def sample_windows(self, *, batch_size: int, horizon: int, seed: int | None = None) -> dict:
        """`batch_size` windows of `horizon` steps; with `seed`, a fresh generator makes the call repeatable."""
        rng = None if seed is None else np.random.default_rng(seed)
        return self.buffer.sample_windows(batch_size, horizon, rng=rng)

    def sample_start_states(self, *, batch_size: int, horizon: int = 1, seed: int | None = None,
                            with_state: bool = False):
        """Observations [batch_size, D_s] at valid window starts (for imagination); with `with_state` a dict
        that adds their qpos and qvel (`ReplayBuffer.sample_start_states`)."""
        rng = None if seed is None else np.random.default_rng(seed)
        return self.buffer.sample_start_states(batch_size, horizon=horizon, rng=rng, with_state=with_state)

    def normalizer_snapshot(self) -> dict:
        """The current normaliser snapshot as a plain dict (`NormalizerSnapshot.from_dict` rebuilds it)."""
        return self.buffer.normalizer_snapshot().to_dict()

    def metrics(self) -> dict:
        """`replay/...` counters for the training result."""
        return self.buffer.metrics()

    def stream_seq_numbers(self) -> dict:
        """Stream id -> last accepted chunk seq_no (`ReplayBuffer.stream_seq_numbers`)."""
        return self.buffer.stream_seq_numbers()

    def size(self) -> int:
        """Transitions currently stored."""
        return len(self.buffer)

    def save(self, path: str) -> None:
        """Write the buffer to directory `path` (see `ReplayBuffer.save`)."""
        self.buffer.save(path)

    def restore(self, path: str) -> None:
        """Replace the buffer with the one saved in directory `path`."""
        self.buffer = ReplayBuffer.load(path)

    def snapshot_found(self, path: str) -> tuple[bool, str]:
        """Whether this actor's node sees a buffer saved in directory `path` (the nodes of a cluster share only
        the filesystems they mount), and this node's Ray id."""
        return os.path.isfile(os.path.join(path, _JSON_NAME)), ray.get_runtime_context().get_node_id()
