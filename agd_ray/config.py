"""`AGDConfig`: RLlib's `PPOConfig` plus the world model, guidance, imagination and replay sections.

Each section is a frozen dataclass that validates itself on construction, so a bad value fails where it is
set, with a `ValueError` that quotes it and says what is allowed. For Tune every field also has a dotted
flat key (`"guidance.temperature"`, `"world_model.hidden_dim"`, `"replay.prefill_steps"`, ...) accepted by
`update_from_dict` (and so by `param_space`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.utils.annotations import override

from agd_ray.envs.core import validate_env_id
from agd_ray.envs.termination import terminal_rule
from agd_ray.world_model.config import GuideConfig, WorldModelConfig, check_choice, check_field as _check

# Ray's own resource names (num_cpus, num_gpus, memory): a `resources` mapping holds only custom ones.
_RAY_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def check_resources(name: str, value, *, none_allowed: bool = False) -> None:
    """A section's `resources`: custom Ray resources an actor asks for (`.options(resources=...)`), so that it lands
    on the nodes that advertise them (`ray start --resources`, a cluster YAML's node type; docs/CLUSTER.md)."""
    def amount_ok(amount) -> bool:  # Ray: a fraction below 1, or a whole number
        return (isinstance(amount, (int, float)) and not isinstance(amount, bool) and math.isfinite(amount)
                and amount > 0 and (amount <= 1 or float(amount).is_integer()))

    ok = (value is None and none_allowed) or (isinstance(value, dict) and all(
        isinstance(k, str) and k and k not in _RAY_RESOURCES and not k.startswith("node:") and amount_ok(v)
        for k, v in value.items()))
    _check(name, value, ok, ("None or " if none_allowed else "") + "a mapping of custom resource names to amounts "
           "(> 0; above 1 whole numbers), e.g. {agd_gpu_worker: 1} (CPU and GPU have fields of their own)")


@dataclass(frozen=True)
class WorldModelTrainingConfig:
    """When and where the world model trains (ALGORITHM.md section 5, step 2)."""

    updates_per_env_step: float = 1.0  # world-model updates per real env step (reference: 1.0)
    pretrain_updates: int = 1000  # the first imagination waits for this many updates (reference: 1000)
    batches_per_call: int = 16  # training batches pulled from replay per actor call (>= 1000 transitions)
    num_gpus: float = 0.0  # GPUs for the world-model actor (fractions allowed); 0: CPU
    num_cpus: float = 1.0  # CPUs reserved for the world-model actor
    torch_threads: int = 1  # torch.set_num_threads in the actor (ENVIRONMENT.md: 1 on small machines)
    # Custom Ray resources of the world-model actor, e.g. {"agd_gpu_worker": 1}: it is placed on a node that
    # advertises them (cluster/*.yaml). {}: wherever its CPUs and GPUs fit.
    resources: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check("updates_per_env_step", self.updates_per_env_step, self.updates_per_env_step >= 0, ">= 0")
        _check("pretrain_updates", self.pretrain_updates, int(self.pretrain_updates) >= 0, "an integer >= 0")
        _check("batches_per_call", self.batches_per_call, self.batches_per_call >= 1, "an integer >= 1")
        _check("num_gpus", self.num_gpus, self.num_gpus >= 0, ">= 0")
        _check("num_cpus", self.num_cpus, self.num_cpus >= 0, ">= 0")
        _check("torch_threads", self.torch_threads, self.torch_threads >= 1, "an integer >= 1")
        check_resources("resources", self.resources)


IMAGINATION_SOURCES = ("diffusion", "simulator")
IMAGINATION_TERMINATIONS = ("model", "env")


@dataclass(frozen=True)
class ImaginationConfig:
    """Guided imagination feeding PPO (ALGORITHM.md section 5, steps 3-4)."""

    batch_size: int = 1024  # imagined windows per PPO update (reference: 1024)
    num_workers: int = 1  # imagination workers; 1: the world-model trainer imagines; K > 1: K actors of their own
    unit_size: int = 0  # windows per generator (seeded from (seed, first window)); 0: batch_size / num_workers
    num_gpus_per_worker: float | None = None  # GPUs per imagination worker (K > 1); None: world_model.num_gpus / K
    num_cpus_per_worker: float | None = None  # CPUs per imagination worker (K > 1); None: world_model.num_cpus
    resources_per_worker: dict | None = None  # custom Ray resources per imagination worker; None: world_model.resources
    policy_updates_per_iteration: int = 1  # imagine + PPO-update rounds per training iteration
    # Windows of an unguided twin batch imagined with every batch to measure a gradient guide's
    # guidance/advantage_gain (0: off; it adds sampling to every batch, so the quality measurement is the
    # default place for it). A resampling guide measures its gain on every batch at no extra cost.
    advantage_gain_windows: int = 0
    quality_interval: int = 0  # world-model quality (open-loop error, action z) every N iterations (0: off)
    quality_windows: int = 32  # real windows from replay per quality measurement
    # "diffusion": the world model imagines. "simulator": the perfect-model control, windows rolled out from the
    # same start states in the MuJoCo simulator with the policy's own samples (world_model/simulator.py).
    source: str = "diffusion"
    # Which imagined transitions terminate. "model": the diffused terminal channel, d_hat > 0.5 (ALGORITHM.md 3).
    # "env": the task's own termination rule on the imagined states, d[h] = rule(s[h+1]) (agd_ray/envs/
    # termination.py), in the windows PPO gets and in the advantage guide's cut.
    termination: str = "model"

    def __post_init__(self) -> None:
        _check("batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1")
        _check("num_workers", self.num_workers, int(self.num_workers) == self.num_workers >= 1, "an integer >= 1")
        _check("unit_size", self.unit_size, int(self.unit_size) == self.unit_size >= 0, "an integer >= 0")
        for name in ("num_gpus_per_worker", "num_cpus_per_worker"):
            value = getattr(self, name)
            _check(name, value, value is None or value >= 0, "None or >= 0")
        check_resources("resources_per_worker", self.resources_per_worker, none_allowed=True)
        _check(
            "policy_updates_per_iteration",
            self.policy_updates_per_iteration,
            self.policy_updates_per_iteration >= 1,
            "an integer >= 1",
        )
        _check("advantage_gain_windows", self.advantage_gain_windows, self.advantage_gain_windows >= 0, ">= 0")
        _check("quality_interval", self.quality_interval, int(self.quality_interval) == self.quality_interval >= 0,
               "an integer >= 0")
        _check("quality_windows", self.quality_windows, int(self.quality_windows) == self.quality_windows >= 1,
               "an integer >= 1")
        check_choice("source", self.source, IMAGINATION_SOURCES)
        check_choice("termination", self.termination, IMAGINATION_TERMINATIONS)

    def worker_resources(self, training: "WorldModelTrainingConfig") -> dict:
        """Ray resources of one imagination worker (only used when num_workers > 1): `.options(**...)`'s
        num_gpus and num_cpus, and `resources` when it asks for custom ones."""
        gpus = training.num_gpus / self.num_workers if self.num_gpus_per_worker is None else self.num_gpus_per_worker
        cpus = training.num_cpus if self.num_cpus_per_worker is None else self.num_cpus_per_worker
        custom = training.resources if self.resources_per_worker is None else self.resources_per_worker
        return {"num_gpus": gpus, "num_cpus": cpus, **({"resources": dict(custom)} if custom else {})}


@dataclass(frozen=True)
class ReplayConfig:
    """The replay actor and what the env runners stream into it (ALGORITHM.md sections 1 and 5)."""

    capacity: int = 1_000_000  # transitions kept (oldest dropped first)
    prefill_steps: int = 5000  # uniformly random env steps before the policy acts (reference: 5000)
    chunk_size: int = 1000  # env runners send >= this many transitions per call (and the rest at sample end)
    # Custom Ray resources of the replay actor (which takes no CPU), e.g. {"agd_head": 1}: it is placed on a node
    # that advertises them. {}: beside the run's other actors.
    resources: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check("capacity", self.capacity, self.capacity >= 1, "an integer >= 1")
        _check("prefill_steps", self.prefill_steps, self.prefill_steps >= 0, "an integer >= 0")
        _check("chunk_size", self.chunk_size, self.chunk_size >= 1, "an integer >= 1")
        check_resources("resources", self.resources)


@dataclass(frozen=True)
class RecoveryConfig:
    """Restarting the run's own actors (issue 6): the world-model trainer and the replay actor are snapshotted
    every `snapshot_interval` iterations; one that dies is recreated from its latest snapshot, and the
    requests that failed with it are made again. (Env runners are RLlib's: `fault_tolerance()`.)"""

    snapshot_interval: int = 10  # iterations between snapshots of the world model and replay (0: never)
    snapshot_dir: str | None = None  # base directory (reachable from the replay actor's node), a subdirectory per
    # run is made in it; None: <the run's log directory>/actor_snapshots (agd-ray train: OUTPUT/actor_snapshots).
    # The run's snapshots are removed when it stops (`AGD.cleanup`) and dropped when a checkpoint is restored.
    max_actor_restarts: int = 3  # restarts per actor per run before the run fails with the actor's error

    def __post_init__(self) -> None:
        _check("snapshot_interval", self.snapshot_interval,
               int(self.snapshot_interval) == self.snapshot_interval >= 0, "an integer >= 0")
        _check("snapshot_dir", self.snapshot_dir, self.snapshot_dir is None or (
            isinstance(self.snapshot_dir, str) and bool(self.snapshot_dir)), "None or a non-empty path")
        _check("max_actor_restarts", self.max_actor_restarts,
               int(self.max_actor_restarts) == self.max_actor_restarts >= 0, "an integer >= 0")


# section name (method and dotted-key prefix) -> attribute holding the frozen dataclass(es)
_SECTIONS = {
    "world_model": ("world_model_config", "world_model_training"),
    "guidance": ("guide_config",),
    "imagination": ("imagination_config",),
    "replay": ("replay_config",),
    "recovery": ("recovery_config",),
}


class AGDConfig(PPOConfig):
    """Configuration of `AGD`: PPO on guided imagined episodes, or plain PPO with `.model_free()`.

    `train_batch_size_per_learner` is the number of real env steps sampled per iteration (as in PPO);
    the imagined batch per PPO update is `imagination.batch_size` windows.
    """

    def __init__(self, algo_class=None):
        if algo_class is None:
            from agd_ray.algorithm import AGD  # local: algorithm.py imports this module

            algo_class = AGD
        super().__init__(algo_class=algo_class)
        self.world_model_config = WorldModelConfig()
        self.world_model_training = WorldModelTrainingConfig()
        self.guide_config = GuideConfig(kind="sag")
        self.imagination_config = ImaginationConfig()
        self.replay_config = ReplayConfig()
        self.recovery_config = RecoveryConfig()
        self.model_based = True
        # With evaluation on, the iteration that brings the real env steps to this count (the run's budget, set
        # by `agd-ray train` and `sweep`) evaluates too, whatever `evaluation_interval` says: every method's
        # curve then ends with an evaluation at its budget (a model-based run's first iteration also samples
        # replay's prefill, which shifts its scheduled evaluations off the budget). None: only the interval.
        self.evaluate_at_env_steps = None
        # ALGORITHM.md section 4: gamma 0.99, GAE lambda 0.9, 2x256 MLPs (RLlib's default net).
        self.gamma = 0.99
        self.lambda_ = 0.9
        self.train_batch_size_per_learner = 1000
        self.minibatch_size = 256
        self.num_epochs = 5
        # RLlib clamps each sample's squared value error at vf_clip_param (10): a sample off by more than ~3.2
        # gives the critic no gradient at all, so values of the scale of these returns (InvertedPendulum ~100,
        # HalfCheetah hundreds) are never learned (explained variance ~0, measured: docs/RESULTS.md). No clamp.
        self.vf_clip_param = float("inf")
        # A guard against rare huge gradients only: a global-norm clip at 0.5 (CleanRL's, for normalised rewards)
        # scaled every update down, the policy's with the value's (norms 2-20 measured).
        self.grad_clip = 100.0
        self.grad_clip_by = "global_norm"
        from agd_ray.envs.runner import AGDEnvRunner

        self.env_runner_cls = AGDEnvRunner

    # -- sections ---------------------------------------------------------------------------------------
    def world_model(self, **kwargs) -> "AGDConfig":
        """Fields of `WorldModelConfig` (horizon, hidden_dim, ...) and `WorldModelTrainingConfig`
        (updates_per_env_step, pretrain_updates, num_gpus, ...)."""
        model_keys = {f.name for f in fields(WorldModelConfig)}
        training_keys = {f.name for f in fields(WorldModelTrainingConfig)}
        unknown = sorted(set(kwargs) - model_keys - training_keys)
        if unknown:
            raise ValueError(f"unknown world_model keys {unknown}; allowed: {sorted(model_keys | training_keys)}")
        model = {k: v for k, v in kwargs.items() if k in model_keys}
        training = {k: v for k, v in kwargs.items() if k in training_keys}
        self.world_model_config = replace(self.world_model_config, **model)
        self.world_model_training = replace(self.world_model_training, **training)
        return self

    def guidance(self, **kwargs) -> "AGDConfig":
        """Fields of `GuideConfig`: kind (none|sag|eag|reward), temperature, scale, advantage, ..."""
        self.guide_config = _replace_checked("guidance", self.guide_config, kwargs)
        return self

    def imagination(self, **kwargs) -> "AGDConfig":
        """Fields of `ImaginationConfig`: batch_size, num_workers, policy_updates_per_iteration, ..."""
        self.imagination_config = _replace_checked("imagination", self.imagination_config, kwargs)
        return self

    def replay(self, **kwargs) -> "AGDConfig":
        """Fields of `ReplayConfig`: capacity, prefill_steps, chunk_size."""
        self.replay_config = _replace_checked("replay", self.replay_config, kwargs)
        return self

    def recovery(self, **kwargs) -> "AGDConfig":
        """Fields of `RecoveryConfig`: snapshot_interval, snapshot_dir, max_actor_restarts."""
        self.recovery_config = _replace_checked("recovery", self.recovery_config, kwargs)
        return self

    def model_free(self, enabled: bool = True) -> "AGDConfig":
        """Plain PPO on real data in the same harness (the model-free baseline): no replay, no world model."""
        self.model_based = not enabled
        return self

    def actor_bundles(self) -> list[dict]:
        """Placement-group bundles of the actors `AGD.setup` creates besides RLlib's own: the world-model
        trainer and, with `imagination.num_workers` > 1, one per imagination worker, each with its custom
        resources; the replay actor takes no CPU, so it has a bundle only with `replay.resources`. Empty for the
        model-free baseline."""
        if not self.model_based:
            return []
        training, imagination = self.world_model_training, self.imagination_config
        resources = [{"num_cpus": training.num_cpus, "num_gpus": training.num_gpus, "resources": training.resources}]
        if imagination.num_workers > 1:
            resources += [imagination.worker_resources(training)] * imagination.num_workers
        resources.append({"num_cpus": 0, "num_gpus": 0, "resources": self.replay_config.resources})
        bundles = [{**{k: v for k, v in (("CPU", r["num_cpus"]), ("GPU", r["num_gpus"])) if v > 0},
                    **r.get("resources", {})} for r in resources]
        return [b for b in bundles if b]

    def custom_resources(self) -> dict:
        """Every custom resource a run's actors ask for (its own actors and RLlib's env runners), name ->
        the largest amount one actor asks; {} when none does (the run fits any Ray with enough CPUs and GPUs)."""
        asked: dict = {}
        bundles = [*self.actor_bundles(), dict(self.custom_resources_per_env_runner or {})]
        for bundle in bundles:
            for name, amount in bundle.items():
                if name not in ("CPU", "GPU"):
                    asked[name] = max(asked.get(name, 0), amount)
        return asked

    # -- Tune / serialisation ----------------------------------------------------------------------------
    def flat_sections(self) -> dict:
        """All section fields as dotted flat keys: {"guidance.temperature": 1.0, ...}."""
        flat = {}
        for section, attrs in _SECTIONS.items():
            for attr in attrs:
                for key, value in asdict(getattr(self, attr)).items():
                    flat[f"{section}.{key}"] = value
        flat["model_based"] = self.model_based
        return flat

    @override(PPOConfig)
    def to_dict(self):
        config = super().to_dict()
        for attrs in _SECTIONS.values():
            for attr in attrs:
                config[attr] = asdict(getattr(self, attr))
        return config

    @override(PPOConfig)
    def update_from_dict(self, config_dict):
        config_dict = dict(config_dict)
        section_kwargs: dict[str, dict] = {s: {} for s in _SECTIONS}
        for key in list(config_dict):
            prefix, _, name = key.partition(".")
            if name and prefix in _SECTIONS:
                section_kwargs[prefix][name] = config_dict.pop(key)
            for section, attrs in _SECTIONS.items():
                if key in attrs and isinstance(config_dict.get(key), dict):
                    section_kwargs[section].update(config_dict.pop(key))
        super().update_from_dict(config_dict)
        for section, kwargs in section_kwargs.items():
            if kwargs:
                getattr(self, section)(**kwargs)
        return self

    # -- checks --------------------------------------------------------------------------------------------
    @override(PPOConfig)
    def validate(self) -> None:
        super().validate()
        if isinstance(self.env, str):
            validate_env_id(self.env)
        _check("evaluate_at_env_steps", self.evaluate_at_env_steps,
               self.evaluate_at_env_steps is None or int(self.evaluate_at_env_steps) == self.evaluate_at_env_steps >= 1,
               "None or an integer >= 1")
        if self.model_based and not self.in_evaluation:
            guide = self.guide_config
            _check("guidance.kind", guide.kind, self.imagination_config.source == "diffusion" or not guide.enabled,
                   "'none' with imagination.source='simulator' (the simulator is not guided)")
            if self.imagination_config.termination == "env" and isinstance(self.env, str):
                terminal_rule(self.env, self.env_config)  # raises for an env_config that changes the rule
            _check(
                "minibatch_size",
                self.minibatch_size,
                self.minibatch_size is None
                or self.minibatch_size <= self.imagination_config.batch_size * (self.world_model_config.horizon - 1),
                f"<= imagined transitions per update (batch_size x (horizon - 1) = "
                f"{self.imagination_config.batch_size * (self.world_model_config.horizon - 1)})",
            )


def _replace_checked(section: str, current, kwargs: dict):
    known = {f.name for f in fields(current)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"unknown {section} keys {unknown}; allowed: {sorted(known)}")
    return replace(current, **kwargs)
