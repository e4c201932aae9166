"""`AGD`: RLlib PPO trained on guided imagined episodes from a trajectory diffusion world model.

One iteration (`training_step`) is ALGORITHM.md section 5, phase by phase, each timed:
1. real env steps (uniformly random until `replay.prefill_steps`), streamed by the env runners to replay;
2. world-model updates up to `updates_per_env_step` x env steps (at least `pretrain_updates` before the
   first imagination);
3. guided imagination from replay start states, with the newest policy and critic;
4. PPO update on the imagined episodes; new weights to the env runners (policy) and to the world model
   (policy and critic, one ObjectRef per version).
`AGDConfig().model_free()` runs PPO's own `training_step` on real data in the same harness.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import ray
from ray.rllib.algorithms.ppo import PPO
from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
from ray.rllib.env import INPUT_ENV_SINGLE_SPACES
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_MODULE_STEPS_TRAINED_LIFETIME,
    ALL_MODULES,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
    WEIGHTS_SEQ_NO,
)

from agd_ray.config import AGDConfig
from agd_ray.envs.core import make_env, register_recording_env

_EXTRA_DIR = "agd"  # inside an RLlib checkpoint: world model, replay and the loop's counters


class AGD(PPO):
    """Advantage-guided diffusion model-based RL (ALGORITHM.md) as an RLlib Algorithm; see the module doc."""

    @classmethod
    @override(PPO)
    def get_default_config(cls) -> AGDConfig:
        return AGDConfig()

    @override(PPO)
    def setup(self, config: AGDConfig) -> None:
        if isinstance(config.env, str):
            register_recording_env(config.env)
        super().setup(config)
        self._counters = {"env_steps": 0, "world_model_updates": 0, "imagined_transitions": 0,
                          "imagined_episodes": 0, "policy_updates": 0, "replay_connections": 0}
        self._replay = self._world_model = None
        if not self.config.model_based:
            return
        from agd_ray.replay.actor import ReplayActor
        from agd_ray.world_model.actor import WorldModelActor

        self._observation_space, self._action_space = self.env_runner_group.get_spaces()[INPUT_ENV_SINGLE_SPACES]
        obs_dim = int(np.prod(self._observation_space.shape))
        act_dim = int(np.prod(self._action_space.shape))
        probe = make_env(self.config.env, self.config.env_config)
        qpos_dim, qvel_dim = int(probe.unwrapped.model.nq), int(probe.unwrapped.model.nv)
        probe.close()
        seed = int(self.config.seed or 0)
        self._replay = ReplayActor.as_remote(num_cpus=0).remote(
            obs_dim=obs_dim, act_dim=act_dim, qpos_dim=qpos_dim, qvel_dim=qvel_dim,
            capacity=self.config.replay_config.capacity, seed=seed,
        )
        training = self.config.world_model_training
        self._world_model = WorldModelActor.options(num_cpus=training.num_cpus, num_gpus=training.num_gpus).remote(
            obs_dim=obs_dim,
            act_dim=act_dim,
            world_model_config=self.config.world_model_config,
            guide_config=self.config.guide_config,
            module_spec=self.config.get_rl_module_spec(
                spaces={INPUT_ENV_SINGLE_SPACES: (self._observation_space, self._action_space),
                        DEFAULT_MODULE_ID: (self._observation_space, self._action_space)},
                inference_only=False,
            ),
            replay=self._replay,
            batches_per_call=training.batches_per_call,
            seed=seed,
            device="cuda" if training.num_gpus > 0 else "cpu",
            torch_threads=training.torch_threads,
        )
        self._connect_env_runners()
        self._push_weights_to_world_model()

    def _connect_env_runners(self) -> None:
        """Env runners stream to replay from now on (a new stream per connection, see AGDEnvRunner)."""
        replay, chunk_size = self._replay, self.config.replay_config.chunk_size
        connection = self._counters["replay_connections"]
        self.env_runner_group.foreach_env_runner(
            lambda runner: runner.connect_replay(replay, chunk_size=chunk_size, return_episodes=False,
                                                 connection=connection),
            local_env_runner=True,
        )

    # ---------------------------------------------------------------------------------------------------
    @override(PPO)
    def training_step(self) -> None:
        if not self.config.model_based:
            super().training_step()
            self._counters["env_steps"] = int(
                self.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0))
            return
        self._sample_real()
        self._train_world_model()
        for _ in range(self.config.imagination_config.policy_updates_per_iteration):
            episodes = self._imagine()
            self._update_policy(episodes)
            self._sync_weights()
        self._log_counters()

    def _sample_real(self) -> None:
        """Phase 1: real env steps; uniformly random ones until `prefill_steps` are in replay."""
        with self.metrics.log_time((TIMERS, "agd_sample_real")):
            prefill = self.config.replay_config.prefill_steps
            random_actions = self._counters["env_steps"] < prefill
            num_steps = self.config.total_train_batch_size
            if random_actions:
                num_steps = max(num_steps, prefill - self._counters["env_steps"])
            _, results = synchronous_parallel_sample(
                worker_set=self.env_runner_group,
                max_env_steps=num_steps,
                random_actions=random_actions,
                sample_timeout_s=self.config.sample_timeout_s,
                _uses_new_env_runners=True,
                _return_metrics=True,
            )
            self.metrics.aggregate(results, key=ENV_RUNNER_RESULTS)
            self._counters["env_steps"] += sum(int(r.get(NUM_ENV_STEPS_SAMPLED, 0)) for r in results)

    def _train_world_model(self) -> None:
        """Phase 2: bring the world model to `updates_per_env_step` x env steps (>= `pretrain_updates`)."""
        with self.metrics.log_time((TIMERS, "agd_world_model_train")):
            training = self.config.world_model_training
            target = max(int(training.updates_per_env_step * self._counters["env_steps"]),
                         training.pretrain_updates)
            due = target - self._counters["world_model_updates"]
            result = ray.get(self._world_model.train.remote(num_updates=due))
            self._counters["world_model_updates"] = int(result["num_updates"])
            if due > 0:
                self.metrics.log_value(("world_model", "loss"), result["loss"], window=1)
                self.metrics.log_value(("world_model", "replay_wait_s"), result["replay_wait_s"], window=1)

    def _imagine(self) -> list:
        """Phase 3: guided windows from replay start states -> SingleAgentEpisodes."""
        from agd_ray.imagination import windows_to_episodes

        with self.metrics.log_time((TIMERS, "agd_imagine")):
            imagination = self.config.imagination_config
            seed = int(self.config.seed or 0) * 1_000_003 + self._counters["policy_updates"]
            out = ray.get(self._world_model.imagine.remote(
                batch_size=imagination.batch_size, seed=seed,
                advantage_gain_windows=imagination.advantage_gain_windows))
            windows = out["windows"]
            finite = np.ones(len(windows["observations"]), dtype=bool)
            for value in windows.values():
                finite &= np.isfinite(np.asarray(value, dtype=np.float64)).reshape(len(finite), -1).all(axis=1)
            windows = {k: np.asarray(v)[finite] for k, v in windows.items()}
            self.metrics.log_value(("imagination", "num_nonfinite_windows"), int((~finite).sum()), window=1)
            episodes = windows_to_episodes(windows, weights_seq_no=out["weights_seq_no"],
                                           observation_space=self._observation_space,
                                           action_space=self._action_space)
            metrics = out["metrics"]
            num_transitions = sum(len(e) for e in episodes)
            self._counters["imagined_transitions"] += num_transitions
            self._counters["imagined_episodes"] += len(episodes)
            self.metrics.log_value(("imagination", "num_transitions"), num_transitions, window=1)
            self.metrics.log_value(("imagination", "transitions_per_s"), metrics["transitions_per_s"], window=1)
            self.metrics.log_value(("imagination", "action_z_std"), metrics["action_z_std"], window=1)
            self.metrics.log_value(("imagination", "delta"), metrics["delta"], window=1)
            self.metrics.log_value(("imagination", "weights_seq_no"), out["weights_seq_no"], window=1)
            self.metrics.log_value(("imagination", "mean_episode_len"), num_transitions / len(episodes), window=1)
            if "advantage_gain" in metrics:
                self.metrics.log_value(("guidance", "advantage_gain"), metrics["advantage_gain"], window=1)
        return episodes

    def _update_policy(self, episodes: list) -> None:
        """Phase 4a: PPO on the imagined episodes through RLlib's LearnerGroup."""
        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            learner_results = self.learner_group.update(
                episodes=episodes,
                timesteps={
                    NUM_ENV_STEPS_SAMPLED_LIFETIME: self._counters["env_steps"],
                    NUM_MODULE_STEPS_TRAINED_LIFETIME: self.metrics.peek(
                        (LEARNER_RESULTS, ALL_MODULES, NUM_MODULE_STEPS_TRAINED_LIFETIME), default=0),
                },
                num_epochs=self.config.num_epochs,
                minibatch_size=self.config.minibatch_size,
                shuffle_batch_per_epoch=self.config.shuffle_batch_per_epoch,
            )
            self.metrics.aggregate(learner_results, key=LEARNER_RESULTS)
            self._counters["policy_updates"] += 1

    def _sync_weights(self) -> None:
        """Phase 4b: policy to the env runners, policy and critic to the world model."""
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)
            self._push_weights_to_world_model()

    def _push_weights_to_world_model(self) -> None:
        """Full module state (policy and critic) to the world model: one `ray.put` per weights version."""
        state = self.learner_group.get_state(
            components=f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}/{DEFAULT_MODULE_ID}")[COMPONENT_LEARNER]
        module_state = state[COMPONENT_RL_MODULE][DEFAULT_MODULE_ID]
        seq_no = int(state.get(WEIGHTS_SEQ_NO, 0))
        ray.get(self._world_model.set_module_state.remote(ray.put(module_state), seq_no))
        self._world_model_seq_no = seq_no

    def _log_counters(self) -> None:
        self.metrics.log_value(("world_model", "num_updates"), self._counters["world_model_updates"], window=1)
        self.metrics.log_value(("world_model", "weights_seq_no"), self._world_model_seq_no, window=1)
        self.metrics.log_value(("imagination", "num_transitions_lifetime"),
                               self._counters["imagined_transitions"], window=1)
        self.metrics.log_value(("agd", "env_steps_lifetime"), self._counters["env_steps"], window=1)
        self.metrics.log_value(("agd", "policy_updates"), self._counters["policy_updates"], window=1)
        self.metrics.log_value(("replay", "size"), int(ray.get(self._replay.size.remote())), window=1)

    # -- checkpoints -------------------------------------------------------------------------------------
    @override(PPO)
    def save_to_path(self, path=None, *, state=None, filesystem=None, use_msgpack=False) -> str:
        """RLlib's checkpoint plus `agd/`: world model (weights, EMA, optimiser, normaliser, delta), replay
        contents and the loop counters. Replay writes its own files: the path must be reachable from the
        replay actor's node (local Ray, or a shared filesystem on a cluster)."""
        path = super().save_to_path(path, state=state, filesystem=filesystem, use_msgpack=use_msgpack)
        extra = pathlib.Path(path) / _EXTRA_DIR
        extra.mkdir(parents=True, exist_ok=True)
        (extra / "counters.json").write_text(json.dumps(self._counters))
        if self.config.model_based:
            import torch

            torch.save(ray.get(self._world_model.get_state.remote()), extra / "world_model.pt")
            ray.get(self._replay.save.remote(str((extra / "replay").resolve())))
        return path

    @override(PPO)
    def restore_from_path(self, path, *args, **kwargs) -> None:
        super().restore_from_path(path, *args, **kwargs)
        extra = pathlib.Path(path) / _EXTRA_DIR
        if not extra.is_dir():
            return
        self._counters.update(json.loads((extra / "counters.json").read_text()))
        if self.config.model_based:
            import torch

            state = torch.load(extra / "world_model.pt", map_location="cpu", weights_only=True)  # no unpickling
            ray.get(self._world_model.set_state.remote(state))
            ray.get(self._replay.restore.remote(str((extra / "replay").resolve())))
            self._counters["replay_connections"] += 1
            self._connect_env_runners()
            self._push_weights_to_world_model()

    @override(PPO)
    def cleanup(self) -> None:
        for actor in (self._world_model, self._replay):
            if actor is not None:
                ray.kill(actor)
        super().cleanup()
