"""bench/sample_efficiency.py: its method table and the arithmetic of its summary (interpolated returns at fixed
env steps, AUC), on synthetic evaluation curves with closed-form answers."""

import dataclasses

import numpy as np
import pytest

from agd_ray import evaluate
from bench import sample_efficiency as se


def test_reference_method_is_the_reference_guide():
    from agd_ray.world_model.config import GuideConfig

    reference = dataclasses.asdict(GuideConfig.reference("sag", 1.0))
    for key, value in se.REFERENCE_SAG.items():
        assert reference[key.partition(".")[2]] == value, key


def test_method_names():
    assert se.method_settings("sag@0.3") == {"guidance.kind": "sag", "guidance.temperature": 0.3}
    assert se.method_settings("ppo") == {"model_free": True}
    assert set(se.DEFAULT_METHODS) < set(se.METHODS)
    for bad in ("dreamer", "sag@-1", "sag@x", "polygrad@1", "sag@inf"):
        with pytest.raises(ValueError, match="not allowed"):
            se.method_settings(bad)


def trial(method: str, seed: int, steps, returns, *, last_step=None):
    rows = [{"env_steps": s, "eval_return": r, "wall_s": 10.0, "imagined_transitions": None,
             "advantage_gain": None, "open_loop_mse_guided": None, "open_loop_mse_unguided": None,
             "action_z_mean_guided": None, "action_z_std_guided": None} for s, r in zip(steps, returns)]
    if last_step is not None:
        rows.append({**rows[-1], "env_steps": last_step, "eval_return": None})
    return {"experiment": "x", "method": method, "seed": seed, "guide": "sag", "temperature": 1.0,
            "model_based": True, "rows": rows}


def test_summary_interpolates_on_env_steps_and_averages_seeds():
    # seed 0: 10 -> 30 linearly over [2000, 6000]; seed 1: the same plus 10
    trials = [trial("sag", 0, [2000, 4000, 6000], [10.0, 20.0, 30.0]),
              trial("sag", 1, [2000, 4000, 6000], [20.0, 30.0, 40.0])]
    (row,) = se.summarize(trials, env_steps=6000, eval_every=2000, fixed_steps=[3000, 6000])
    assert row["seeds"] == 2 and row["reached"] == 2
    assert row["return@3000"] == pytest.approx((20.0, 5.0))  # interpolated 15 and 25: mean 20, std 5
    assert row["return@6000"] == pytest.approx((35.0, 5.0))
    # AUC: the mean of a linear curve over [eval_every, env_steps] is its midpoint value
    assert row["auc"] == pytest.approx((25.0, 5.0))
    assert row["best"] == pytest.approx(35.0)


def test_summary_does_not_extrapolate_past_the_last_evaluation():
    # evaluated only up to 2000 of an unfinished 6000-step run: no value at 6000, AUC flat beyond 2000
    trials = [trial("eag", 0, [1000, 2000], [5.0, 7.0], last_step=2500)]
    (row,) = se.summarize(trials, env_steps=6000, eval_every=2000, fixed_steps=[2000, 4000, 6000])
    assert row["return@2000"] == pytest.approx((7.0, 0.0))
    assert row["return@4000"] == pytest.approx((7.0, 0.0))  # within one evaluation interval of the last one
    assert row["return@6000"] is None
    assert row["reached"] == 0
    grid = np.linspace(2000, 6000, 100)
    assert row["auc"][0] == pytest.approx(np.interp(grid, [1000, 2000], [5.0, 7.0]).mean())


def test_every_method_builds_a_valid_trial_config():
    """parse_sweep builds and validates each trial's AGDConfig (no Ray started): every named method is a valid
    setting, and its keys reach the config."""
    import argparse

    args = argparse.Namespace(env="InvertedPendulum-v5", preset="cpu", env_steps=20000, seeds=[0],
                              methods=list(se.METHODS), eval_every=2500, eval_episodes=None, checkpoint_every=10,
                              concurrent=1, name=None, config=["world_model.updates_per_env_step=2.0"])
    spec = se.build_spec(args)
    trials = {trial["method"]: trial for trial in spec.trials()}
    assert set(trials) == set(se.METHODS)
    assert trials["sag-causal-envterm"]["imagination.termination"] == "env"
    assert trials["sag-causal-envterm"]["world_model.policy_guidance"] == "causal"
    assert spec.config == {"world_model.updates_per_env_step": 2.0}


