"""Metric rows of `agd-ray train`: an evaluation return appears only on iterations that evaluated."""

import pytest

from agd_ray.results import result_row


def _result(iteration, interval=5, eval_return=34.7):
    return {
        "training_iteration": iteration,
        "config": {"evaluation_interval": interval},
        "evaluation": {"env_runners": {"episode_return_mean": eval_return}},
        "env_runners": {"episode_return_mean": 29.6, "num_env_steps_sampled_lifetime": 500 * iteration},
    }


@pytest.mark.parametrize("iteration,expected", [(5, 34.7), (6, None), (9, None), (10, 34.7)])
def test_evaluation_return_only_where_measured(iteration, expected):
    row = result_row(_result(iteration))
    assert row["eval_return_mean"] == expected
    assert row["episode_return_mean"] == 29.6 and row["env_steps"] == 500 * iteration


@pytest.mark.parametrize("iteration,evaluated,expected", [(6, True, 34.7), (5, False, None), (10, True, 34.7)])
def test_agd_evaluated_flag_decides_where_it_is_reported(iteration, evaluated, expected):
    # AGD.step also evaluates on the iteration that reaches the run's budget, off the interval
    result = {**_result(iteration), "agd": {"evaluated": evaluated}}
    assert result_row(result)["eval_return_mean"] == expected


def test_no_evaluation_interval_means_no_evaluation_column():
    assert result_row(_result(5, interval=0))["eval_return_mean"] is None
    assert result_row({"training_iteration": 1})["eval_return_mean"] is None


def test_unknown_benchmark_is_one_line_naming_it_and_the_choices(capsys):
    from agd_ray.cli import main

    assert main(["bench", "no-such-bench"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'no-such-bench' not found" in err and "imagination" in err and "\n" not in err
