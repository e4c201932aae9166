"""Replay buffer of real transitions, sampled as fixed-length windows (ALGORITHM.md section 1).

Plain numpy, no Ray (the Ray actor in actor.py is a thin shell around `ReplayBuffer`).

Storage is a preallocated ring of transitions in arrival order, oldest overwritten first. Transitions of
one episode arrive in order but interleave with other runners' episodes, so each stored transition keeps
its step within its episode and the slot of the episode's next transition (`_next`); a window is gathered
by following these links H-1 times, vectorised over the batch. Because eviction follows arrival order,
what remains of an episode is always a suffix of what arrived, and a window (which only reaches forward
from a stored start) never touches an overwritten slot.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np

from agd_ray.replay.wire import DEFAULT_MAX_BYTES, WireError, decode_chunk, validate_chunk
from agd_ray.world_model.normalizer import FIELDS, NormalizerSnapshot, RunningStats

# Episode status in the episode table.
OPEN, TERMINATED, TRUNCATED = 0, 1, 2

_STORAGE = {  # slot arrays: name -> (dtype, trailing dim attribute or None)
    "observations": (np.float32, "obs_dim"),
    "next_observations": (np.float32, "obs_dim"),
    "actions": (np.float32, "act_dim"),
    "rewards": (np.float32, None),
    "terminated": (np.bool_, None),
    "truncated": (np.bool_, None),
    "qpos": (np.float64, "qpos_dim"),
    "qvel": (np.float64, "qvel_dim"),
    "episode_ids": (np.int64, None),
    "step": (np.int64, None),  # index of the transition within its episode
    "episode_row": (np.int64, None),  # row of its episode in the episode table
    "next_slot": (np.int64, None),  # slot of the episode's next transition; -1 while it is not stored
}
_EPISODE_TABLE = ("ep_id", "ep_len", "ep_status", "ep_stored", "ep_last_slot", "ep_runner")
_CHECKPOINT_FORMAT = "agd-ray-replay"
_CHECKPOINT_VERSION = 1
_JSON_NAME = "replay.json"


class ReplayBuffer:
    """FIFO ring buffer of transitions that samples windows of whole-episode steps.

    Window semantics (ALGORITHM.md section 1): `rewards[h]` and `terminals[h]` belong to the transition
    `observations[h], actions[h] -> observations[h+1]`. A window never spans two episodes. After a
    termination it is padded (last state, last action repeated, reward 0, terminal 1); it never runs past
    the stored end of an ongoing or truncated episode. Starts are uniform over the valid ones.

    Chunks from a runner carry a `seq_no`: a chunk whose `seq_no` is not above the runner's last accepted
    one is a duplicate and is refused (returns 0). Missing numbers are counted as gaps, and the runner's
    open episodes are ended there (as if truncated), so that no window bridges the missing transitions.
    """

    def __init__(self, obs_dim: int, act_dim: int, qpos_dim: int, qvel_dim: int, capacity: int, seed: int = 0,
                 action_bound: float | None = None):
        for name, value in (("obs_dim", obs_dim), ("act_dim", act_dim), ("qpos_dim", qpos_dim),
                            ("qvel_dim", qvel_dim), ("capacity", capacity)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"ReplayBuffer {name}={value!r}; allowed: an int >= 1")
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.qpos_dim, self.qvel_dim = int(qpos_dim), int(qvel_dim)
        self.capacity = int(capacity)
        self.seed = int(seed)
        if action_bound is not None and not (isinstance(action_bound, (int, float)) and action_bound > 0):
            raise ValueError(f"ReplayBuffer action_bound={action_bound!r}; allowed: None or a number > 0")
        self.action_bound = None if action_bound is None else float(action_bound)  # |action| <= this, or refused
        self._expected_dims = {"D_s": self.obs_dim, "D_a": self.act_dim, "nq": self.qpos_dim, "nv": self.qvel_dim}
        self._slots = {
            name: np.zeros((self.capacity,) + ((getattr(self, dim),) if dim else ()), dtype=dtype)
            for name, (dtype, dim) in _STORAGE.items()
        }
        self._slots["episode_row"].fill(-1)
        self._slots["next_slot"].fill(-1)
        self._ptr = 0  # next slot to write; the oldest stored slot once full
        self._size = 0
        # Episode table, rows recycled once an ended episode has no stored transition left.
        self._num_rows = 0
        self._table = {name: np.zeros(0, dtype=np.int64) for name in _EPISODE_TABLE}
        self._free_rows: list[int] = []
        self._open: dict[int, int] = {}  # episode id -> row, for episodes that have not ended
        self._last_seq: dict[int, int] = {}  # runner id -> last accepted seq_no
        self.num_added = 0
        self.num_rejected_chunks = 0
        self.num_duplicate_chunks = 0
        self.num_gaps = 0
        self.stats = RunningStats()
        self._snapshot: NormalizerSnapshot | None = None
        self._snapshot_version = 0
        self._snapshot_count = 0
        self._rng = np.random.default_rng(seed)
        self._valid_cache: dict[int, np.ndarray] = {}  # horizon -> valid start slots

    @staticmethod
    def bytes_per_transition(obs_dim: int, act_dim: int, qpos_dim: int, qvel_dim: int) -> int:
        """Bytes of the slot arrays per transition of capacity (allocated in full when the buffer is made)."""
        dims = {"obs_dim": obs_dim, "act_dim": act_dim, "qpos_dim": qpos_dim, "qvel_dim": qvel_dim}
        return sum(np.dtype(dtype).itemsize * (dims[dim] if dim else 1) for dtype, dim in _STORAGE.values())

    # ------------------------------------------------------------------ sizes and metrics
    def __len__(self) -> int:
        return self._size

    @property
    def num_episodes(self) -> int:
        """Episodes (or gap-separated episode segments) with at least one stored transition."""
        return int((self._table["ep_stored"][: self._num_rows] > 0).sum())

    def metrics(self) -> dict:
        return {
            "replay/size": self._size,
            "replay/num_added": self.num_added,
            "replay/num_episodes": self.num_episodes,
            "replay/num_rejected_chunks": self.num_rejected_chunks,
            "replay/num_duplicate_chunks": self.num_duplicate_chunks,
            "replay/num_gaps": self.num_gaps,
        }

    def stream_seq_numbers(self) -> dict[int, int]:
        """Stream (runner) id -> the last chunk seq_no accepted from it."""
        return dict(self._last_seq)

    # ------------------------------------------------------------------ adding
    def add_encoded(self, data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
        """Decode one msgpack chunk (wire.py) and add it; returns the number of transitions added."""
        try:
            chunk = decode_chunk(data, max_bytes=max_bytes)
        except WireError:
            self.num_rejected_chunks += 1
            raise
        return self.add_chunk(chunk)

    def add_chunk(self, chunk: dict) -> int:
        """Validate and add one chunk; returns the number added (0 for a duplicate `seq_no`).

        A chunk that fails validation raises `ValueError` (`WireError` for schema problems) and leaves the
        stored data unchanged.
        """
        try:
            info = validate_chunk(chunk, expected_dims=self._expected_dims)
            self._check_episodes(chunk, info.runner_id)
            if self.action_bound is not None:
                worst = float(np.abs(chunk["actions"]).max(initial=0.0))
                if worst > self.action_bound:
                    raise ValueError(f"field 'actions': |action| up to {worst:.6g}; allowed: within "
                                     f"[-{self.action_bound:g}, {self.action_bound:g}] (the executed action box)")
        except ValueError:
            self.num_rejected_chunks += 1
            raise
        runner, seq = info.runner_id, info.seq_no
        last = self._last_seq.get(runner, -1)
        if seq <= last:
            self.num_duplicate_chunks += 1
            return 0
        if seq > last + 1:
            self.num_gaps += seq - last - 1
            self._end_open_episodes(runner)
        self._last_seq[runner] = seq

        n = info.num_transitions
        self.stats.update({
            "observations": chunk["observations"],
            "actions": chunk["actions"],
            "rewards": chunk["rewards"],
            "terminals": chunk["terminated"].astype(np.float32),
        })
        for lo in range(0, n, self.capacity):  # a chunk larger than the ring: only its tail survives
            self._write(chunk, lo, min(n, lo + self.capacity), runner)
        self.num_added += n
        self._valid_cache.clear()
        return n

    def _check_episodes(self, chunk: dict, runner: int) -> None:
        """Refuse a chunk that continues an episode after its end, or another runner's open episode."""
        ids = chunk["episode_ids"]
        done = chunk["terminated"] | chunk["truncated"]
        unique, inverse = np.unique(ids, return_inverse=True)
        last_pos = np.zeros(len(unique), dtype=np.int64)
        np.maximum.at(last_pos, inverse, np.arange(len(ids)))
        bad = np.flatnonzero(done & (np.arange(len(ids)) != last_pos[inverse]))
        if len(bad):
            i = int(bad[0])
            raise ValueError(
                f"field 'episode_ids': episode {int(ids[i])} ends at index {i} (terminated/truncated) but "
                f"continues at index {int(last_pos[inverse[i]])}; allowed: an episode's last transition ends it"
            )
        for episode_id in unique.tolist():
            row = self._open.get(episode_id)
            if row is not None and self._table["ep_runner"][row] != runner:
                raise ValueError(
                    f"field 'episode_ids': episode {episode_id} from runner {runner} is open from runner "
                    f"{int(self._table['ep_runner'][row])}; allowed: episode ids unique across runners"
                )

    def _end_open_episodes(self, runner: int) -> None:
        """After a gap in a runner's chunks: its open episodes end here, as if truncated."""
        table = self._table
        for episode_id, row in list(self._open.items()):
            if table["ep_runner"][row] == runner:
                table["ep_status"][row] = TRUNCATED
                del self._open[episode_id]
                if table["ep_stored"][row] == 0:
                    self._free_rows.append(row)
        self._valid_cache.clear()

    def _new_row(self, episode_id: int, runner: int) -> int:
        if self._free_rows:
            row = self._free_rows.pop()
        else:
            if self._num_rows == len(self._table["ep_id"]):
                grown = max(16, 2 * self._num_rows)
                for name, array in self._table.items():
                    self._table[name] = np.concatenate([array, np.zeros(grown - len(array), dtype=np.int64)])
            row = self._num_rows
            self._num_rows += 1
        for name, value in (("ep_id", episode_id), ("ep_len", 0), ("ep_status", OPEN), ("ep_stored", 0),
                            ("ep_last_slot", -1), ("ep_runner", runner)):
            self._table[name][row] = value
        return row

    def _write(self, chunk: dict, lo: int, hi: int, runner: int) -> None:
        """Write transitions lo..hi-1 of a validated chunk (hi - lo <= capacity) into the ring."""
        m = hi - lo
        slots = (self._ptr + np.arange(m)) % self.capacity  # [m]
        store, table = self._slots, self._table

        # Evict: the last n_over slots written are the oldest stored ones.
        n_over = max(0, self._size + m - self.capacity)
        if n_over:
            old = slots[m - n_over:]
            counts = np.bincount(store["episode_row"][old], minlength=self._num_rows)
            touched = np.flatnonzero(counts)
            table["ep_stored"][touched] -= counts[touched]
            emptied = touched[(table["ep_stored"][touched] == 0) & (table["ep_status"][touched] != OPEN)]
            self._free_rows.extend(emptied.tolist())

        ids = chunk["episode_ids"][lo:hi]
        unique, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        rows_u = np.empty(len(unique), dtype=np.int64)  # [U] table row of each episode in the piece
        for u, episode_id in enumerate(unique.tolist()):
            row = self._open.get(episode_id)
            if row is None:
                row = self._open[episode_id] = self._new_row(episode_id, runner)
            rows_u[u] = row

        # Rank of each transition within its episode in this piece (chunk order is episode order).
        order = np.argsort(inverse, kind="stable")
        sizes = np.bincount(inverse, minlength=len(unique))  # [U]
        starts = np.cumsum(sizes) - sizes
        rank = np.empty(m, dtype=np.int64)
        rank[order] = np.arange(m) - np.repeat(starts, sizes)
        last_idx = order[starts + sizes - 1]  # [U] index in the piece of each episode's last transition

        for name in ("observations", "next_observations", "actions", "rewards", "terminated", "truncated",
                     "qpos", "qvel", "episode_ids"):
            store[name][slots] = chunk[name][lo:hi]
        store["episode_row"][slots] = rows_u[inverse]
        store["step"][slots] = table["ep_len"][rows_u][inverse] + rank
        store["next_slot"][slots] = -1
        sorted_slots, sorted_groups = slots[order], inverse[order]
        same = sorted_groups[1:] == sorted_groups[:-1]
        store["next_slot"][sorted_slots[:-1][same]] = sorted_slots[1:][same]
        # Link the episode's previously stored last transition (if any is still stored) to this piece.
        has_prev = table["ep_stored"][rows_u] > 0
        store["next_slot"][table["ep_last_slot"][rows_u][has_prev]] = slots[first][has_prev]

        table["ep_last_slot"][rows_u] = slots[last_idx]
        table["ep_len"][rows_u] += sizes
        table["ep_stored"][rows_u] += sizes
        terminated = chunk["terminated"][lo:hi][last_idx]
        truncated = chunk["truncated"][lo:hi][last_idx]
        status = np.where(terminated, TERMINATED, np.where(truncated, TRUNCATED, OPEN))
        table["ep_status"][rows_u] = status
        for episode_id in unique[status != OPEN].tolist():
            del self._open[episode_id]

        self._ptr = (self._ptr + m) % self.capacity
        self._size = min(self.capacity, self._size + m)

    # ------------------------------------------------------------------ sampling
    def _valid_starts(self, horizon: int) -> np.ndarray:
        """Slots where a window of `horizon` transitions may start (cached until the next add)."""
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ValueError(f"horizon={horizon!r}; allowed: an int >= 1")
        horizon = int(horizon)
        valid = self._valid_cache.get(horizon)
        if valid is None:
            n, rows = self._size, self._num_rows  # stored slots are 0..n-1: the ring fills slot 0 first
            # Last valid start step per episode: a terminated episode pads its windows, so any stored step;
            # otherwise all H transitions must have arrived.
            last_start = np.where(self._table["ep_status"][:rows] == TERMINATED, np.iinfo(np.int64).max,
                                  self._table["ep_len"][:rows] - horizon)
            ok = self._slots["step"][:n] <= last_start[self._slots["episode_row"][:n]]
            valid = self._valid_cache[horizon] = np.flatnonzero(ok)
        return valid

    def _sample_starts(self, batch_size: int, horizon: int, rng) -> np.ndarray:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}; allowed: an int >= 1")
        valid = self._valid_starts(horizon)
        if len(valid) == 0:
            raise ValueError(
                f"no valid window start for horizon={horizon}: the buffer holds {self._size} transitions "
                f"in {self.num_episodes} episodes; add more data or use a shorter horizon"
            )
        rng = self._rng if rng is None else rng
        return valid[rng.integers(len(valid), size=int(batch_size))]

    def sample_windows(self, batch_size: int, horizon: int, *, rng: np.random.Generator | None = None) -> dict:
        """Uniformly sampled windows: observations [B,H,D_s], actions [B,H,D_a], rewards [B,H],
        terminals [B,H] (float32 0/1), qpos [B,nq] and qvel [B,nv] (MuJoCo state at the window's start)."""
        start = self._sample_starts(batch_size, horizon, rng)  # [B] slots
        store = self._slots
        B, H = len(start), int(horizon)
        observations = np.empty((B, H, self.obs_dim), dtype=np.float32)
        actions = np.empty((B, H, self.act_dim), dtype=np.float32)
        rewards = np.empty((B, H), dtype=np.float32)
        terminals = np.empty((B, H), dtype=np.float32)
        slot = start.copy()
        padded = np.zeros(B, dtype=bool)  # past a termination: repeat the last state and action
        for h in range(H):
            observations[:, h] = np.where(padded[:, None], store["next_observations"][slot],
                                          store["observations"][slot])
            actions[:, h] = store["actions"][slot]
            rewards[:, h] = np.where(padded, 0.0, store["rewards"][slot])
            padded = padded | store["terminated"][slot]
            terminals[:, h] = padded
            if h < H - 1:
                slot = np.where(padded, slot, store["next_slot"][slot])
                if (slot < 0).any():  # valid starts guarantee the links; this would be a bug here
                    raise RuntimeError("replay buffer: window ran past a stored episode end")
        return {
            "observations": observations,
            "actions": actions,
            "rewards": rewards,
            "terminals": terminals,
            "qpos": store["qpos"][start],
            "qvel": store["qvel"][start],
        }

    def sample_start_states(self, batch_size: int, *, horizon: int = 1, rng: np.random.Generator | None = None,
                            with_state: bool = False):
        """Observations [B, D_s] at uniformly sampled valid starts of `horizon`-step windows; with `with_state`
        a dict of those observations and their MuJoCo states qpos [B, nq], qvel [B, nv] (simulator imagination)."""
        start = self._sample_starts(batch_size, horizon, rng)
        if not with_state:
            return self._slots["observations"][start]
        return {name: self._slots[name][start] for name in ("observations", "qpos", "qvel")}

    # ------------------------------------------------------------------ normaliser
    def normalizer_snapshot(self) -> NormalizerSnapshot:
        """Statistics of every transition ever added; the version rises only when new data arrived.

        Version 0 (identity) while the buffer is empty.
        """
        if self.stats.count == 0:
            return NormalizerSnapshot.identity(self.obs_dim, self.act_dim)
        if self._snapshot_count != self.stats.count:
            self._snapshot_version += 1
            self._snapshot_count = self.stats.count
            self._snapshot = None
        if self._snapshot is None:
            self._snapshot = self.stats.snapshot(self._snapshot_version)
        return self._snapshot

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the buffer to directory `path`: `replay-<sha>.npz` and `replay.json` (atomic replace)."""
        os.makedirs(path, exist_ok=True)
        n, rows = self._size, self._num_rows
        arrays = {f"slot_{name}": array[:n] for name, array in self._slots.items()}
        arrays.update({f"table_{name}": array[:rows] for name, array in self._table.items()})
        arrays["free_rows"] = np.asarray(self._free_rows, dtype=np.int64)
        arrays["open_ids"] = np.asarray(list(self._open), dtype=np.int64)
        arrays["open_rows"] = np.asarray(list(self._open.values()), dtype=np.int64)
        arrays["seq_runners"] = np.asarray(list(self._last_seq), dtype=np.int64)
        arrays["seq_last"] = np.asarray(list(self._last_seq.values()), dtype=np.int64)
        stats = self.stats.state_dict()
        for key in FIELDS if stats["count"] else ():
            arrays[f"stats_mean_{key}"] = stats["mean"][key]
            arrays[f"stats_m2_{key}"] = stats["m2"][key]

        tmp_npz = _write_atomic_tmp(path, ".npz.tmp", lambda f: np.savez(f, **arrays))
        digest = _sha256(tmp_npz)
        npz_name = f"replay-{digest[:16]}.npz"
        os.replace(tmp_npz, os.path.join(path, npz_name))
        meta = {
            "format": _CHECKPOINT_FORMAT,
            "format_version": _CHECKPOINT_VERSION,
            "npz": npz_name,
            "sha256": digest,
            "dims": {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "qpos_dim": self.qpos_dim,
                     "qvel_dim": self.qvel_dim, "capacity": self.capacity, "seed": self.seed,
                     "action_bound": self.action_bound},
            "ptr": self._ptr,
            "size": n,
            "num_rows": rows,
            "num_added": self.num_added,
            "num_rejected_chunks": self.num_rejected_chunks,
            "num_duplicate_chunks": self.num_duplicate_chunks,
            "num_gaps": self.num_gaps,
            "stats_count": stats["count"],
            "snapshot_version": self._snapshot_version,
            "snapshot_count": self._snapshot_count,
            "rng_state": self._rng.bit_generator.state,
        }
        text = json.dumps(meta, indent=1).encode()
        tmp_json = _write_atomic_tmp(path, ".json.tmp", lambda f: f.write(text))
        os.replace(tmp_json, os.path.join(path, _JSON_NAME))
        _fsync_dir(path)
        for name in os.listdir(path):  # older npz files, no longer referenced
            if name.startswith("replay-") and name.endswith(".npz") and name != npz_name:
                os.remove(os.path.join(path, name))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReplayBuffer":
        """Restore a buffer written by `save`; a missing, corrupt or mismatching file raises ValueError."""
        meta, npz_path = cls.check_saved(path)
        try:
            buffer = cls(**meta["dims"])
            with np.load(npz_path, allow_pickle=False) as data:
                buffer._restore(meta, {key: data[key] for key in data.files})
        except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
            raise ValueError(f"replay checkpoint {npz_path}: cannot restore ({error})") from None
        return buffer

    @staticmethod
    def check_saved(path: str | os.PathLike) -> tuple[dict, str]:
        """The metadata and npz path of a buffer written by `save`, after checking the format and the npz file's
        sha256 (reads the file once, loads nothing); a missing or corrupt file raises ValueError naming it."""
        json_path = os.path.join(path, _JSON_NAME)
        try:
            with open(json_path, "rb") as f:
                meta = json.loads(f.read())
            if meta.get("format") != _CHECKPOINT_FORMAT or meta.get("format_version") != _CHECKPOINT_VERSION:
                raise ValueError(f"format {meta.get('format')!r} v{meta.get('format_version')!r}; "
                                 f"allowed: {_CHECKPOINT_FORMAT!r} v{_CHECKPOINT_VERSION}")
            npz_name = meta["npz"]
            if not isinstance(npz_name, str) or os.path.basename(npz_name) != npz_name:
                raise ValueError(f"npz name {npz_name!r}; allowed: a file name in the same directory")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"replay checkpoint {json_path}: unreadable metadata ({error})") from None

        npz_path = os.path.join(path, npz_name)
        try:
            digest = _sha256(npz_path)
        except OSError as error:
            raise ValueError(f"replay checkpoint {npz_path}: cannot read ({error})") from None
        if digest != meta.get("sha256"):
            raise ValueError(f"replay checkpoint {npz_path}: sha256 {digest} does not match {meta.get('sha256')} "
                             f"recorded in {json_path}; the file is corrupt or from another save")
        return meta, npz_path

    def _restore(self, meta: dict, arrays: dict) -> None:
        n, rows = int(meta["size"]), int(meta["num_rows"])
        if not 0 <= n <= self.capacity:
            raise ValueError(f"size {n} outside [0, capacity={self.capacity}]")
        for name, array in self._slots.items():
            saved = arrays[f"slot_{name}"]
            if saved.shape != (n,) + array.shape[1:] or saved.dtype != array.dtype:
                raise ValueError(f"array slot_{name} has shape {saved.shape} {saved.dtype}; "
                                 f"allowed: {(n,) + array.shape[1:]} {array.dtype}")
            array[:n] = saved
        for name in _EPISODE_TABLE:
            saved = arrays[f"table_{name}"]
            if saved.shape != (rows,) or saved.dtype != np.int64:
                raise ValueError(f"array table_{name} has shape {saved.shape} {saved.dtype}; allowed: ({rows},) int64")
            self._table[name] = saved.copy()
        self._num_rows = rows
        self._free_rows = arrays["free_rows"].tolist()
        self._open = dict(zip(arrays["open_ids"].tolist(), arrays["open_rows"].tolist(), strict=True))
        self._last_seq = dict(zip(arrays["seq_runners"].tolist(), arrays["seq_last"].tolist(), strict=True))
        self._ptr, self._size = int(meta["ptr"]), n
        self.num_added = int(meta["num_added"])
        self.num_rejected_chunks = int(meta["num_rejected_chunks"])
        self.num_duplicate_chunks = int(meta["num_duplicate_chunks"])
        self.num_gaps = int(meta["num_gaps"])
        if meta["stats_count"]:
            self.stats.load_state_dict({
                "count": meta["stats_count"],
                "mean": {key: arrays[f"stats_mean_{key}"] for key in FIELDS},
                "m2": {key: arrays[f"stats_m2_{key}"] for key in FIELDS},
            })
        self._snapshot_version = int(meta["snapshot_version"])
        self._snapshot_count = int(meta["snapshot_count"])
        self._rng.bit_generator.state = meta["rng_state"]


def _write_atomic_tmp(directory, suffix: str, write) -> str:
    """Write a temp file in `directory` via `write(file)`, fsync it, and return its path."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".replay-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.remove(tmp)
        raise
    return tmp


def _sha256(file_path) -> str:
    digest = hashlib.sha256()
    with open(file_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(directory) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
