"""`AGD`: RLlib PPO trained on guided imagined episodes from a trajectory diffusion world model.

One iteration (`training_step`) is ALGORITHM.md section 5, phase by phase, each timed:
1. real env steps (uniformly random until `replay.prefill_steps`), streamed by the env runners to replay;
2. world-model updates up to `updates_per_env_step` x env steps (at least `pretrain_updates` before the
   first imagination);
3. guided imagination from replay start states, with the newest policy and critic;
4. PPO update on the imagined episodes; new weights to the env runners (policy) and to the world model
   (policy and critic, one ObjectRef per version).

The phases overlap (section 5's actor-learner pipelining) while the ratios stay exact:
- the batch a PPO update uses is requested right after the previous update's weights went out, so it is
  imagined (on the world-model actor, or on the imagination workers) while the env runners sample the next
  iteration's real steps; its `weights_seq_no` is the version the update starts from, so PPO's ratio is exact;
- the world-model training call is in flight while the driver runs the PPO update; the driver waits for it
  only at the end of the iteration, so the update count is `updates_per_env_step` x env steps every iteration.
The price is one iteration of world-model staleness: a batch is imagined by the model trained up to the
previous iteration's real steps (with imagination workers, K > 1, every batch of the iteration, so that they
imagine while the trainer trains; with K = 1 the trainer is one actor, so a second update's batch in the same
iteration waits for the training and uses its result). The first iteration imagines after training, as the
unpipelined loop does; a restore imagines the batch that was pending at save time again (it is not stored)
before the next iteration samples.
`AGDConfig().model_free()` runs PPO's own `training_step` on real data in the same harness.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import time

import numpy as np
import ray
from ray.rllib.algorithms.ppo import PPO
from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
from ray.rllib.env import INPUT_ENV_SINGLE_SPACES
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import (
    ALL_MODULES,
    ENV_RUNNER_RESULTS,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_MODULE_STEPS_TRAINED_LIFETIME,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
    WEIGHTS_SEQ_NO,
)

from agd_ray.config import AGDConfig
from agd_ray.envs.core import executed_action_bound, make_env, register_recording_env
from agd_ray.errors import first_line

_EXTRA_DIR = "agd"  # inside an RLlib checkpoint: world model, replay and the loop's counters
# agd/format.json: the layout of what agd-ray adds to a checkpoint; restore refuses any other version.
CHECKPOINT_FORMAT = {"format": "agd-ray-checkpoint", "version": 1}


def check_checkpoint_format(path) -> None:
    """Raise ValueError (one line) unless checkpoint `path` has agd/format.json of this agd-ray's version."""
    file = pathlib.Path(path) / _EXTRA_DIR / "format.json"
    try:
        found = json.loads(file.read_text())
    except (OSError, ValueError):
        found = None
    if not isinstance(found, dict) or found.get("format") != CHECKPOINT_FORMAT["format"]:
        raise ValueError(f"checkpoint {path} has no valid {_EXTRA_DIR}/format.json; it was not written by agd-ray "
                         f"(or by a version before checkpoint format {CHECKPOINT_FORMAT['version']})")
    if found.get("version") != CHECKPOINT_FORMAT["version"]:
        raise ValueError(f"checkpoint {path} has checkpoint format version={found.get('version')!r}; this agd-ray "
                         f"reads version {CHECKPOINT_FORMAT['version']} only")
# Driver time blocked on actors, per iteration: agd/wait_s/<name> (all of it) and agd/transfer_s/<name> (after
# the actor had finished: moving results or weights); bench/throughput.py reports their share of the wall-clock.
_WAITS = ("imagination", "world_model", "weights", "replay")
# What a dead actor looks like to the driver: the call itself (RayActorError), a call that depended on it
# (RayTaskError, ObjectLostError). `AGD._recover_actors` tells a death from a plain error by asking the actors.
_ACTOR_ERRORS = (ray.exceptions.RayActorError, ray.exceptions.RayTaskError, ray.exceptions.ObjectLostError)
logger = logging.getLogger(__name__)


