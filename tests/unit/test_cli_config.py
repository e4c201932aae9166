"""`agd-ray train --config KEY=VALUE`: dotted keys over the preset reach the AGDConfig (no Ray started)."""

import math

import pytest

from agd_ray.cli import build_config, build_parser, check_train_args
from agd_ray.errors import UsageError


def config_of(*argv):
    args = build_parser().parse_args(["train", "--env", "InvertedPendulum-v5", "--preset", "cpu", *argv])
    return build_config(args, check_train_args(args))


def test_config_keys_override_the_preset():
    base = config_of()
    config = config_of("--config", "world_model.policy_guidance=causal", "imagination.termination=env",
                       "world_model.updates_per_env_step=2", "training.vf_clip_param=5", "guidance.temperature=0.3")
    assert (base.world_model_config.policy_guidance, base.imagination_config.termination) == ("score", "model")
    assert config.world_model_config.policy_guidance == "causal"
    assert config.imagination_config.termination == "env"
    assert config.world_model_training.updates_per_env_step == 2.0
    assert config.vf_clip_param == 5 and math.isinf(base.vf_clip_param)
    assert config.guide_config.temperature == 0.3
    # the rest of the preset stays
    assert config.world_model_config.hidden_dim == base.world_model_config.hidden_dim
    assert config.imagination_config.batch_size == base.imagination_config.batch_size


def test_bad_config_item_is_a_usage_error_naming_it():
    with pytest.raises(UsageError, match="config.world_model.policy_guidance: policy_guidance='joint' is not allowed; "
                                         "choose one of 'score'"):
        config_of("--config", "world_model.policy_guidance=joint")


def test_self_weighted_guide_is_accepted():
    config = config_of("--guide", "swg", "--scale", "1", "--config", "guidance.swg_weight=exp")
    assert (config.guide_config.kind, config.guide_config.scale, config.guide_config.swg_weight) == ("swg", 1.0, "exp")
    assert config.guide_config.enabled and not config.guide_config.resampling
