"""The world-model actor: a thin Ray shell around `WorldModelWorker`, a plain class tests drive without Ray.

The worker trains the diffusion model on windows pulled from replay in large chunks (ALGORITHM.md section 5,
step 2) and serves guided imagination (step 3) with the newest policy and critic: a full RLModule rebuilt
from the learner's spec, whose state arrives once per version as a Ray ObjectRef.
"""

from __future__ import annotations

import time

import numpy as np
import ray
import torch


class _ActorReplay:
    """Calls a `ReplayActor` handle as if it were a local buffer (blocking, one round trip per call)."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def sample_windows_async(self, batch_size: int, horizon: int, seed: int):
        return self.handle.sample_windows.remote(batch_size=batch_size, horizon=horizon, seed=seed)

    def sample_start_states(self, batch_size: int, seed: int):
        return ray.get(self.handle.sample_start_states.remote(batch_size=batch_size, seed=seed))

    def normalizer_snapshot(self):
        from agd_ray.world_model.normalizer import NormalizerSnapshot

        return NormalizerSnapshot.from_dict(ray.get(self.handle.normalizer_snapshot.remote()))

    @staticmethod
    def resolve(pending):
        return ray.get(pending)


class _LocalReplay:
    """The same interface over an in-process `ReplayBuffer` (unit tests, no Ray)."""

    def __init__(self, buffer) -> None:
        self.buffer = buffer

    def sample_windows_async(self, batch_size: int, horizon: int, seed: int):
        return self.buffer.sample_windows(batch_size, horizon, rng=np.random.default_rng(seed))

    def sample_start_states(self, batch_size: int, seed: int):
        return self.buffer.sample_start_states(batch_size, rng=np.random.default_rng(seed))

    def normalizer_snapshot(self):
        return self.buffer.normalizer_snapshot()

    @staticmethod
    def resolve(pending):
        return pending


def _start_observations(start_states) -> np.ndarray:
    """`sample_start_states` may return the observations or a dict holding them."""
    if isinstance(start_states, dict):
        return np.asarray(start_states["observations"], dtype=np.float32)
    return np.asarray(start_states, dtype=np.float32)


class WorldModelWorker:
    """Trains a `WorldModel` at the rate the driver asks for and imagines guided windows for PPO.

    replay: a `ReplayActor` handle or an in-process `ReplayBuffer`. module_spec: the RLModuleSpec
    (`config.get_rl_module_spec(..., inference_only=False)`) the policy and critic are rebuilt from.
    """

    def __init__(self, *, obs_dim: int, act_dim: int, world_model_config, guide_config, module_spec, replay,
                 batches_per_call: int = 16, seed: int = 0, device: str | None = None, torch_threads: int = 1):
        from agd_ray.world_model import WorldModel

        torch.set_num_threads(torch_threads)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if guide_config.kind != "reward":
            # Only the reward guide uses the return model J; training it otherwise doubles the update cost.
            world_model_config = world_model_config.replace(return_model_hidden=0)
        self.model = WorldModel(obs_dim, act_dim, world_model_config, device=device, seed=seed)
        self.guide = guide_config
        self.replay = replay if hasattr(replay, "sample_windows_async") else (
            _LocalReplay(replay) if not isinstance(replay, ray.actor.ActorHandle) else _ActorReplay(replay))
        self.batches_per_call = int(batches_per_call)
        self.module = module_spec.build()
        self.module.eval()
        self.weights_seq_no = -1
        self._seed = int(seed)
        self._pull_count = 0

    # -- weights -------------------------------------------------------------------------------------------
    def set_module_state(self, state: dict, weights_seq_no: int) -> int:
        """Load the full module state (policy and critic) of version `weights_seq_no`; returns it."""
        self.module.set_state(state)
        self.weights_seq_no = int(weights_seq_no)
        return self.weights_seq_no

    # -- training ------------------------------------------------------------------------------------------
    def train(self, *, num_updates: int) -> dict:
        """`num_updates` Adam steps on windows from replay, pulled `batches_per_call` batches per call with
        the next call in flight while the current one trains. Returns loss and counters."""
        if num_updates <= 0:
            return {"num_updates": self.model.num_updates, "loss": float("nan"), "updates_done": 0}
        start = time.perf_counter()
        self.model.set_normalizer(self.replay.normalizer_snapshot())
        batch_size, horizon = self.model.config.batch_size, self.model.config.horizon
        calls = -(-num_updates // self.batches_per_call)
        sizes = [min(self.batches_per_call, num_updates - i * self.batches_per_call) for i in range(calls)]
        pending = self._pull(sizes[0] * batch_size, horizon)
        losses, wait_s = [], 0.0
        for i, size in enumerate(sizes):
            t0 = time.perf_counter()
            windows = self.replay.resolve(pending)
            wait_s += time.perf_counter() - t0
            if i + 1 < len(sizes):
                pending = self._pull(sizes[i + 1] * batch_size, horizon)
            for j in range(size):
                batch = {k: windows[k][j * batch_size:(j + 1) * batch_size]
                         for k in ("observations", "actions", "rewards", "terminals")}
                losses.append(self.model.update(batch)["loss"])
        return {"num_updates": self.model.num_updates, "loss": float(np.mean(losses)), "updates_done": num_updates,
                "normalizer_version": self.model.normalizer.version, "train_s": time.perf_counter() - start,
                "replay_wait_s": wait_s}

    def _pull(self, num_windows: int, horizon: int):
        self._pull_count += 1
        return self.replay.sample_windows_async(num_windows, horizon, self._seed * 1_000_003 + self._pull_count)

    # -- imagination ---------------------------------------------------------------------------------------
    def imagine(self, *, batch_size: int, seed: int, advantage_gain_windows: int = 0) -> dict:
        """Guided windows from replay start states with the current policy/critic version, as numpy arrays
        ready for `windows_to_episodes`, plus metrics. Adapts the policy-guidance step afterwards."""
        from agd_ray.imagination import make_critic, make_policy, policy_outputs

        start = time.perf_counter()
        start_obs = _start_observations(self.replay.sample_start_states(batch_size, seed))
        policy, critic = make_policy(self.module), make_critic(self.module)
        out = self.model.imagine(start_obs, policy=policy, critic=critic, guide=self.guide,
                                 generator=torch.Generator().manual_seed(seed))
        adapt = self.model.adapt_policy_step(out, policy)
        windows = {k: out[k].detach().cpu() for k in ("observations", "actions", "rewards", "terminals")}
        windows.update(policy_outputs(self.module, windows["observations"], windows["actions"]))
        elapsed = time.perf_counter() - start
        metrics = {
            "num_transitions": int(batch_size * (self.model.config.horizon - 1)),
            "transitions_per_s": batch_size * (self.model.config.horizon - 1) / max(elapsed, 1e-9),
            "action_z_std": adapt["action_z_std"],
            "delta": adapt["delta"],
            "imagine_s": elapsed,
        }
        if advantage_gain_windows > 0 and self.guide.enabled:
            metrics["advantage_gain"] = self._advantage_gain(start_obs[:advantage_gain_windows], seed)
        elif advantage_gain_windows > 0:
            metrics["advantage_gain"] = 0.0
        return {"windows": {k: np.asarray(v) for k, v in windows.items()}, "weights_seq_no": self.weights_seq_no,
                "normalizer_version": out["normalizer_version"], "metrics": metrics}

    def _advantage_gain(self, start_obs: np.ndarray, seed: int) -> float:
        """Mean n-step advantage of guided minus unguided windows from the same start states and noise."""
        from agd_ray.imagination import make_critic, make_policy
        from agd_ray.world_model.diagnostics import advantage_gain

        result = advantage_gain(self.model, start_obs, policy=make_policy(self.module),
                                critic=make_critic(self.module), guide=self.guide, seed=seed, gamma=self.guide.gamma)
        return result["guidance/advantage_gain"]

    # -- state -----------------------------------------------------------------------------------------------
    def get_state(self) -> dict:
        """World model (weights, EMA, optimiser, normaliser, delta) and this worker's counters."""
        return {"model": self.model.state_dict(), "weights_seq_no": self.weights_seq_no,
                "pull_count": self._pull_count}

    def set_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.weights_seq_no = int(state["weights_seq_no"])
        self._pull_count = int(state["pull_count"])

    def counters(self) -> dict:
        return {"num_updates": self.model.num_updates, "weights_seq_no": self.weights_seq_no,
                "delta": self.model.delta, "normalizer_version": self.model.normalizer.version}


@ray.remote
class WorldModelActor(WorldModelWorker):
    """Ray shell of `WorldModelWorker`; create with `.options(num_gpus=..., num_cpus=...)`."""
