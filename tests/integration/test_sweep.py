"""`tune_configs/smoke.yaml` end to end on local Ray: 2 trials x 2 iterations, then the summary's rows.

Counters, not returns (STYLE.md): one row per trial, its guide/temperature/seed equal the grid, env steps
reached, an evaluation return exists, and the CSV, markdown and PNG are written.
"""

import csv
import pathlib

import pytest

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_smoke_sweep_end_to_end(tmp_path, local_ray):
    from agd_ray.sweep import SUMMARY_COLUMNS, load_sweep, run_sweep

    spec = load_sweep(ROOT / "tune_configs" / "smoke.yaml")
    rows = run_sweep(spec, output=tmp_path, verbose=0)

    expected = sorted((trial["guidance.kind"], trial["guidance.temperature"], trial["seed"]) for trial in spec.trials())
    assert len(expected) == 2
    assert sorted((row["guide"], row["temperature"], row["seed"]) for row in rows) == expected
    for row in rows:
        assert row["status"] == "done", row
        assert row["method"] == "sag"
        assert row["iterations"] == spec.max_iterations
        assert row["env_steps"] >= spec.config["training.train_batch_size_per_learner"] * spec.max_iterations
        # Both measured; which evaluation each one is: test_sweep_spec.py (best is their max, so best >= final
        # could not fail here).
        assert row["final_eval_return"] is not None and row["best_eval_return"] is not None
        assert row["wall_s"] > 0

    directory = tmp_path / spec.name
    with open(directory / "summary.csv") as file:
        table = list(csv.DictReader(file))
    assert tuple(table[0]) == SUMMARY_COLUMNS
    assert sorted((r["guide"], float(r["temperature"]), int(r["seed"])) for r in table) == expected
    markdown = (directory / "summary.md").read_text().splitlines()
    assert sum(line.startswith("| ") for line in markdown) == 1 + len(rows)  # header + one line per trial
    assert (directory / "return_vs_temperature.png").stat().st_size > 1000
