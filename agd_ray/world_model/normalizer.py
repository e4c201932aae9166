"""Per-dimension z-score normalisers with versioned, immutable snapshots (ALGORITHM.md section 1).

A training batch and the imagined batch produced from it must be (un)normalised with the *same* snapshot,
so snapshots are frozen and carry a version number; whoever holds one can always tell which statistics it
used. Statistics come either from one batch (`NormalizerSnapshot.from_batch`) or from a streaming
accumulator (`RunningStats`, used by the replay buffer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FIELDS = ("observations", "actions", "rewards", "terminals")
# A dimension whose spread is below this (a constant channel, e.g. terminals before any termination)
# is scaled by 1 instead of blown up by a tiny standard deviation.
MIN_STD = 1e-6


def _as_2d(values: np.ndarray, trailing: int) -> np.ndarray:
    """Flatten every leading axis: [..., D] -> [N, D] (or [...] -> [N, 1] for scalar fields)."""
    values = np.asarray(values, dtype=np.float64)
    if trailing == 0:
        return values.reshape(-1, 1)
    return values.reshape(-1, values.shape[-1])


@dataclass(frozen=True)
class NormalizerSnapshot:
    """Frozen z-score statistics for observations, actions, rewards and terminals.

    mean/std arrays: observations [D_s], actions [D_a], rewards [1], terminals [1]; all float64.
    """

    version: int
    mean: dict[str, np.ndarray] = field(repr=False)
    std: dict[str, np.ndarray] = field(repr=False)
    count: int = 0
    # (field, device, dtype) -> (mean, std) tensors: converted once, so the sampler's loop copies nothing.
    _tensor_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict:  # pickled (e.g. by Ray) without device tensors
        return {k: v for k, v in self.__dict__.items() if k != "_tensor_cache"}

    def __setstate__(self, state: dict) -> None:
        for key, value in {**state, "_tensor_cache": {}}.items():
            object.__setattr__(self, key, value)

    @staticmethod
    def identity(obs_dim: int, act_dim: int) -> "NormalizerSnapshot":
        """Version 0: mean 0, std 1 everywhere (what a model uses before it has seen data)."""
        dims = {"observations": obs_dim, "actions": act_dim, "rewards": 1, "terminals": 1}
        return NormalizerSnapshot(
            version=0,
            mean={k: np.zeros(d) for k, d in dims.items()},
            std={k: np.ones(d) for k, d in dims.items()},
        )

    @staticmethod
    def from_batch(batch: dict, version: int) -> "NormalizerSnapshot":
        """Statistics of one batch of windows or transitions (any leading shape)."""
        stats = RunningStats()
        stats.update(batch)
        return stats.snapshot(version)

    def normalize(self, key: str, values):
        """(values - mean) / std for field `key`; works on numpy arrays and torch tensors alike."""
        mean, std = self._stats_like(key, values)
        return (values - mean) / std

    def unnormalize(self, key: str, values):
        """values * std + mean for field `key`; the inverse of `normalize`."""
        mean, std = self._stats_like(key, values)
        return values * std + mean

    def _stats_like(self, key: str, values):
        mean, std = self.mean[key], self.std[key]
        if key in ("rewards", "terminals"):
            mean, std = mean[0], std[0]
        if isinstance(values, np.ndarray):
            return mean.astype(values.dtype), std.astype(values.dtype)
        import torch  # local: numpy users of this module do not need torch

        if isinstance(values, torch.Tensor):
            cache_key = (key, values.device, values.dtype)
            if cache_key not in self._tensor_cache:
                as_t = lambda v: torch.as_tensor(v, dtype=values.dtype, device=values.device)  # noqa: E731
                self._tensor_cache[cache_key] = (as_t(mean), as_t(std))
            return self._tensor_cache[cache_key]
        return mean, std

    def to_dict(self) -> dict:
        """Plain, msgpack- and JSON-friendly form (lists of floats)."""
        return {
            "version": self.version,
            "count": self.count,
            "mean": {k: v.tolist() for k, v in self.mean.items()},
            "std": {k: v.tolist() for k, v in self.std.items()},
        }

    @staticmethod
    def from_dict(data: dict) -> "NormalizerSnapshot":
        missing = [k for k in FIELDS if k not in data.get("mean", {}) or k not in data.get("std", {})]
        if missing:
            raise ValueError(f"normalizer snapshot lacks fields {missing}; needs mean and std for {list(FIELDS)}")
        return NormalizerSnapshot(
            version=int(data["version"]),
            count=int(data.get("count", 0)),
            mean={k: np.asarray(data["mean"][k], dtype=np.float64) for k in FIELDS},
            std={k: np.asarray(data["std"][k], dtype=np.float64) for k in FIELDS},
        )


class RunningStats:
    """Streaming per-dimension mean and variance (Chan et al.'s parallel update), one per field.

    `update` takes a dict with the four fields, any leading shape; `snapshot(version)` freezes them.
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean: dict[str, np.ndarray] = {}
        self._m2: dict[str, np.ndarray] = {}

    def update(self, batch: dict) -> None:
        arrays = {}
        for key in FIELDS:
            if key not in batch:
                raise ValueError(f"batch lacks field {key!r}; needs {list(FIELDS)}")
            arrays[key] = _as_2d(batch[key], trailing=0 if key in ("rewards", "terminals") else 1)
        n = arrays["rewards"].shape[0]
        if n == 0:
            return
        for key, x in arrays.items():
            if x.shape[0] != n:
                raise ValueError(f"field {key!r} has {x.shape[0]} rows, rewards has {n}; they must match")
            mean_b, m2_b = x.mean(axis=0), ((x - x.mean(axis=0)) ** 2).sum(axis=0)
            if self.count == 0:
                self._mean[key], self._m2[key] = mean_b, m2_b
                continue
            total = self.count + n
            delta = mean_b - self._mean[key]
            self._mean[key] = self._mean[key] + delta * (n / total)
            self._m2[key] = self._m2[key] + m2_b + delta**2 * (self.count * n / total)
        self.count += n

    def snapshot(self, version: int) -> NormalizerSnapshot:
        if self.count == 0:
            raise ValueError("no data yet: a normalizer snapshot needs at least one transition")
        std = {k: np.sqrt(m2 / self.count) for k, m2 in self._m2.items()}
        std = {k: np.where(s < MIN_STD, 1.0, s) for k, s in std.items()}
        return NormalizerSnapshot(
            version=version, mean={k: v.copy() for k, v in self._mean.items()}, std=std, count=self.count
        )

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": dict(self._mean), "m2": dict(self._m2)}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])
        self._mean = {k: np.asarray(v, dtype=np.float64) for k, v in state["mean"].items()}
        self._m2 = {k: np.asarray(v, dtype=np.float64) for k, v in state["m2"].items()}
