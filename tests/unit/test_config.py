"""AGDConfig: sections, validation messages, the model-free switch, dotted keys for Tune."""

import functools
import math
import pathlib
import re

import pytest

from agd_ray.algorithm import AGD
from agd_ray.config import AGDConfig, ImaginationConfig, ReplayConfig, WorldModelTrainingConfig
from agd_ray.envs.runner import AGDEnvRunner

ALGORITHM_MD = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "ALGORITHM.md").read_text()


def _documented(pattern: str) -> tuple[float, ...]:
    """The numbers `pattern` captures in docs/ALGORITHM.md (exactly one match)."""
    matches = re.findall(pattern, ALGORITHM_MD)
    assert len(matches) == 1, (pattern, matches)
    groups = matches[0] if isinstance(matches[0], tuple) else (matches[0],)
    return tuple(float(g) for g in groups)


@pytest.mark.parametrize("pattern, fields", [
    (r"gamma ([\d.]+), GAE lambda ([\d.]+)", ("gamma", "lambda_")),
    (r"`prefill_steps` uniformly random steps \(reference: (\d+)\)", ("replay_config.prefill_steps",)),
    (r"updates per real env step \(reference: ([\d.]+), batch (\d+)\)",
     ("world_model_training.updates_per_env_step", "world_model_config.batch_size")),
    (r"`pretrain_updates` updates \(reference: (\d+)\)", ("world_model_training.pretrain_updates",)),
    (r"reference: (\d+) windows of H=(\d+)", ("imagination_config.batch_size", "world_model_config.horizon")),
    (r"`N = (\d+)` diffusion steps", ("world_model_config.diffusion_steps",)),
    (r"Paper size: hidden (\d+), L = (\d+)", ("world_model_config.hidden_dim", "world_model_config.num_layers")),
    (r"Adam ([\d.e-]+), batch (\d+)", ("world_model_config.lr", "world_model_config.batch_size")),
    (r"EMA of the weights \(decay ([\d.]+), updated every (\d+) steps, from step (\d+)\)",
     ("world_model_config.ema_decay", "world_model_config.ema_every", "world_model_config.ema_start")),
])
def test_defaults_are_the_values_algorithm_md_states(pattern, fields):
    """The doc and the code must not drift apart: each default equals the number ALGORITHM.md gives for it."""
    config = AGDConfig()
    values = tuple(float(functools.reduce(getattr, name.split("."), config)) for name in fields)
    assert values == _documented(pattern), fields


def test_defaults_build_a_valid_model_based_agd_run():
    config = AGDConfig()
    assert config.algo_class is AGD and config.env_runner_cls is AGDEnvRunner and config.model_based
    config.environment("InvertedPendulum-v5").validate()  # the defaults are consistent with each other


def test_public_api_chain_from_architecture_md():
    config = (AGDConfig()
              .environment("HalfCheetah-v5")
              .guidance(kind="sag", temperature=1.0)
              .world_model(hidden_dim=1024, num_layers=6, horizon=10, diffusion_steps=128, sampling_steps=128)
              .imagination(batch_size=1024, num_workers=1)
              .replay(capacity=1_000_000, prefill_steps=5000))
    config.validate()
    # Every value there is a default, so each section must equal the default one; the setters are checked below.
    default = AGDConfig()
    for section in ("guide_config", "world_model_config", "imagination_config", "replay_config"):
        assert getattr(config, section) == getattr(default, section), section
    # The same chain with a non-default value for every key: each lands in its own field.
    config = (AGDConfig()
              .guidance(kind="eag", temperature=0.5)
              .world_model(hidden_dim=64, num_layers=2, horizon=4, diffusion_steps=32, sampling_steps=8)
              .imagination(batch_size=96, num_workers=3)
              .replay(capacity=5000, prefill_steps=200))
    assert (config.guide_config.kind, config.guide_config.temperature) == ("eag", 0.5)
    wm = config.world_model_config
    assert (wm.hidden_dim, wm.num_layers, wm.horizon, wm.diffusion_steps, wm.sampling_steps) == (64, 2, 4, 32, 8)
    assert (config.imagination_config.batch_size, config.imagination_config.num_workers) == (96, 3)
    assert (config.replay_config.capacity, config.replay_config.prefill_steps) == (5000, 200)


def test_sections_are_frozen_and_replaced_not_mutated():
    config = AGDConfig()
    before = config.guide_config
    config.guidance(temperature=0.5)
    assert before.temperature == 1.0 and config.guide_config.temperature == 0.5
    with pytest.raises(AttributeError):
        config.replay_config.capacity = 3  # frozen dataclass


def test_world_model_splits_model_and_training_fields():
    config = AGDConfig().world_model(horizon=5, updates_per_env_step=0.5, pretrain_updates=10, num_gpus=0.5)
    assert config.world_model_config.horizon == 5
    assert config.world_model_training == WorldModelTrainingConfig(
        updates_per_env_step=0.5, pretrain_updates=10, num_gpus=0.5)


