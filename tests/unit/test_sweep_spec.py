"""Sweep files (tune_configs/*.yaml): the shipped ones load, bad ones fail naming the key, before any Ray."""

import copy
import pathlib

import pytest
import yaml

from agd_ray.sweep import load_sweep, param_space_example, trial_resources, write_summary

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tune_configs"
SMOKE = yaml.safe_load((CONFIGS / "smoke.yaml").read_text())


@pytest.mark.parametrize("name, num_trials", [("smoke", 2), ("guidance_temperature", 2 * 4 * 3), ("baselines", 6 * 5),
                                             ("halfcheetah_cpu", 3 * 5), ("guidance_temperature_cpu", 2 * 4 * 3)])
def test_shipped_files_load_and_expand(name, num_trials):
    from ray.tune.search.variant_generator import generate_variants

    spec = load_sweep(CONFIGS / f"{name}.yaml")
    trials = spec.trials()
    assert len(trials) == num_trials
    # Tune's own expansion of the param space gives the same trials (methods' keys follow the method).
    variants = [config for _, config in generate_variants(spec.param_space())]
    assert len(variants) == num_trials

    base_temperature = spec.base_config().guide_config.temperature  # for methods that leave it alone

    def key(settings):
        return (settings.get("method", settings.get("sweep_method")), settings["seed"], settings["guidance.kind"],
                settings.get("guidance.temperature", base_temperature), settings.get("model_based", True))

    expected = [key(t) for t in trials]
    assert sorted(map(key, variants), key=repr) == sorted(expected, key=repr)


def test_baselines_model_free_is_plain_ppo_and_reference_is_written_out():
    from agd_ray.world_model.config import GuideConfig

    spec = load_sweep(CONFIGS / "baselines.yaml")
    model_free = [t for t in spec.trials() if t["method"] == "model-free"]
    assert model_free and all(t["model_based"] is False and t["guidance.kind"] == "none" for t in model_free)
    reference = GuideConfig.reference("sag", 1.0).to_dict()
    settings = {k.partition(".")[2]: v for k, v in spec.methods["sag-reference"].items()}
    assert {k: reference[k] for k in settings} == settings


def _write(tmp_path, data) -> pathlib.Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _edit(path_in_file, value):
    data = copy.deepcopy(SMOKE)
    *parents, last = path_in_file
    node = data
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    "where, value, named, allowed",
    [
        (("temperatures",), [1.0], "'temperatures'", "allowed top-level keys"),
        (("env",), _DELETE, "'env'", "MuJoCo task id"),
        (("env",), "CartPole-v1", "CartPole-v1", "InvertedPendulum-v5"),
        (("preset",), "huge", "preset='huge'", "cpu"),
        (("env_steps",), "many", "env_steps='many'", "integer >= 1"),
        (("seeds",), [0, "one"], "seeds[1]='one'", "integer >= 0"),
        (("grid", "guidance.temprature"), [1.0], "grid.guidance.temprature", "guidance.temperature"),
        (("grid", "guidance.temperature"), [1.0, -0.5], "temperature=-0.5", "> 0"),
        (("grid", "guidance.temperature"), ["hot"], "grid.guidance.temperature='hot'", "a number"),
        (("grid", "guidance.temperature"), 2.0, "grid.guidance.temperature=2.0", "list"),
        (("methods", "sag", "guidance.kind"), "magic", "methods.sag.guidance.kind", "'sag'"),
        (("methods", "sag", "model_free"), "yes", "methods.sag.model_free='yes'", "true or false"),
        (("methods", "sag", "guidance.temperature"), 1.0, "grid.guidance.temperature", "one place"),
        (("config", "world_model.horizon"), 1, "world_model.horizon", ">= 2"),
        (("config", "world_model.hidden_dim"), 16.5, "config.world_model.hidden_dim=16.5", "an integer"),
        (("config", "training.lr"), -1e-3, "config.training.lr=-0.001", "> 0"),
        (("config", "training.momentum"), 0.9, "config.training.momentum", "training.lr"),
        (("config", "policy.hidden"), 8, "config.policy.hidden", "guidance"),
        (("resources", "gpus"), 1, "resources.gpus", "world_model_gpus"),
        (("resources", "world_model_gpus"), -1, "resources.world_model_gpus=-1", ">= 0"),
        (("eval_interval",), -1, "eval_interval=-1", "integer >= 0"),
        # a value only the whole trial's config can check: minibatch > imagined transitions per update
        (("config", "imagination.batch_size"), 4, "minibatch_size=32", "imagined transitions"),
    ],
)
def test_bad_file_names_the_key(tmp_path, where, value, named, allowed):
    path = _write(tmp_path, _edit(where, value))
    with pytest.raises(ValueError) as error:
        load_sweep(path)
    message = str(error.value)
    assert named in message and allowed in message, message
    assert "\n" not in message.strip().splitlines()[0]


