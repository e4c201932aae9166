"""Issue 6, item 6 (slow): 4 env runners stream into one replay actor at full speed for minutes, with capacity
wrap-around (`bench/load.py`). Nothing is lost or duplicated: transitions added = transitions sampled, every
stream's last accepted seq_no = its chunks sent - 1, no gaps, duplicates or rejected chunks; and memory stays flat
once replay is full. AGD_LOAD_SECONDS sets the duration (default 180)."""

import os

import pytest

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_four_runners_stream_for_minutes_without_loss(local_ray):
    from bench.load import memory_growth, run_load

    capacity = 20_000
    result = run_load(runners=4, seconds=float(os.environ.get("AGD_LOAD_SECONDS", 180)), capacity=capacity)
    total = sum(result["sampled"])
    assert total >= 3 * capacity  # wrapped around several times
    assert result["num_added"] == total
    assert result["replay_size"] == capacity
    assert (result["gaps"], result["duplicates"], result["rejected"]) == (0, 0, 0)
    for stream, counts in result["streams"].items():
        assert counts["last_seq_no"] == counts["chunks_sent"] - 1, stream
    growth = memory_growth(result)
    assert growth["replay_mb"] is not None and growth["replay_mb"] < 32  # the buffer is preallocated
    assert growth["runner_mb"] < 64