@pytest.mark.parametrize(
    "call, quoted",
    [
        (lambda c: c.guidance(temperature=-1.0), "temperature=-1.0"),
        (lambda c: c.guidance(temperature=0.0), "temperature=0.0"),
        (lambda c: c.guidance(kind="swirl"), "kind='swirl'"),
        (lambda c: c.guidance(tempreature=1.0), "tempreature"),
        (lambda c: c.world_model(horizon=1), "horizon=1"),
        (lambda c: c.world_model(updates_per_env_step=-1.0), "updates_per_env_step=-1.0"),
        (lambda c: c.world_model(widht=3), "widht"),
        (lambda c: c.imagination(batch_size=0), "batch_size=0"),
        (lambda c: c.imagination(num_workers=0), "num_workers=0"),
        (lambda c: c.imagination(unit_size=-1), "unit_size=-1"),
        (lambda c: c.imagination(num_gpus_per_worker=-0.5), "num_gpus_per_worker=-0.5"),
        (lambda c: c.imagination(termination="learned"), "termination='learned' is not allowed; choose one of 'model'"),
        (lambda c: c.replay(prefill_steps=-5), "prefill_steps=-5"),
        (lambda c: c.replay(capacity=0), "capacity=0"),
    ],
)
def test_bad_values_raise_value_error_quoting_them(call, quoted):
    with pytest.raises(ValueError) as error:
        call(AGDConfig())
    assert quoted in str(error.value)


def test_imagination_worker_resources_default_to_a_share_of_the_world_models():
    config = AGDConfig().world_model(num_gpus=1.0, num_cpus=2).imagination(num_workers=4)
    assert config.imagination_config.worker_resources(config.world_model_training) == {"num_gpus": 0.25,
                                                                                       "num_cpus": 2}
    config.imagination(num_gpus_per_worker=1.0, num_cpus_per_worker=0)
    assert config.imagination_config.worker_resources(config.world_model_training) == {"num_gpus": 1.0,
                                                                                       "num_cpus": 0}


def test_actor_bundles_cover_the_world_model_and_imagination_workers():
    config = AGDConfig().world_model(num_gpus=1.0, num_cpus=1).imagination(num_workers=2)
    assert config.actor_bundles() == [{"CPU": 1, "GPU": 1.0}, {"CPU": 1, "GPU": 0.5}, {"CPU": 1, "GPU": 0.5}]
    assert AGDConfig().world_model(num_cpus=0).actor_bundles() == []
    assert AGDConfig().model_free().actor_bundles() == []


def test_validate_names_unknown_env_and_allowed_ones():
    with pytest.raises(ValueError) as error:
        AGDConfig().environment("CartPole-v1").validate()
    assert "CartPole-v1" in str(error.value) and "InvertedPendulum-v5" in str(error.value)


def test_validate_refuses_an_env_rule_the_env_config_changes():
    config = AGDConfig().environment("Hopper-v5", env_config={"terminate_when_unhealthy": False})
    config.validate()  # the diffused terminal channel learns whatever the env does
    with pytest.raises(ValueError, match="env_config sets terminate_when_unhealthy"):
        config.imagination(termination="env").validate()


def test_validate_minibatch_fits_the_imagined_batch():
    config = (AGDConfig().environment("Hopper-v5").training(train_batch_size_per_learner=4000, minibatch_size=2000)
              .imagination(batch_size=16).world_model(horizon=5))
    with pytest.raises(ValueError, match="minibatch_size=2000"):
        config.validate()
    config.model_free().validate()  # the baseline's minibatches come from real data only


def test_model_free_switch():
    config = AGDConfig().model_free()
    assert not config.model_based
    assert AGDConfig().model_free().model_free(False).model_based


def test_dotted_flat_keys_round_trip_for_tune():
    config = AGDConfig().update_from_dict(
        {"guidance.temperature": 2.0, "world_model.horizon": 4, "world_model.pretrain_updates": 3,
         "imagination.batch_size": 64, "replay.prefill_steps": 100, "lr": 1e-3})
    assert config.guide_config.temperature == 2.0
    assert config.world_model_config.horizon == 4
    assert config.world_model_training.pretrain_updates == 3
    assert config.imagination_config == ImaginationConfig(batch_size=64)
    assert config.replay_config == ReplayConfig(prefill_steps=100)
    assert config.lr == 1e-3
    flat = config.flat_sections()
    assert flat["guidance.temperature"] == 2.0 and flat["world_model.horizon"] == 4
    # to_dict (what Tune's param_space sees) rebuilds the same sections
    rebuilt = AGDConfig().update_from_dict(config.to_dict())
    assert rebuilt.guide_config == config.guide_config
    assert rebuilt.world_model_config == config.world_model_config
    assert rebuilt.world_model_training == config.world_model_training
    assert rebuilt.replay_config == config.replay_config


def test_infinite_temperature_is_a_disabled_guide():
    assert not AGDConfig().guidance(temperature=math.inf).guide_config.enabled