def test_missing_or_non_yaml_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_sweep(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("env: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_sweep(tmp_path / "bad.yaml")


def test_trial_resources_include_the_world_model_gpu():
    spec = load_sweep(CONFIGS / "guidance_temperature.yaml")
    config = param_space_example(spec)
    bundles = trial_resources(config).bundles
    # main process (local learner), 2 env runners, 1 evaluation runner, then the world model's bundle
    assert bundles == [{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0, "GPU": 0.5}]
    model_free = trial_resources({**config, "model_based": False}).bundles
    assert all("GPU" not in b for b in model_free) and len(model_free) == 4


def test_summary_files(tmp_path):
    rows = [
        {"trial": f"t{i}", "method": m, "guide": m, "temperature": t, "seed": s, "final_eval_return": 10.0 * t + s,
         "best_eval_return": 10.0 * t + s + 1, "final_train_return": 1.0, "env_steps": 400, "iterations": 2,
         "wall_s": 1.0, "status": "done"}
        for i, (m, t, s) in enumerate([("sag", 0.5, 0), ("sag", 0.5, 1), ("sag", 2.0, 0), ("eag", 1.0, 0)])
    ]
    write_summary(rows, tmp_path / "out", title="test")
    lines = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert len(lines) == 1 + len(rows) and lines[0].startswith("trial,method,guide,temperature,seed")
    assert (tmp_path / "out" / "summary.md").read_text().count("\n| ") == 1 + len(rows)  # header + one line per trial
    assert (tmp_path / "out" / "return_vs_temperature.png").stat().st_size > 1000


def test_trial_history_reads_every_result_once(tmp_path):
    """result.json, not progress.csv (whose columns Tune fixes at the first result, before any evaluation):
    the last line per iteration wins (a restored trial repeats iterations), a line cut short is skipped."""
    import json

    from agd_ray.sweep import measured_evaluations, trial_history

    def result(iteration, steps, evaluation=None):
        out = {"training_iteration": iteration, "agd": {"env_steps_lifetime": steps},
               "config": {"evaluation_interval": 2}}
        if evaluation is not None:
            out["evaluation"] = {"env_runners": {"episode_return_mean": evaluation}}
        return json.dumps(out)

    lines = [result(1, 100), result(2, 200, 5.0), result(3, 300, 5.0),  # 3 repeats 2's evaluation
             result(2, 210, 7.0), result(3, 310, 7.0), result(4, 410, 9.0), '{"training_iteration": 5, "ag']
    (tmp_path / "result.json").write_text("\n".join(lines))
    history = trial_history(tmp_path)
    assert [r["training_iteration"] for r in history] == [1, 2, 3, 4]
    assert measured_evaluations(history) == [(210, 7.0), (410, 9.0)]
    assert trial_history(tmp_path / "missing") == []



def test_summary_row_takes_the_best_and_the_last_measured_evaluation(tmp_path):
    """Evaluations 5, 9, 7 at iterations 2, 4, 6 (RLlib repeats the last one in between): best 9, final 7, so a
    swap of the two, a first-instead-of-last, or counting a repeated value as measured all fail."""
    import json
    import types

    from agd_ray.sweep import summary_rows

    evaluations = {2: 5.0, 4: 9.0, 6: 7.0}
    lines, repeated = [], None
    for iteration in range(1, 7):
        repeated = evaluations.get(iteration, repeated)
        result = {"training_iteration": iteration, "agd": {"env_steps_lifetime": 100 * iteration},
                  "config": {"evaluation_interval": 2}, "time_total_s": 12.34,
                  "env_runners": {"episode_return_mean": float(iteration)}}
        if repeated is not None:
            result["evaluation"] = {"env_runners": {"episode_return_mean": repeated}}
        lines.append(json.dumps(result))
    (tmp_path / "result.json").write_text("\n".join(lines))
    trial = types.SimpleNamespace(config={"seed": 3, "guidance.kind": "sag", "guidance.temperature": 0.5},
                                  metrics=json.loads(lines[-1]), path=str(tmp_path), error=None)
    (row,) = summary_rows([trial])
    assert (row["final_eval_return"], row["best_eval_return"]) == (7.0, 9.0)
    assert (row["final_train_return"], row["env_steps"], row["iterations"]) == (6.0, 600, 6)
    assert (row["guide"], row["temperature"], row["seed"], row["status"]) == ("sag", 0.5, 3, "done")

def test_command_line_config_items_read_as_yaml_and_are_checked_as_a_files():
    from agd_ray.sweep import parse_config_items, parse_value

    assert parse_value("true") is True and parse_value("16") == 16 and parse_value("xt") == "xt"
    assert parse_value("1e9") == 1e9 and parse_value("inf") == float("inf")  # YAML 1.1 reads these as strings
    items = ["world_model.policy_guidance=causal", "imagination.termination=env", "training.vf_clip_param=inf"]
    assert parse_config_items(items) == {"world_model.policy_guidance": "causal", "imagination.termination": "env",
                                         "training.vf_clip_param": float("inf")}
    for item, message in [("world_model.policy_guidance", "is not KEY=VALUE"),
                          ("imagination.terminaton=env", "unknown key config.imagination.terminaton; imagination keys"),
                          ("imagination.termination=learned", "termination='learned' is not allowed"),
                          ("guidance.temperature=-1", "config.guidance.temperature")]:
        with pytest.raises(ValueError, match=message):
            parse_config_items([item])
