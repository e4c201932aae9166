"""Placing actors on node types by custom resources (issue 17, item 1), without Ray: `world_model.resources`,
`imagination.resources_per_worker`, `replay.resources` and a sweep's `resources.env_runner_resources` are checked
where they are set, go into the trial's placement-group bundles, and a run that asks for them without a cluster is
refused before Ray starts (the embedded local Ray has none of them: it would wait forever)."""

import copy
import pathlib
import re

import pytest
import yaml

from agd_ray import AGDConfig
from agd_ray.sweep import param_space_example, parse_sweep, run_sweep, trial_resources

ROOT = pathlib.Path(__file__).resolve().parents[2]
SMOKE = yaml.safe_load((ROOT / "tune_configs" / "smoke.yaml").read_text())


@pytest.mark.parametrize("value", [{"CPU": 1}, {"GPU": 1}, {"memory": 1}, {"node:10.0.0.1": 1}, {"x": 0}, {"x": -1},
                                   {"x": 1.5}, {"x": True}, {"x": float("inf")}, {"": 1}, {3: 1}, ["x"], "x", None])
@pytest.mark.parametrize("section, key", [("world_model", "resources"), ("replay", "resources"),
                                          ("imagination", "resources_per_worker")])
def test_bad_resources_are_refused_naming_them(section, key, value):
    if value is None and key == "resources_per_worker":  # None: the world model's
        return
    with pytest.raises(ValueError) as error:
        getattr(AGDConfig(), section)(**{key: value})
    message = str(error.value)
    assert message.startswith(f"{key}={value!r} is not allowed") and "custom resource names" in message


def test_bundles_carry_the_custom_resources():
    config = (AGDConfig().world_model(num_cpus=1, num_gpus=0.5, resources={"agd_gpu_worker": 1})
              .imagination(num_workers=2).replay(resources={"agd_head": 1}))
    # the trainer, two imagination workers (the trainer's resources by default), the replay actor (no CPU)
    assert config.actor_bundles() == [{"CPU": 1, "GPU": 0.5, "agd_gpu_worker": 1}] + \
        [{"CPU": 1, "GPU": 0.25, "agd_gpu_worker": 1}] * 2 + [{"agd_head": 1}]
    config.imagination(resources_per_worker={"agd_cpu_worker": 0.5}, num_gpus_per_worker=0)
    assert config.actor_bundles()[1:3] == [{"CPU": 1, "agd_cpu_worker": 0.5}] * 2
    assert config.imagination_config.worker_resources(config.world_model_training) == {
        "num_gpus": 0, "num_cpus": 1, "resources": {"agd_cpu_worker": 0.5}}
    config.imagination(resources_per_worker={})  # none, while the trainer keeps its own
    assert config.actor_bundles()[1:3] == [{"CPU": 1}] * 2
    # without custom resources the bundles are as before: no replay bundle
    assert AGDConfig().world_model(num_cpus=1).actor_bundles() == [{"CPU": 1}]
    assert AGDConfig().model_free().replay(resources={"agd_head": 1}).actor_bundles() == []


def test_custom_resources_collects_every_actor_and_the_env_runners():
    config = (AGDConfig().world_model(resources={"agd_gpu_worker": 1}).replay(resources={"agd_head": 0.5})
              .env_runners(custom_resources_per_env_runner={"agd_cpu_worker": 1}))
    assert config.custom_resources() == {"agd_gpu_worker": 1, "agd_head": 0.5, "agd_cpu_worker": 1}
    assert AGDConfig().custom_resources() == {}


def test_flat_keys_round_trip():
    config = AGDConfig().update_from_dict({"world_model.resources": {"agd_gpu_worker": 1},
                                           "replay.resources": {"agd_head": 1},
                                           "imagination.resources_per_worker": {"agd_cpu_worker": 1}})
    flat = config.flat_sections()
    assert (flat["world_model.resources"], flat["replay.resources"], flat["imagination.resources_per_worker"]) == (
        {"agd_gpu_worker": 1}, {"agd_head": 1}, {"agd_cpu_worker": 1})
    again = AGDConfig().update_from_dict(config.to_dict())
    assert again.flat_sections() == flat


def placed_sweep(**resources):
    data = copy.deepcopy(SMOKE)
    data["config"].update({"world_model.resources": {"agd_gpu_worker": 1}, "replay.resources": {"agd_head": 1}})
    data["resources"].update(num_env_runners=1, **resources)
    return data


def test_sweep_places_the_trials_actors():
    spec = parse_sweep(placed_sweep(env_runner_resources={"agd_cpu_worker": 1}))
    bundles = trial_resources(param_space_example(spec)).bundles
    # the trial's process (PPO learner), its env runner, the trainer (no CPU in smoke.yaml), the replay actor
    assert bundles == [{"CPU": 1.0}, {"CPU": 1.0, "agd_cpu_worker": 1}, {"agd_gpu_worker": 1}, {"agd_head": 1}]


@pytest.mark.parametrize("value, quoted", [({"CPU": 1}, "{'CPU': 1}"), (2, "2"), ({"x": -1}, "{'x': -1}")])
def test_sweep_refuses_bad_env_runner_resources(value, quoted):
    with pytest.raises(ValueError) as error:
        parse_sweep(placed_sweep(env_runner_resources=value))
    assert str(error.value).startswith(f"resources.env_runner_resources={quoted} is not allowed")
    with pytest.raises(ValueError, match=re.escape("config.world_model.resources: resources={'CPU': 1} is not")):
        parse_sweep({**SMOKE, "config": {**SMOKE["config"], "world_model.resources": {"CPU": 1}}})


def test_local_ray_refuses_custom_resources_before_it_starts(tmp_path):
    import ray

    from agd_ray.cli import check_local_resources
    from agd_ray.errors import UsageError

    with pytest.raises(UsageError, match=r"custom resources \{'agd_head': 1\}.* give --address"):
        check_local_resources(AGDConfig().replay(resources={"agd_head": 1}), num_cpus=2)
    with pytest.raises(ValueError, match="custom resources agd_cpu_worker, agd_gpu_worker, agd_head.*--address"):
        run_sweep(parse_sweep(placed_sweep(env_runner_resources={"agd_cpu_worker": 1})), output=tmp_path)
    assert not ray.is_initialized()
