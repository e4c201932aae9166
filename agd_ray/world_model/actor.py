"""World-model actors: thin Ray shells around plain classes that tests drive without Ray.

`WorldModelWorker` (the trainer) trains the diffusion model on windows pulled from replay in large chunks
(ALGORITHM.md section 5, step 2), owns the adaptive delta, and with one imagination worker (the default)
also serves guided imagination (step 3). `ImaginationWorker`s serve imagination when there are several
(`imagination(num_workers=K)`): each receives the trainer's EMA weights and normaliser once per version as an
ObjectRef, and the policy/critic module state once per weights version. `ImaginationPool` is the driver's
side: it splits a request across the workers and merges the answers in order.

A request of B windows is sampled in fixed units of `unit_size` windows; each unit has its own generator,
seeded from (seed, the unit's first window index), so any split across workers gives the same windows.
"""

from __future__ import annotations

import time

import numpy as np
import ray
import torch

_WINDOW_FIELDS = ("observations", "actions", "rewards", "terminals")


class _ActorReplay:
    """Calls a `ReplayActor` handle as if it were a local buffer (blocking, one round trip per call)."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def sample_windows_async(self, batch_size: int, horizon: int, seed: int):
        return self.handle.sample_windows.remote(batch_size=batch_size, horizon=horizon, seed=seed)

    def sample_start_states(self, batch_size: int, seed: int, with_state: bool = False):
        return ray.get(self.handle.sample_start_states.remote(batch_size=batch_size, seed=seed,
                                                              with_state=with_state))

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

    def sample_start_states(self, batch_size: int, seed: int, with_state: bool = False):
        return self.buffer.sample_start_states(batch_size, rng=np.random.default_rng(seed), with_state=with_state)

    def normalizer_snapshot(self):
        return self.buffer.normalizer_snapshot()

    @staticmethod
    def resolve(pending):
        return pending


def _start_observations(start_states) -> np.ndarray:
    """`sample_start_states` may return the observations or a dict holding them. A writable copy: Ray hands
    out read-only zero-copy arrays, which torch warns about."""
    if isinstance(start_states, dict):
        start_states = start_states["observations"]
    return np.array(start_states, dtype=np.float32)


def _sim_state(start_states, start_index: int, stop_index: int) -> dict | None:
    """The qpos/qvel of start states start_index..stop_index when replay sent them (simulator imagination)."""
    if not isinstance(start_states, dict) or "qpos" not in start_states:
        return None
    return {k: np.asarray(start_states[k][start_index:stop_index], dtype=np.float64) for k in ("qpos", "qvel")}


def _resolve(value):
    """An ObjectRef's value (one `ray.get`), anything else as it is (plain-class use without Ray)."""
    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