class AGD(PPO):
    """Advantage-guided diffusion model-based RL (ALGORITHM.md) as an RLlib Algorithm; see the module doc."""

    @classmethod
    @override(PPO)
    def get_default_config(cls) -> AGDConfig:
        return AGDConfig()

    @classmethod
    @override(PPO)
    def default_resource_request(cls, config):
        """RLlib's bundles for PPO (main process, env runners, evaluation runners, learners) plus those of the
        actors `setup` creates (`AGDConfig.actor_bundles`: world-model trainer, imagination workers), so a
        Tune trial reserves them in its placement group."""
        from ray.tune import PlacementGroupFactory

        request = super().default_resource_request(config)
        algo_config = config if isinstance(config, AGDConfig) else cls.get_default_config().update_from_dict(config)
        extra = algo_config.actor_bundles()
        if not extra:
            return request
        return PlacementGroupFactory([dict(b) for b in request.bundles] + extra, strategy=request.strategy)

    @override(PPO)
    def setup(self, config: AGDConfig) -> None:
        if isinstance(config.env, str):
            register_recording_env(config.env)
        super().setup(config)
        # RLlib's own counters (a defaultdict: restored env runners, skipped evaluations) share the dict.
        self._counters.update({"env_steps": 0, "world_model_updates": 0, "imagined_transitions": 0,
                               "imagined_episodes": 0, "policy_updates": 0, "replay_connections": 0,
                               "world_model_restarts": 0, "replay_restarts": 0, "imagination_worker_restarts": 0,
                               "replay_lost_transitions": 0, "env_steps_unreported": 0})
        self._replay = self._world_model = self._imagination = None
        self._pending_imagination = None  # ObjectRefs of the batch imagined with the current weights
        self._module_state = None  # (weights_seq_no, [ObjectRef]) of the learner's full module state
        self._phase_s = {}  # driver seconds per phase this iteration
        self._wait_s = dict.fromkeys(_WAITS, 0.0)  # driver blocked on actors, this iteration
        self._transfer_s = dict.fromkeys(_WAITS, 0.0)  # of which after the actors had finished: moving data
        self._prefetched = 0
        self._actor_generation = 0  # +1 each time `_recover_actors` recreates actors
        self._replay_snapshot_taken = False  # whether `_snapshot_actors` has written replay since setup or restore
        if not self.config.model_based:
            return
        from agd_ray.world_model.actor import ImaginationPool

        self._observation_space, self._action_space = self.env_runner_group.get_spaces()[INPUT_ENV_SINGLE_SPACES]
        obs_dim = int(np.prod(self._observation_space.shape))
        act_dim = int(np.prod(self._action_space.shape))
        probe = make_env(self.config.env, self.config.env_config)
        qpos_dim, qvel_dim = int(probe.unwrapped.model.nq), int(probe.unwrapped.model.nv)
        probe.close()
        seed = int(self.config.seed or 0)
        # The env executes actions clipped to this box (policy space): replay refuses others, the model sees them.
        bound = executed_action_bound(self.config.normalize_actions, self._action_space)
        self._replay_kwargs = dict(obs_dim=obs_dim, act_dim=act_dim, qpos_dim=qpos_dim, qvel_dim=qvel_dim,
                                   capacity=self.config.replay_config.capacity, seed=seed, action_bound=bound)
        world_model_config = self.config.world_model_config
        if world_model_config.action_bound is None and bound is not None:
            world_model_config = world_model_config.replace(action_bound=bound)
        self._replay = self._make_replay()
        training = self.config.world_model_training
        model = dict(
            obs_dim=obs_dim,
            act_dim=act_dim,
            world_model_config=world_model_config,
            guide_config=self.config.guide_config,
            module_spec=self.config.get_rl_module_spec(
                spaces={INPUT_ENV_SINGLE_SPACES: (self._observation_space, self._action_space),
                        DEFAULT_MODULE_ID: (self._observation_space, self._action_space)},
                inference_only=False,
            ),
            seed=seed,
            torch_threads=training.torch_threads,
            source=self.config.imagination_config.source,
            env_id=self.config.env,
            termination=self.config.imagination_config.termination,
        )
        self._model_kwargs = model
        self._world_model = self._make_world_model()
        imagination = self.config.imagination_config
        workers = [self._make_imagination_worker() for _ in range(imagination.num_workers)
                   if imagination.num_workers > 1]
        self._imagination = ImaginationPool(self._world_model, workers, unit_size=imagination.unit_size)
        self._connect_env_runners()
        self._push_weights_to_world_model()

    def _make_replay(self):
        from agd_ray.replay.actor import ReplayActor

        resources = self.config.replay_config.resources
        return ReplayActor.as_remote(num_cpus=0, **({"resources": dict(resources)} if resources else {})).remote(
            **self._replay_kwargs)

    def _make_world_model(self):
        from agd_ray.world_model.actor import WorldModelActor

        training = self.config.world_model_training
        custom = {"resources": dict(training.resources)} if training.resources else {}
        return WorldModelActor.options(num_cpus=training.num_cpus, num_gpus=training.num_gpus, **custom).remote(
            replay=self._replay, batches_per_call=training.batches_per_call,
            device="cuda" if training.num_gpus > 0 else "cpu", **self._model_kwargs)

    def _make_imagination_worker(self):
        from agd_ray.world_model.actor import ImaginationActor

        resources = self.config.imagination_config.worker_resources(self.config.world_model_training)
        return ImaginationActor.options(**resources).remote(
            device="cuda" if resources["num_gpus"] > 0 else "cpu", **self._model_kwargs)

    def _connect_env_runners(self, remote_worker_ids=None) -> None:
        """Env runners stream to replay from now on (a new stream per connection, see AGDEnvRunner); with
        `remote_worker_ids` only those (restarted) remote runners, under a new connection number."""
        replay, chunk_size = self._replay, self.config.replay_config.chunk_size
        connection = self._counters["replay_connections"]
        self.env_runner_group.foreach_env_runner(
            lambda runner: runner.connect_replay(replay, chunk_size=chunk_size, return_episodes=False,
                                                 connection=connection),
            local_env_runner=remote_worker_ids is None,
            remote_worker_ids=remote_worker_ids,
        )

    def _reconnect_restarted_env_runners(self) -> None:
        """A remote env runner that died was restarted by Ray (`restart_failed_env_runners`, RLlib's default)
        as a fresh process, not connected to replay: connect it as a new stream (a new connection number, so
        its chunk seq_no 0 is not refused as a duplicate of its predecessor's) and give it the current
        weights. One round trip to the runners per iteration; a runner still restarting is waited for."""
        streams = self.env_runner_group.foreach_env_runner(
            lambda runner: (int(runner.worker_index), runner.replay_stream()), local_env_runner=False)
        lost = sorted(index for index, stream in streams if stream is None)
        if not lost:
            return
        self._counters["replay_connections"] += 1
        self._counters["env_runner_reconnects"] += len(lost)
        self._connect_env_runners(remote_worker_ids=lost)
        self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)

    @contextlib.contextmanager
    def _phase(self, name: str):
        """Time a phase: RLlib's smoothed timer `timers/<name>` and this iteration's sum `agd/phase_s/<name>`."""
        started = time.perf_counter()
        with self.metrics.log_time((TIMERS, name)):
            yield
        self._phase_s[name] = self._phase_s.get(name, 0.0) + time.perf_counter() - started

    def _wait(self, name: str, refs):
        """`ray.get(refs)`, with the driver's blocked time counted under `agd/wait_s/<name>`; the part after
        the actors finished (results carry `finished_at`, wall-clock) or all of it (results without) is the
        transfer, counted under `agd/transfer_s/<name>`."""
        started, started_at = time.perf_counter(), time.time()
        results = ray.get(refs)
        blocked = time.perf_counter() - started
        finished = [r.get("finished_at") if isinstance(r, dict) else getattr(r, "finished_at", None)
                    for r in (results if isinstance(results, list) else [results])]
        finished = [at for at in finished if at is not None]
        transfer = min(blocked, max(0.0, time.time() - max([*finished, started_at]))) if finished else blocked
        self._wait_s[name] += blocked
        self._transfer_s[name] += transfer
        return results

    # ---------------------------------------------------------------------------------------------------
    @override(PPO)
    def step(self):
        """RLlib's iteration (training, and evaluation every `evaluation_interval` iterations), plus an
        evaluation on the iteration that reaches `evaluate_at_env_steps`; `agd/evaluated` in the result says
        whether this iteration's `evaluation` results were measured in it (RLlib repeats the last ones)."""
        interval, budget = self.config.evaluation_interval, self.config.evaluate_at_env_steps
        evaluated = bool(interval) and (self.iteration + 1) % interval == 0  # RLlib's own rule (Algorithm.step)
        before = self._env_steps_lifetime()
        results = super().step()
        if interval and budget and not evaluated and before < budget <= self._env_steps_lifetime():
            results.update(self._run_one_evaluation(parallel_train_future=None))
            evaluated = True
        results.setdefault("agd", {})["evaluated"] = evaluated
        return results

    def _env_steps_lifetime(self) -> int:
        if self.config.model_based:  # the loop's own count (a restored run's too)
            return self._counters["env_steps"]
        return int(self.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0))

    @override(PPO)
    def training_step(self) -> None:
        if not self.config.model_based:
            super().training_step()
            self._counters["env_steps"] = self._env_steps_lifetime()
            return
        self._phase_s, self._wait_s, self._transfer_s = {}, dict.fromkeys(_WAITS, 0.0), dict.fromkeys(_WAITS, 0.0)
        self._prefetched = 0  # batches of this iteration that were in flight before they were needed
        self._sample_real()  # the batch requested at the end of the last iteration is imagined meanwhile
        training = self._start_world_model_training()  # in flight through the PPO updates
        rounds = self.config.imagination_config.policy_updates_per_iteration
        for round_ in range(rounds):
            episodes = self._collect_imagination()
            self._update_policy(episodes)
            self._sync_weights()
            if round_ + 1 < rounds:
                self._request_imagination()  # the next update's batch, with the weights it will start from
        self._finish_world_model_training(training)
        generation = self._actor_generation
        self._measure_quality()
        self._snapshot_actors()
        if self._actor_generation != generation:  # an actor died after the training (its node lost, say) and came
            # back from the last snapshot: the world model makes this iteration's updates again, the ratio holds
            self._finish_world_model_training(self._start_world_model_training())
        self._request_imagination()  # the next iteration's first batch, imagined while the env runners sample
        self._log_counters()

    def _sample_real(self) -> None:
        """Phase 1: real env steps; uniformly random ones until `prefill_steps` are in replay."""
        with self._phase("agd_sample_real"):
            self._reconnect_restarted_env_runners()
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

    def _start_world_model_training(self):
        """Phase 2 (start): ask for the updates that bring the world model to `updates_per_env_step` x env
        steps (>= `pretrain_updates`); returns the pending result for `_finish_world_model_training`."""
        with self._phase("agd_world_model_train"):
            training = self.config.world_model_training
            target = max(int(training.updates_per_env_step * self._counters["env_steps"]),
                         training.pretrain_updates)
            due = target - self._counters["world_model_updates"]
            return self._world_model.train.remote(num_updates=due), due, self._actor_generation

    def _finish_world_model_training(self, training) -> None:
        """Phase 2 (end): wait for the training call; the update count is exact from here on."""
        with self._phase("agd_world_model_wait"):
            while True:
                pending, due, generation = training
                if generation != self._actor_generation:  # actors recreated since the call was made: again
                    training = self._start_world_model_training()
                    continue
                try:
                    result = self._wait("world_model", pending)
                    break
                except _ACTOR_ERRORS as error:  # an actor died: recreated from its snapshot, the call made again
                    self._recover_actors(error)
                    training = self._start_world_model_training()
            self._counters["world_model_updates"] = int(result["num_updates"])
            if due > 0:
                self._imagination.model_changed()  # imagination workers get the new EMA weights next request
                self.metrics.log_value(("world_model", "loss"), result["loss"], window=1)
                self.metrics.log_value(("world_model", "replay_wait_s"), result["replay_wait_s"], window=1)
                self.metrics.log_value(("world_model", "train_s"), result["train_s"], window=1)
                for key in ("weight_mean", "weight_std"):  # the self-weighted guide's training weights
                    if key in result:
                        self.metrics.log_value(("world_model", key), result[key], window=1)

    def _measure_quality(self) -> None:
        """World-model quality (ALGORITHM.md 7) every `imagination.quality_interval` iterations, on
        `quality_windows` real windows from replay with the current model and weights (`WorldModelWorker.quality`);
        logged under quality/ (open-loop MSE by step, guided and unguided, and action z statistics)."""
        imagination = self.config.imagination_config
        if not imagination.quality_interval or (self.iteration + 1) % imagination.quality_interval:
            for name in getattr(self, "_quality_keys", ()):  # not measured this iteration: nan, not the last value
                self.metrics.log_value(tuple(name.split("/")), float("nan"), window=1)
            return
        with self._phase("agd_quality"):
            seed = int(self.config.seed or 0) * 1_000_003 + 500_009 + self.iteration
            windows = self._replay.sample_windows.remote(
                batch_size=imagination.quality_windows, horizon=self.config.world_model_config.horizon, seed=seed)
            if self._imagination.workers:  # the trainer does not imagine for PPO: it has no current weights
                seq_no, (ref,) = self._module_state
                self._world_model.set_module_state.remote(ref, seq_no)
            try:
                metrics = ray.get(self._world_model.quality.remote(
                    windows=windows, env_id=self.config.env, seed=seed,
                    normalize_actions=self.config.normalize_actions))
            except _ACTOR_ERRORS as error:  # not measured this time
                self._recover_actors(error)
                return
            self._quality_keys = tuple(metrics)
            for name, value in metrics.items():
                self.metrics.log_value(tuple(name.split("/")), value, window=1)

    def _request_imagination(self) -> None:
        """Phase 3 (start): imagine the next PPO update's batch from replay start states with the current
        weights (the trainer or the imagination workers run it; the driver does not wait)."""
        imagination = self.config.imagination_config
        seed = int(self.config.seed or 0) * 1_000_003 + self._counters["policy_updates"]
        start_observations = self._replay.sample_start_states.remote(
            batch_size=imagination.batch_size, seed=seed, with_state=imagination.source == "simulator")
        self._pending_imagination = self._imagination.request(
            start_observations=start_observations, batch_size=imagination.batch_size, seed=seed,
            module_state=self._module_state, advantage_gain_windows=imagination.advantage_gain_windows)

    def _collect_imagination(self) -> list:
        """Phase 3: the pending guided windows (imagined now if none is pending: first iteration, or after a
        restore) -> SingleAgentEpisodes; the adaptive-delta step on the merged batch goes to the trainer.

        The delta is adapted here, on the batch PPO takes, not where it was imagined: a batch pending at a
        checkpoint is imagined again after a restore, and must then be the same batch, adapted once."""
        from agd_ray.imagination import action_z_std
        from agd_ray.world_model.actor import ImaginationPool

        with self._phase("agd_imagine"):
            while True:
                prefetched = self._pending_imagination is not None
                if not prefetched:
                    self._request_imagination()
                refs, self._pending_imagination = self._pending_imagination, None
                try:
                    out = ImaginationPool.merge(self._wait("imagination", refs))
                    break
                except _ACTOR_ERRORS as error:  # recreated from snapshots; the batch is imagined again
                    self._recover_actors(error)
            if out.weights_seq_no != self._module_state[0]:  # PPO's ratio needs the version it starts from
                raise RuntimeError(f"imagined with weights_seq_no={out.weights_seq_no}, but the learner is at "
                                   f"{self._module_state[0]}")
            z_std = action_z_std(out.windows["actions"], out.windows["action_dist_inputs"])
            self._imagination.set_log_delta(self._world_model.adapt_delta.remote(action_z_std=z_std))
            self.metrics.log_value(("imagination", "num_nonfinite_windows"), out.num_nonfinite, window=1)
            episodes = out.to_episodes(self._observation_space, self._action_space)
            metrics = out.metrics
            num_transitions = sum(len(e) for e in episodes)
            self._counters["imagined_transitions"] += num_transitions
            self._counters["imagined_episodes"] += len(episodes)
            self.metrics.log_value(("imagination", "num_transitions"), num_transitions, window=1)
            self.metrics.log_value(("imagination", "transitions_per_s"), metrics["transitions_per_s"], window=1)
            self.metrics.log_value(("imagination", "action_z_std"), z_std, window=1)
            self.metrics.log_value(("imagination", "delta"), metrics["delta"], window=1)
            self.metrics.log_value(("imagination", "weights_seq_no"), out.weights_seq_no, window=1)
            self._prefetched += int(prefetched)
            self.metrics.log_value(("imagination", "num_shards"), metrics["num_shards"], window=1)
            self.metrics.log_value(("imagination", "mean_episode_len"),
                                   num_transitions / max(len(episodes), 1), window=1)
            for key in ("advantage_gain", "advantage_gain_sigma"):
                if key in metrics:
                    self.metrics.log_value(("guidance", key), metrics[key], window=1)
        return episodes

    def _update_policy(self, episodes: list) -> None:
        """Phase 4a: PPO on the imagined episodes through RLlib's LearnerGroup."""
        with self._phase(LEARNER_UPDATE_TIMER):
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
        with self._phase(SYNCH_WORKER_WEIGHTS_TIMER):
            started = time.perf_counter()
            self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)
            self._push_weights_to_world_model()
            self._wait_s["weights"] += time.perf_counter() - started  # all of it moves weights
            self._transfer_s["weights"] += time.perf_counter() - started

    def _push_weights_to_world_model(self) -> None:
        """Full module state (policy and critic): one `ray.put` per weights version, shared by the trainer
        and the imagination workers (the call is queued on the trainer; the driver does not wait)."""
        state = self.learner_group.get_state(
            components=f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}/{DEFAULT_MODULE_ID}")[COMPONENT_LEARNER]
        seq_no = int(state.get(WEIGHTS_SEQ_NO, 0))
        ref = ray.put(state[COMPONENT_RL_MODULE][DEFAULT_MODULE_ID])
        self._module_state = (seq_no, [ref])
        # The trainer needs the policy and critic when it imagines, and the critic when it computes the self-weighted
        # guide's training weights (every batch, with the current critic) even when workers imagine.
        if not self._imagination.workers or self.config.guide_config.kind == "swg":
            self._world_model.set_module_state.remote(ref, seq_no)

    def _log_counters(self) -> None:
        self.metrics.log_value(("world_model", "num_updates"), self._counters["world_model_updates"], window=1)
        self.metrics.log_value(("world_model", "weights_seq_no"), self._module_state[0], window=1)
        self.metrics.log_value(("imagination", "num_transitions_lifetime"),
                               self._counters["imagined_transitions"], window=1)
        self.metrics.log_value(("agd", "policy_updates"), self._counters["policy_updates"], window=1)
        self.metrics.log_value(("agd", "env_runner_reconnects"), self._counters["env_runner_reconnects"], window=1)
        try:
            replay_metrics = self._wait("replay", self._replay.metrics.remote())
        except _ACTOR_ERRORS as error:
            self._recover_actors(error)
            replay_metrics = self._wait("replay", self._replay.metrics.remote())
        # Every real step is in replay or counted lost. An env runner killed during `sample()` had sent part of
        # its steps, which its lost result never reported: they are counted here, from replay.
        unreported = (int(replay_metrics["replay/num_added"]) + self._counters["replay_lost_transitions"]
                      - self._counters["env_steps"])
        if unreported > 0:
            self._counters["env_steps"] += unreported
            self._counters["env_steps_unreported"] += unreported
        for name, value in replay_metrics.items():  # replay/size, ...
            self.metrics.log_value(tuple(name.split("/")), int(value), window=1)
        for name in ("world_model_restarts", "replay_restarts", "imagination_worker_restarts"):
            self.metrics.log_value(("agd", name), self._counters[name], window=1)
        self.metrics.log_value(("agd", "env_steps_lifetime"), self._counters["env_steps"], window=1)
        self.metrics.log_value(("agd", "env_steps_unreported"), self._counters["env_steps_unreported"], window=1)
        self.metrics.log_value(("replay", "lost_transitions"), self._counters["replay_lost_transitions"], window=1)
        for name, seconds in self._phase_s.items():
            self.metrics.log_value(("agd", "phase_s", name), seconds, window=1)
        for name, seconds in self._wait_s.items():
            self.metrics.log_value(("agd", "wait_s", name), seconds, window=1)
            self.metrics.log_value(("agd", "transfer_s", name), self._transfer_s[name], window=1)
        self.metrics.log_value(("imagination", "prefetched"), self._prefetched, window=1)

    # -- the run's own actors: snapshots and restarts -------------------------------------------------------
    def _snapshot_dir(self) -> pathlib.Path:
        """<snapshot_dir>/<this run's log directory name> (one directory per run when several share a base),
        or <log directory>/actor_snapshots."""
        configured = self.config.recovery_config.snapshot_dir
        logdir = pathlib.Path(self.logdir)
        return pathlib.Path(configured) / logdir.name if configured else logdir / "actor_snapshots"

    def _snapshot_actors(self) -> None:
        """Every `recovery.snapshot_interval` iterations: replay (written by the replay actor, atomically, with
        its checksum) and the world model (weights, EMA, optimiser, normaliser, delta; written here, atomically)
        to `_snapshot_dir()`, for `_recover_actors`."""
        interval = self.config.recovery_config.snapshot_interval
        if not interval or (self.iteration + 1) % interval:
            return
        with self._phase("agd_snapshot"):
            directory = self._snapshot_dir()
            directory.mkdir(parents=True, exist_ok=True)
            try:
                replay = self._replay.save.remote(str((directory / "replay").resolve()))
                save_atomic(ray.get(self._world_model.get_state.remote()), directory / "world_model.pt")
                ray.get(replay)
                self._replay_snapshot_taken = True  # a new replay actor must find it (`_restore_replay`)
            except _ACTOR_ERRORS as error:  # the previous snapshot stays the latest
                self._recover_actors(error)

    def _recover_actors(self, error: Exception) -> None:
        """After `error` from an actor call: recreate whichever of the replay actor, the world-model trainer and
        the imagination workers died, from the latest snapshots; re-raise `error` if none did (a plain error),
        and fail once an actor has died more than `recovery.max_actor_restarts` times. What replay lost (the
        transitions since its snapshot, and those sent while it was down) is counted in replay/lost_transitions;
        the world model repeats the updates since its snapshot (the update ratio is kept from the restored count)."""
        from agd_ray.world_model.actor import ImaginationPool

        dead = {name for name, actor in (("replay", self._replay), ("world_model", self._world_model))
                if not _alive(actor)}
        dead_workers = [i for i, worker in enumerate(self._imagination.workers) if not _alive(worker)]
        if not dead and not dead_workers:
            raise error
        limit = self.config.recovery_config.max_actor_restarts
        for name in sorted(dead) + ["imagination_worker"] * bool(dead_workers):
            if self._counters[f"{name}_restarts"] >= limit:
                raise RuntimeError(f"the {name} actor died after {self._counters[f'{name}_restarts']} restarts; "
                                   f"recovery.max_actor_restarts={limit}") from error
        logger.warning("agd: actors died (%s); recreating them from %s", ", ".join(
            sorted(dead) + [f"imagination worker {i}" for i in dead_workers]), self._snapshot_dir())
        if "replay" in dead:
            self._restore_replay()
        if "world_model" in dead:
            self._restore_world_model()
        elif "replay" in dead:
            self._world_model.set_replay.remote(self._replay)
        workers = list(self._imagination.workers)
        for i in dead_workers:
            workers[i] = self._make_imagination_worker()
            self._counters["imagination_worker_restarts"] += 1
        self._imagination = ImaginationPool(self._world_model, workers, unit_size=self._imagination.unit_size)
        self._pending_imagination = None  # imagined again, by the new actors, from the restored replay
        self._actor_generation += 1  # calls made before this are made again (`_finish_world_model_training`)
        # a training call cut short by a dying replay may have done part of its updates
        self._counters["world_model_updates"] = int(ray.get(self._world_model.counters.remote())["num_updates"])

    def _restore_replay(self) -> None:
        """A new replay actor with the latest snapshot's contents (empty without one; a corrupt one is refused
        and not loaded), and every env runner connected to it as a new stream."""
        self._counters["replay_restarts"] += 1
        self._replay = self._make_replay()
        snapshot = (self._snapshot_dir() / "replay").resolve()
        if self._replay_snapshot_taken:  # written by the dead actor on its node: the new one's node must see it
            found, node = ray.get(self._replay.snapshot_found.remote(str(snapshot)))
            if not found:
                raise RuntimeError(f"the replay actor was recreated on node {node}, which cannot read its snapshot "
                                   f"{snapshot} (written on the dead actor's node): set recovery.snapshot_dir to a "
                                   f"directory every node mounts (docs/CLUSTER.md)")
        if snapshot.is_dir() or self._replay_snapshot_taken:
            try:
                ray.get(self._replay.restore.remote(str(snapshot)))
            except ray.exceptions.RayTaskError as error:
                logger.error("agd: replay snapshot %s refused, starting empty: %s", snapshot, error.cause)
        num_added = int(ray.get(self._replay.metrics.remote())["replay/num_added"])
        self._counters["replay_lost_transitions"] = self._counters["env_steps"] - num_added
        self._counters["replay_connections"] += 1
        self._connect_env_runners()

    def _restore_world_model(self) -> None:
        """A new world-model trainer with the latest snapshot's state (a fresh model without one) and the
        learner's current policy and critic."""
        import torch

        self._counters["world_model_restarts"] += 1
        self._world_model = self._make_world_model()
        path = self._snapshot_dir() / "world_model.pt"
        if path.is_file():
            ray.get(self._world_model.set_state.remote(torch.load(path, map_location="cpu", weights_only=True)))
        seq_no, (ref,) = self._module_state
        self._world_model.set_module_state.remote(ref, seq_no)

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
        (extra / "format.json").write_text(json.dumps(CHECKPOINT_FORMAT))
        # Trainable's time_total_s, which RLlib's own state leaves out: a restored run's results continue it.
        (extra / "time.json").write_text(json.dumps({"time_total_s": float(self._time_total)}))
        if self.config.model_based:
            save_atomic(ray.get(self._world_model.get_state.remote()), extra / "world_model.pt")
            ray.get(self._replay.save.remote(str((extra / "replay").resolve())))
        return path

    @override(PPO)
    def restore_from_path(self, path, *args, **kwargs) -> None:
        extra = pathlib.Path(path) / _EXTRA_DIR
        if extra.is_dir() or self.config.model_based:
            check_checkpoint_format(path)
        super().restore_from_path(path, *args, **kwargs)
        if not extra.is_dir():
            return
        self._counters.update(json.loads((extra / "counters.json").read_text()))
        if (extra / "time.json").is_file():  # checkpoints written before it: time_total_s starts again at 0
            self._time_total = float(json.loads((extra / "time.json").read_text())["time_total_s"])
        if self.config.model_based:
            import shutil

            import torch

            try:
                state = torch.load(extra / "world_model.pt", map_location="cpu", weights_only=True)  # no unpickling
            except Exception as error:  # noqa: BLE001 - torch raises several kinds for a damaged file
                raise ValueError(f"checkpoint {path}: {extra / 'world_model.pt'} is unreadable "
                                 f"({type(error).__name__}: {first_line(error)})") from None
            try:
                ray.get(self._world_model.set_state.remote(state))
            except ray.exceptions.RayTaskError as error:
                raise ValueError(f"checkpoint {path}: its world model does not fit this config "
                                 f"({first_line(error.cause)})") from None
            try:
                ray.get(self._replay.restore.remote(str((extra / "replay").resolve())))
            except ray.exceptions.RayTaskError as error:  # ReplayBuffer.load's reason, naming the file
                raise ValueError(f"checkpoint {path}: {first_line(error.cause)}") from None
            # Snapshots taken before this restore (by an earlier process with the same log directory) describe
            # another state: an actor that dies before the next snapshot must not come back from them.
            shutil.rmtree(self._snapshot_dir(), ignore_errors=True)
            self._replay_snapshot_taken = False
            self._imagination.reset()
            self._counters["replay_connections"] += 1
            self._connect_env_runners()
            self._push_weights_to_world_model()
            # The batch pending at save time is not stored: imagined again now, before any new real step, from
            # the restored replay, world model, delta, weights and counters (so the same seed), it is the same.
            self._request_imagination()

    @override(PPO)
    def cleanup(self) -> None:
        workers = self._imagination.workers if self._imagination is not None else []
        for actor in (self._world_model, self._replay, *workers):
            if actor is not None:
                ray.kill(actor)
        if self.config.model_based:  # the snapshots serve this run's actor restarts only (checkpoints resume)
            import shutil

            shutil.rmtree(self._snapshot_dir(), ignore_errors=True)
        super().cleanup()


def _alive(actor) -> bool:
    """Whether an actor answers (a busy one counts as alive)."""
    try:
        ray.get(actor.__ray_ready__.remote(), timeout=60)
        return True
    except ray.exceptions.RayActorError:
        return False
    except ray.exceptions.GetTimeoutError:
        return True


def save_atomic(state: dict, path: pathlib.Path) -> None:
    """`torch.save` to a temporary file beside `path`, flushed to disk, then renamed over it."""
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
