"""`AGDEnvRunner`: RLlib's single-agent env runner that also streams its transitions to the replay actor.

The seam is `EnvRunner.sample()` (STYLE.md): the parent samples exactly as RLlib does (policy, connectors,
episode metrics); this subclass then turns the returned episode chunks into transition arrays and sends
them to replay as msgpack chunks of >= `chunk_size` transitions (the remainder at the end of each call).
"""

from __future__ import annotations

import numpy as np
import ray
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.spaces.space_utils import normalize_action

from agd_ray.envs.core import executed_action_bound, register_recording_env

# Episode ids on the wire are int64: stream id in the high bits, a per-stream counter in the low ones.
_EPISODE_ID_BITS = 40
# Stream id = connection number x this + worker index: a runner reconnected after a restore is a new stream
# (its chunk seq_no and episode ids start afresh without colliding with the restored replay's).
_MAX_RUNNERS = 4096


class AGDEnvRunner(SingleAgentEnvRunner):
    """Samples like `SingleAgentEnvRunner` and streams transitions to a replay actor once connected.

    Until `connect_replay` is called it behaves exactly like its parent (model-free baseline, evaluation).
    """

    def __init__(self, *, config, **kwargs):
        if isinstance(config.env, str):
            register_recording_env(config.env)
        super().__init__(config=config, **kwargs)
        self._replay = None
        self._return_episodes = True
        self._chunk_size = 1000
        self._pending: list[dict] = []
        self._pending_count = 0
        self._chunk_seq_no = 0
        self._episode_ids: dict[str, int] = {}
        self._next_episode_number = 0
        self._stream_id = int(self.worker_index or 0)

    def connect_replay(self, replay, *, chunk_size: int = 1000, return_episodes: bool = False,
                       connection: int = 0) -> int:
        """Stream every sampled transition to `replay` (an actor with `add_encoded`) from now on.

        return_episodes: whether `sample()` still returns the episodes (the model-based loop only needs the
        metrics, so by default it returns none and saves the transfer). connection: how many times this
        run has (re)connected its runners (0 at setup, +1 per restore). Returns the stream id (the chunks'
        `runner_id`).
        """
        worker_index = int(self.worker_index or 0)
        if worker_index >= _MAX_RUNNERS:
            raise ValueError(f"worker_index={worker_index} is not allowed; at most {_MAX_RUNNERS - 1} env runners")
        self._replay = replay
        self._chunk_size = int(chunk_size)
        self._return_episodes = bool(return_episodes)
        self._stream_id = int(connection) * _MAX_RUNNERS + worker_index
        self._pending, self._pending_count, self._chunk_seq_no = [], 0, 0
        self._episode_ids, self._next_episode_number = {}, 0
        return self._stream_id

    def replay_stream(self) -> int | None:
        """The stream id this runner sends to replay under, or None if it is not connected (never connected,
        or a fresh process that Ray restarted after a failure)."""
        return self._stream_id if self._replay is not None else None

    def sample(self, *, random_actions: bool = False, **kwargs):
        """`SingleAgentEnvRunner.sample`, then stream the new transitions to replay (if connected)."""
        episodes = super().sample(random_actions=random_actions, **kwargs)
        if self._replay is None:
            return episodes
        sends = []
        for episode in episodes:
            if len(episode) == 0:
                continue
            self._pending.append(self._episode_to_arrays(episode, random_actions=random_actions))
            self._pending_count += len(episode)
            if self._pending_count >= self._chunk_size:
                sends.append(self._send_pending())
        if self._pending_count:
            sends.append(self._send_pending())
        # Wait for receipt so that replay holds every step this call reports (one round trip per call).
        try:
            ray.get(sends)
        except ray.exceptions.RayActorError:
            # Replay died: these steps are lost with it (the driver counts them when it restores replay from its
            # snapshot and connects this runner again). Sampling goes on; until then nothing is sent.
            self._replay = None
            self._pending, self._pending_count = [], 0
        for episode in episodes:
            if episode.is_done:
                self._episode_ids.pop(episode.id_, None)
        return episodes if self._return_episodes else []

    def _send_pending(self):
        from agd_ray.replay.wire import encode_chunk

        chunk = {k: np.concatenate([p[k] for p in self._pending]) for k in self._pending[0]}
        chunk["runner_id"] = self._stream_id
        chunk["seq_no"] = self._chunk_seq_no
        self._chunk_seq_no += 1
        self._pending, self._pending_count = [], 0
        return self._replay.add_encoded.remote(encode_chunk(chunk))

    def _episode_number(self, episode_id: str) -> int:
        if episode_id not in self._episode_ids:
            self._episode_ids[episode_id] = self._next_episode_number
            self._next_episode_number += 1
        return (self._stream_id << _EPISODE_ID_BITS) | self._episode_ids[episode_id]

    def _episode_to_arrays(self, episode, *, random_actions: bool) -> dict:
        """One episode chunk of T steps -> transition arrays of length T (wire field names)."""
        observations = np.asarray(episode.get_observations(), dtype=np.float32)  # [T+1, D_s]
        actions = np.asarray(episode.get_actions(), dtype=np.float32)  # [T, D_a]
        infos = episode.get_infos()  # T+1, each with the sim state of observations[t]
        steps = len(actions)
        if random_actions and self.config.normalize_actions:
            # Random actions are drawn in env space; the policy (and so the world model) works in RLlib's
            # normalised action space [-1, 1], where the module's own samples live.
            actions = normalize_action(actions, self.env.single_action_space).astype(np.float32)
        bound = executed_action_bound(self.config.normalize_actions, self.env.single_action_space)
        if bound is not None:  # what the env executed: RLlib clips the module's Gaussian samples to the bounds
            actions = np.clip(actions, -bound, bound)
        terminated = np.zeros(steps, dtype=bool)
        truncated = np.zeros(steps, dtype=bool)
        terminated[-1] = episode.is_terminated
        truncated[-1] = episode.is_truncated
        return {
            "observations": observations[:-1],
            "actions": actions.reshape(steps, -1),
            "rewards": np.asarray(episode.get_rewards(), dtype=np.float32),
            "next_observations": observations[1:],
            "terminated": terminated,
            "truncated": truncated,
            "qpos": np.stack([np.asarray(i["qpos"], dtype=np.float64) for i in infos[:-1]]),
            "qvel": np.stack([np.asarray(i["qvel"], dtype=np.float64) for i in infos[:-1]]),
            "episode_ids": np.full(steps, self._episode_number(episode.id_), dtype=np.int64),
        }