# -- splitting a request ----------------------------------------------------------------------------------------
def unit_seed(seed: int, first_window: int) -> int:
    """Seed of the generator of the imagination unit whose first window is `first_window` of a request seeded
    `seed` (independent streams per unit, whichever worker samples it)."""
    return int(np.random.SeedSequence([int(seed), int(first_window)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def split_request(batch_size: int, num_workers: int, unit_size: int) -> list[tuple[int, int]]:
    """Contiguous window ranges [start, stop) of a request, one per worker that gets any, aligned to units
    of `unit_size` windows and as even as the units allow (earlier workers take the extra unit)."""
    num_units = -(-batch_size // unit_size)
    per_worker, extra = divmod(num_units, num_workers)
    ranges, unit = [], 0
    for worker in range(num_workers):
        count = per_worker + (worker < extra)
        if count:
            ranges.append((unit * unit_size, min((unit + count) * unit_size, batch_size)))
        unit += count
    return ranges


def imagine_windows(model, module, guide, start_obs: np.ndarray, *, start_index: int, seed: int, unit_size: int,
                    advantage_gain_windows: int = 0, sim_state: dict | None = None, weights_seq_no: int = -1):
    """Guided windows from `start_obs: [n, D_s]`, the request's windows start_index..start_index+n, sampled
    unit by unit (see the module doc) with the model's EMA weights, normaliser and delta, guided by `module`
    (policy and critic, version `weights_seq_no`). An `ImaginedBatch`: the finite windows, with the guiding
    policy's `action_logp` and `action_dist_inputs`, and metrics. `model` may be a `SimulatorImagination`, which
    takes the start states' `sim_state` (qpos [n, nq], qvel [n, nv])."""
    from agd_ray.imagination import ImaginedBatch, make_critic, make_policy, policy_outputs

    started = time.perf_counter()
    policy, critic = make_policy(module), make_critic(module)
    stop_index = start_index + len(start_obs)
    parts, gain_sums = [], []
    first = start_index
    while first < stop_index:
        last = min((first // unit_size + 1) * unit_size, stop_index)  # units are aligned to the request
        rows = slice(first - start_index, last - start_index)
        state = {} if sim_state is None else {k: v[rows] for k, v in sim_state.items()}
        out = model.imagine(start_obs[rows], policy=policy, critic=critic, guide=guide,
                            generator=torch.Generator().manual_seed(unit_seed(seed, first)), **state)
        part = {k: out[k].detach().cpu().numpy() for k in _WINDOW_FIELDS}
        if "candidate_advantages" in out:  # resampling measures its own effect on every batch, at no extra cost
            from agd_ray.world_model.diagnostics import resampling_gain_sums

            gain_sums.append(resampling_gain_sums(out["candidate_advantages"], out["selected"]))  # one per unit
        # per unit too: the same shapes whatever the split, so the same floating-point results
        parts.append({**part, **policy_outputs(module, part["observations"], part["actions"])})
        first = last
    windows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}  # [n, H, ...]
    elapsed = time.perf_counter() - started
    num_transitions = len(start_obs) * (model.config.horizon - 1)
    metrics = {"num_transitions": num_transitions, "imagine_s": elapsed,
               "transitions_per_s": num_transitions / max(elapsed, 1e-9), "delta": model.delta}
    if gain_sums:
        metrics["resampling_gain_sums"] = gain_sums
    elif advantage_gain_windows > 0 and start_index == 0:  # the request's first windows, whoever holds them
        if guide.enabled and sim_state is None:
            from agd_ray.world_model.diagnostics import advantage_gain

            gain = advantage_gain(model, start_obs[:advantage_gain_windows], policy=policy, critic=critic,
                                  guide=guide, seed=seed, gamma=guide.gamma)
            metrics["advantage_gain"] = gain["guidance/advantage_gain"]
            metrics["advantage_gain_sigma"] = gain["guidance/advantage_gain_sigma"]
        else:
            metrics["advantage_gain"] = metrics["advantage_gain_sigma"] = 0.0
    return ImaginedBatch.from_windows(windows, weights_seq_no=int(weights_seq_no), start_index=int(start_index),
                                      normalizer_version=model.normalizer.version, metrics=metrics,
                                      finished_at=time.time())


def _build_imaginer(model, source: str, env_id: str | None):
    """What imagines for PPO: the diffusion model itself, or the simulator (`imagination.source`)."""
    if source == "diffusion":
        return model
    from agd_ray.world_model.simulator import SimulatorImagination

    return SimulatorImagination(env_id, model.config.horizon, action_bound=model.config.action_bound,
                                device=model.device)


def _build_model(obs_dim: int, act_dim: int, world_model_config, guide_config, device, seed: int,
                 termination: str = "model", env_id: str | None = None):
    from agd_ray.envs.termination import terminal_rule
    from agd_ray.world_model import WorldModel

    if guide_config.kind != "reward":
        # Only the reward guide uses the return model J; training it otherwise doubles the update cost.
        world_model_config = world_model_config.replace(return_model_hidden=0)
    # Only the self-weighted guide uses the weight channel, and with it every training batch needs its weights.
    world_model_config = world_model_config.replace(weight_channel=guide_config.kind == "swg")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    rule = terminal_rule(env_id) if termination == "env" else None
    return WorldModel(obs_dim, act_dim, world_model_config, device=device, seed=seed, terminal_rule=rule)


class WorldModelWorker:
    """Trains a `WorldModel` at the rate the driver asks for, owns the adaptive delta, and imagines guided
    windows for PPO (with one imagination worker) or hands its EMA weights to the imagination workers.

    replay: a `ReplayActor` handle or an in-process `ReplayBuffer`. module_spec: the RLModuleSpec
    (`config.get_rl_module_spec(..., inference_only=False)`) the policy and critic are rebuilt from.
    source: `imagination.source`; with "simulator" the windows for PPO are rolled out in `env_id` (the model still
    trains, and `quality` still measures it). termination: `imagination.termination`; with "env" the model
    decides terminations with `env_id`'s own rule.
    """

    def __init__(self, *, obs_dim: int, act_dim: int, world_model_config, guide_config, module_spec, replay,
                 batches_per_call: int = 16, seed: int = 0, device: str | None = None, torch_threads: int = 1,
                 source: str = "diffusion", env_id: str | None = None, termination: str = "model"):
        torch.set_num_threads(torch_threads)
        self.model = _build_model(obs_dim, act_dim, world_model_config, guide_config, device, seed, termination,
                                  env_id)
        self.imaginer = _build_imaginer(self.model, source, env_id)
        self.guide = guide_config
        self.replay = replay if hasattr(replay, "sample_windows_async") else (
            _LocalReplay(replay) if not isinstance(replay, ray.actor.ActorHandle) else _ActorReplay(replay))
        self.batches_per_call = int(batches_per_call)
        self.module = module_spec.build().to(self.model.device)
        self.module.eval()
        self.weights_seq_no = -1
        self._seed = int(seed)
        self._pull_count = 0
        self._quality_env = (None, None)  # (env id, gymnasium env) for `quality`, made on first use

    def set_replay(self, replay) -> None:
        """Pull training windows from another replay actor from now on (the driver's replacement of a dead one)."""
        self.replay = _ActorReplay(replay) if isinstance(replay, ray.actor.ActorHandle) else _LocalReplay(replay)

    # -- weights -------------------------------------------------------------------------------------------
    def set_module_state(self, state: dict, weights_seq_no: int) -> int:
        """Load the full module state (policy and critic) of version `weights_seq_no`; returns it."""
        self.module.set_state(state)
        self.weights_seq_no = int(weights_seq_no)
        return self.weights_seq_no

    def imagination_state(self) -> dict:
        """What imagination workers need of the model: EMA denoiser (and return model), normaliser, and the
        version they belong to (`num_updates`, normaliser version). Returned through Ray's object store, so
        one copy per version serves every worker."""
        model = self.model
        return {"num_updates": model.num_updates, "normalizer": model.normalizer.to_dict(),
                "ema_denoiser": {k: v.cpu() for k, v in model.ema_denoiser.state_dict().items()},
                "return_model": ({k: v.cpu() for k, v in model.return_model.state_dict().items()}
                                 if model.return_model is not None else None)}

    # -- training ------------------------------------------------------------------------------------------
    def train(self, *, num_updates: int) -> dict:
        """`num_updates` Adam steps on windows from replay, pulled `batches_per_call` batches per call with
        the next call in flight while the current one trains. Returns loss and counters.

        With the self-weighted guide each batch gets its weights W = w(A_win / beta) (`guidance.window_weights`)
        from the current critic just before its update, so the weight channel is trained on the critic the policy
        has now, never on the one of the batch's draw; `weight_mean` and `weight_std` report them."""
        if num_updates <= 0:
            return {"num_updates": self.model.num_updates, "loss": float("nan"), "updates_done": 0,
                    "train_s": 0.0, "replay_wait_s": 0.0, "finished_at": time.time()}
        start = time.perf_counter()
        self.model.set_normalizer(self.replay.normalizer_snapshot())
        batch_size, horizon = self.model.config.batch_size, self.model.config.horizon
        calls = -(-num_updates // self.batches_per_call)
        sizes = [min(self.batches_per_call, num_updates - i * self.batches_per_call) for i in range(calls)]
        pending = self._pull(sizes[0] * batch_size, horizon)
        losses, wait_s, weights = [], 0.0, []
        for i, size in enumerate(sizes):
            t0 = time.perf_counter()
            windows = self.replay.resolve(pending)
            wait_s += time.perf_counter() - t0
            if i + 1 < len(sizes):
                pending = self._pull(sizes[i + 1] * batch_size, horizon)
            for j in range(size):
                batch = {k: windows[k][j * batch_size:(j + 1) * batch_size] for k in _WINDOW_FIELDS}
                if self.model.config.weight_channel:
                    batch["weights"] = self._window_weights(batch)
                    weights.append(batch["weights"])
                losses.append(self.model.update(batch)["loss"])
        result = {"num_updates": self.model.num_updates, "loss": float(np.mean(losses)), "updates_done": num_updates,
                  "normalizer_version": self.model.normalizer.version, "train_s": time.perf_counter() - start,
                  "replay_wait_s": wait_s, "finished_at": time.time()}
        if weights:
            weights = np.concatenate(weights)
            result.update(weight_mean=float(weights.mean()), weight_std=float(weights.std()))
        return result

    def _window_weights(self, batch: dict) -> np.ndarray:
        """W = w(A_win / beta) of a batch of real windows with the current critic (no gradients): [B]."""
        from agd_ray.imagination import make_critic
        from agd_ray.world_model.guidance import window_weights

        windows = {k: torch.as_tensor(np.asarray(batch[k]), device=self.model.device)
                   for k in ("observations", "rewards", "terminals")}
        with torch.no_grad():
            return window_weights(windows, make_critic(self.module), self.guide).cpu().numpy()

    def _pull(self, num_windows: int, horizon: int):
        self._pull_count += 1
        return self.replay.sample_windows_async(num_windows, horizon, self._seed * 1_000_003 + self._pull_count)

    # -- imagination ---------------------------------------------------------------------------------------
    def imagine(self, *, seed: int, batch_size: int | None = None, start_observations=None, start_index: int = 0,
                stop_index: int | None = None, unit_size: int | None = None, advantage_gain_windows: int = 0):
        """Guided windows with the current policy/critic version (see `imagine_windows`); the delta is not
        adapted here (`adapt_delta`, once per merged request).

        start_observations: the whole request's start states [B, D_s] (an array, or an ObjectRef shared by
        all workers), of which this call imagines windows start_index..stop_index; without it, `batch_size`
        start states are sampled from replay with `seed`. unit_size: windows per generator (default: all).
        """
        if start_observations is None:
            start_observations = self.replay.sample_start_states(batch_size, seed,
                                                                 with_state=self.imaginer is not self.model)
        start_states = _resolve(start_observations)
        start_obs = _start_observations(start_states)
        stop_index = len(start_obs) if stop_index is None else int(stop_index)
        return imagine_windows(self.imaginer, self.module, self.guide, start_obs[start_index:stop_index],
                               start_index=start_index, seed=seed, unit_size=int(unit_size or len(start_obs)),
                               advantage_gain_windows=advantage_gain_windows,
                               sim_state=_sim_state(start_states, start_index, stop_index),
                               weights_seq_no=self.weights_seq_no)

    def quality(self, *, windows, env_id: str, seed: int, normalize_actions: bool = True) -> dict:
        """World-model quality and the guide's effect on real windows from replay (ALGORITHM.md 7), with the
        current EMA model, policy and critic: windows imagined from the windows' start states with this worker's
        guide ("guided") and without state guidance ("unguided"; PolyGRAD action guidance in both; a resampling
        guide's unguided windows are its own K candidates per start), each replayed open loop in the simulator
        from the true start state.

        windows: `ReplayBuffer.sample_windows` output (observations [B, H, D_s], qpos, qvel; or an ObjectRef).
        The module acts in [-1, 1] when `normalize_actions` (RLlib's default): actions are mapped onto the env's
        bounds before they are replayed. Returns flat metrics (scalars): `quality/open_loop_mse_<guided|unguided>`
        (per step `..._by_step/h<h>`, `diagnostics.open_loop_error`), `quality/action_z_mean_*`/`action_z_std_*`,
        and, for an enabled guide, its effect (`diagnostics.gain_in_sigma`): `quality/advantage_gain_sigma` of the
        imagined windows, `quality/real_advantage_gain_sigma` of what the simulator does with the same actions (a
        gain that does not show there is value the model hallucinated), and both in the critic's units.
        """
        from ray.rllib.utils.spaces.space_utils import unsquash_action

        from agd_ray.imagination import make_critic, make_policy
        from agd_ray.world_model.diagnostics import guidance_effect

        windows = _resolve(windows)
        if self._quality_env[0] != env_id:
            import gymnasium as gym

            self._quality_env = (env_id, gym.make(env_id))
        env = self._quality_env[1]
        to_env = (lambda a: unsquash_action(a, env.action_space)) if normalize_actions else None
        effect = guidance_effect(self.model, env, windows, policy=make_policy(self.module),
                                 critic=make_critic(self.module), guide=self.guide, seed=seed, to_env_actions=to_env)
        return effect["metrics"]

    def adapt_delta(self, *, action_z_std: float) -> float:
        """Adaptive delta (ALGORITHM.md 3.2), once per merged imagined batch, with z_std measured by the caller
        (`WorldModel.adapt_delta`). Returns the new log delta."""
        self.model.adapt_delta(action_z_std)
        return self.model.log_delta

    def get_log_delta(self) -> float:
        return self.model.log_delta

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


class ImaginationWorker:
    """Imagines guided windows with the trainer's EMA weights; holds no optimiser state of its own.

    The model state and the module state arrive as `(version, [ObjectRef])` pairs (the ref inside a list, so
    Ray does not resolve it per call): a worker fetches each version once and keeps it.
    """

    def __init__(self, *, obs_dim: int, act_dim: int, world_model_config, guide_config, module_spec, seed: int = 0,
                 device: str | None = None, torch_threads: int = 1, source: str = "diffusion",
                 env_id: str | None = None, termination: str = "model"):
        torch.set_num_threads(torch_threads)
        self.model = _build_model(obs_dim, act_dim, world_model_config, guide_config, device, seed, termination,
                                  env_id)
        self.imaginer = _build_imaginer(self.model, source, env_id)
        self.guide = guide_config
        self.module = module_spec.build().to(self.model.device)
        self.module.eval()
        self.model_version = None
        self.weights_seq_no = -1

    def _load(self, world_model_state, module_state) -> None:
        from agd_ray.world_model.normalizer import NormalizerSnapshot

        version, (ref,) = world_model_state
        if version != self.model_version:
            state = _resolve(ref)
            self.model.ema_denoiser.load_state_dict(state["ema_denoiser"])
            if self.model.return_model is not None and state["return_model"] is not None:
                self.model.return_model.load_state_dict(state["return_model"])
            self.model.normalizer = NormalizerSnapshot.from_dict(state["normalizer"])
            self.model.num_updates = int(state["num_updates"])
            self.model_version = version
        seq_no, (ref,) = module_state
        if int(seq_no) != self.weights_seq_no:
            self.module.set_state(_resolve(ref))
            self.weights_seq_no = int(seq_no)

    def imagine(self, *, world_model_state, module_state, log_delta: float, start_observations, seed: int,
                start_index: int, stop_index: int, unit_size: int, advantage_gain_windows: int = 0):
        """Windows start_index..stop_index of a request (see `WorldModelWorker.imagine`) with the given
        model version, module version and log delta."""
        self._load(world_model_state, module_state)
        self.model.log_delta = float(log_delta)
        start_states = _resolve(start_observations)
        start_obs = _start_observations(start_states)
        return imagine_windows(self.imaginer, self.module, self.guide, start_obs[start_index:stop_index],
                               start_index=start_index, seed=seed, unit_size=int(unit_size),
                               advantage_gain_windows=advantage_gain_windows,
                               sim_state=_sim_state(start_states, start_index, stop_index),
                               weights_seq_no=self.weights_seq_no)


@ray.remote
class WorldModelActor(WorldModelWorker):
    """Ray shell of `WorldModelWorker`; create with `.options(num_gpus=..., num_cpus=...)`."""


@ray.remote
class ImaginationActor(ImaginationWorker):
    """Ray shell of `ImaginationWorker`; create with `.options(num_gpus=..., num_cpus=...)`."""


class ImaginationPool:
    """The driver's side of imagination: requests split across the workers, answers merged in order.

    trainer: the `WorldModelActor` (it imagines itself when `workers` is empty, i.e. num_workers = 1).
    workers: `ImaginationActor` handles. The trainer's EMA state goes to the workers as one ObjectRef per
    version: call `model_changed()` after each training call, `reset()` after a restore.
    """

    def __init__(self, trainer, workers=(), *, unit_size: int = 0) -> None:
        self.trainer, self.workers = trainer, list(workers)
        self.unit_size = int(unit_size)
        self.reset()

    @property
    def num_workers(self) -> int:
        return max(1, len(self.workers))

    def reset(self) -> None:
        self._model_state = None  # (version, [ObjectRef]) of the trainer's imagination state
        self._model_version = 0
        self._log_delta = None  # ObjectRef of the trainer's newest log delta (None: ask it)

    def model_changed(self) -> None:
        self._model_state = None

    def set_log_delta(self, log_delta_ref) -> None:
        self._log_delta = log_delta_ref

    def request(self, *, start_observations, batch_size: int, seed: int, module_state,
                advantage_gain_windows: int = 0) -> list:
        """Start imagining `batch_size` windows; returns the ObjectRefs `collect` merges.

        start_observations: ObjectRef (or array) of the start states [B, D_s], shared by all workers.
        module_state: (weights_seq_no, [ObjectRef of the module state]); the trainer already has it.
        """
        unit = self.unit_size or -(-batch_size // self.num_workers)
        ranges = split_request(batch_size, self.num_workers, unit)
        common = dict(start_observations=start_observations, seed=seed, unit_size=unit,
                      advantage_gain_windows=advantage_gain_windows)
        if not self.workers:
            return [self.trainer.imagine.remote(start_index=0, stop_index=batch_size, **common)]
        if self._model_state is None:
            self._model_version += 1
            self._model_state = (self._model_version, [self.trainer.imagination_state.remote()])
        if self._log_delta is None:
            self._log_delta = self.trainer.get_log_delta.remote()
        return [worker.imagine.remote(world_model_state=self._model_state, module_state=module_state,
                                      log_delta=self._log_delta, start_index=start, stop_index=stop, **common)
                for worker, (start, stop) in zip(self.workers, ranges)]

    @staticmethod
    def merge(results: list):
        """Shards (`ImaginedBatch`es) in any order -> the request's `ImaginedBatch` (`ImaginedBatch.merge`)."""
        from agd_ray.imagination import ImaginedBatch

        return ImaginedBatch.merge(results)