def test_final_checkpoint_column_averages_each_trials_episodes_then_seeds(tmp_path):
    trials = [trial("sag", 0, [2000, 6000], [10.0, 30.0]), trial("sag", 1, [2000, 6000], [20.0, 40.0]),
              trial("sag", 2, [2000, 6000], [0.0, 0.0])]
    trials[0]["final"] = {"episodes": 2, "returns": [100.0, 200.0]}  # 150
    trials[1]["final"] = {"episodes": 2, "returns": [50.0, 50.0]}  # 50
    (row,) = se.summarize(trials, env_steps=6000, eval_every=2000, fixed_steps=[6000])
    assert row["final"] == pytest.approx((100.0, 50.0)) and row["final_seeds"] == 2
    table = se.format_table([row], [6000])
    assert "final checkpoint" in table.splitlines()[0] and "| 100.0 ± 50.0 (2) |" in table
    trials[0]["final"].update(env_steps=6000)
    trials[1]["final"].update(env_steps=6500)
    assert se.write_finals(trials, tmp_path / "finals.csv") == 2
    lines = (tmp_path / "finals.csv").read_text().splitlines()
    assert lines[1:] == ["x,sag,0,6000,2,150,100 200", "x,sag,1,6500,2,50,50 50"]
    (plain,) = se.summarize(trials[2:], env_steps=6000, eval_every=2000, fixed_steps=[6000])
    assert plain["final"] is None and "final checkpoint" not in se.format_table([plain], [6000])


def _checkpoint(trial_dir, name, env_steps):
    counters = trial_dir / name / "agd" / "counters.json"
    counters.parent.mkdir(parents=True)
    counters.write_text(f'{{"env_steps": {env_steps}}}')


def test_final_evaluation_runs_the_budget_checkpoint_once_per_episode_count(tmp_path, monkeypatch):
    import json


    calls = []

    def returns(checkpoint, env_id, episodes, seed=0, on_episode=None):
        calls.append((checkpoint.name, env_id, episodes, seed))
        return [float(seed + i) for i in range(episodes)]

    monkeypatch.setattr(evaluate, "mean_action_returns", returns)
    done, short = tmp_path / "tune" / "exp" / "done", tmp_path / "tune" / "exp" / "short"
    for trial_dir in (done, short):
        trial_dir.mkdir(parents=True)
        (trial_dir / "params.json").write_text("{}")
    # the latest checkpoint is the one with the most env steps, not the highest name
    _checkpoint(done, "checkpoint_000010", 6000)
    _checkpoint(done, "checkpoint_000009", 5000)
    _checkpoint(short, "checkpoint_000003", 4000)  # an unfinished trial: not evaluated
    assert se.final_checkpoint(done) == (done / "checkpoint_000010", 6000)
    assert se.evaluate_finals(tmp_path, env="Hopper-v5", env_steps=6000, episodes=3, seed=7) == 1
    assert calls == [("checkpoint_000010", "Hopper-v5", 3, 7)]
    written = json.loads((done / se.FINAL_FILE).read_text())
    assert written["returns"] == [7.0, 8.0, 9.0] and written["env_steps"] == 6000
    assert not (short / se.FINAL_FILE).exists()
    assert se.evaluate_finals(tmp_path, env="Hopper-v5", env_steps=6000, episodes=3, seed=7) == 0  # cached
    assert se.evaluate_finals(tmp_path, env="Hopper-v5", env_steps=6000, episodes=5, seed=7) == 1  # more episodes


def test_permutation_p_counts_relabellings_closed_form():
    # 6 distinct values into 3 + 3: C(6, 3) = 20 relabellings; the top three are 1 of them
    assert se.permutation_p([4.0, 5.0, 6.0], [1.0, 2.0, 3.0]) == pytest.approx(1 / 20)
    assert se.permutation_p([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(1.0)
    # ties with the observed difference count: {1, 4} against {2, 3} is a difference of 0; the first group's
    # sums over the 6 relabellings are 3, 4, 5, 5, 6, 7, and 4 of them (>= 5) give a difference >= 0
    assert se.permutation_p([1.0, 4.0], [2.0, 3.0]) == pytest.approx(4 / 6)
    # sampled when the relabellings exceed `samples`: close to the exact answer
    a, b = [9.0, 8.0, 7.0, 1.0], [6.0, 5.0, 4.0, 3.0, 2.0]
    exact = se.permutation_p(a, b)
    assert se.permutation_p(a, b, samples=100) == pytest.approx(exact, abs=0.03)  # C(9, 4) = 126 > 100


def test_final_p_column_compares_each_method_with_ppo():
    trials = []
    for seed, (ppo, sag) in enumerate([(0.0, 10.0), (1.0, 11.0), (2.0, 12.0)]):
        for method, value in (("ppo", ppo), ("sag", sag)):
            t = trial(method, seed, [2000], [value])
            t["final"] = {"episodes": 1, "returns": [value]}
            trials.append(t)
    rows = {r["method"]: r for r in se.summarize(trials, env_steps=2000, eval_every=2000, fixed_steps=[2000])}
    assert rows["sag"]["final_p_above_ppo"] == pytest.approx(1 / 20) and rows["ppo"]["final_p_above_ppo"] is None
    assert "| 0.05 |" in se.format_table([rows["sag"]], [2000])
