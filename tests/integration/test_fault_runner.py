"""Issue 6, item 1: an env runner dies mid-run (`ray.kill` between iterations).

Ray restarts the actor (RLlib's `restart_failed_env_runners`, `max_restarts`); AGD finds the fresh process
not connected to replay and connects it as a new stream. The run goes on, the transitions already in replay
stay, every real step is in replay exactly once, and no chunk of the new stream is refused as a duplicate.
"""

import os
import time

import pytest

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.integration


def tiny_config():
    """test_agd's tiny run, with restarts that do not wait (RLlib's default delay is 60 s)."""
    from test_agd import tiny_config as agd_tiny_config

    return agd_tiny_config().fault_tolerance(restart_failed_env_runners=True, delay_between_env_runner_restarts_s=0.0)


def counters(result: dict) -> dict:
    return {
        "env_steps": int(result["agd"]["env_steps_lifetime"]),
        "rllib_env_steps": int(result["env_runners"]["num_env_steps_sampled_lifetime"]),
        "replay_size": int(result["replay"]["size"]),
        "replay_added": int(result["replay"]["num_added"]),
        "duplicates": int(result["replay"]["num_duplicate_chunks"]),
        "rejected": int(result["replay"]["num_rejected_chunks"]),
        "gaps": int(result["replay"]["num_gaps"]),
        "reconnects": int(result["agd"]["env_runner_reconnects"]),
        "world_model_updates": int(result["world_model"]["num_updates"]),
    }


def wait_for_pid(actor, timeout_s: float = 90.0) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(actor.apply.remote(lambda runner: os.getpid()), timeout=10)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def test_killed_env_runner_is_restarted_and_reconnected(local_ray):
    algo = tiny_config().build_algo()
    try:
        history = [counters(algo.train())]
        manager = algo.env_runner_group._worker_manager
        victim_id = sorted(manager.actor_ids())[0]
        victim = manager._actors[victim_id]
        old_pid = ray.get(victim.apply.remote(lambda runner: os.getpid()))
        ray.kill(victim, no_restart=False)  # Ray brings it back (max_restarts), a fresh process
        history.append(counters(algo.train()))  # may run on one runner while the other restarts
        new_pid = wait_for_pid(manager._actors[victim_id])
        for _ in range(2):
            history.append(counters(algo.train()))
        streams = dict(algo.env_runner_group.foreach_env_runner(
            lambda runner: (int(runner.worker_index), runner.replay_stream()), local_env_runner=False))
    finally:
        algo.stop()
    assert new_pid != old_pid  # it did die and was restarted
    assert len(streams) == 2 and all(s is not None for s in streams.values())
    assert len(set(streams.values())) == 2  # the restarted runner streams under a new id
    for c in history:
        assert c["env_steps"] == c["rllib_env_steps"] == c["replay_size"] == c["replay_added"]
        assert c["world_model_updates"] == int(0.5 * c["env_steps"])
        assert c["duplicates"] == c["rejected"] == c["gaps"] == 0
    before, after = history[0], history[1:]
    sizes = [c["replay_size"] for c in history]
    assert sizes == sorted(sizes) and sizes[1] > sizes[0]  # replay kept what it had, and grew
    assert [c["reconnects"] for c in history] == [0, 0, 1, 1]  # once, when it is back
    assert all(c["env_steps"] - before["env_steps"] >= 200 for c in after)
