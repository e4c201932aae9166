"""Issue 6, items 2 and 3: the world-model trainer and the replay actor die mid-run (`ray.kill`, no restart).

The run snapshots both every iteration (`recovery.snapshot_interval=1`). A dead world model is recreated from
its snapshot: the run goes on, imagination is served again, and the update ratio holds. A dead replay actor is
recreated from its snapshot: what it held at the snapshot is back, the steps sent while it was down are counted
in replay/lost_transitions (num_added + lost = env steps, exactly), and the env runners stream into the new one.
Both dying at once is survived the same way. An actor that dies more often than
`recovery.max_actor_restarts` ends the run with an error naming the limit. The snapshots go when the run stops.
"""

import pathlib

import pytest

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.integration


def fault_config(snapshot_dir):
    from test_agd import tiny_config

    return (tiny_config()
            .env_runners(num_env_runners=1, num_cpus_per_env_runner=1)
            .recovery(snapshot_interval=1, snapshot_dir=str(snapshot_dir), max_actor_restarts=2))


def counters(result: dict) -> dict:
    return {
        "env_steps": int(result["agd"]["env_steps_lifetime"]),
        "replay_size": int(result["replay"]["size"]),
        "replay_added": int(result["replay"]["num_added"]),
        "lost": int(result["replay"]["lost_transitions"]),
        "world_model_updates": int(result["world_model"]["num_updates"]),
        "world_model_restarts": int(result["agd"]["world_model_restarts"]),
        "replay_restarts": int(result["agd"]["replay_restarts"]),
        "imagined_this_iter": int(result["imagination"]["num_transitions"]),
        "rejected": int(result["replay"]["num_rejected_chunks"]),
        "duplicates": int(result["replay"]["num_duplicate_chunks"]),
    }


def test_world_model_and_replay_actor_deaths(local_ray, tmp_path):
    from test_agd import BATCH, RATIO

    algo = fault_config(tmp_path / "snapshots").build_algo()
    try:
        c1 = counters(algo.train())
        c2 = counters(algo.train())
        run_dir = tmp_path / "snapshots" / pathlib.Path(algo.logdir).name  # one directory per run
        assert (run_dir / "world_model.pt").is_file()
        assert (run_dir / "replay" / "replay.json").is_file()
        assert c2["lost"] == 0 and c2["replay_added"] == c2["env_steps"]

        # -- the world-model trainer dies between iterations (a batch for the next update is in flight)
        ray.kill(algo._world_model, no_restart=True)
        c3 = counters(algo.train())
        assert c3["world_model_restarts"] == 1
        assert c3["world_model_updates"] == int(RATIO * c3["env_steps"])  # the ratio holds after the restore
        assert c3["imagined_this_iter"] >= BATCH  # imagination is served by the new trainer
        assert c3["replay_added"] == c3["env_steps"] and c3["lost"] == 0  # replay untouched

        # -- the replay actor dies: the snapshot after iteration 3 holds every step up to it
        ray.kill(algo._replay, no_restart=True)
        c4 = counters(algo.train())
        assert c4["replay_restarts"] == 1
        assert c4["lost"] == c4["env_steps"] - c3["env_steps"] > 0  # iteration 4's steps went to the dead actor
        assert c4["replay_size"] == c3["replay_size"]  # the snapshot's contents are back
        assert c4["replay_added"] + c4["lost"] == c4["env_steps"]
        assert c4["world_model_updates"] == int(RATIO * c4["env_steps"])

        c5 = counters(algo.train())  # the env runner streams into the new replay actor
        assert c5["replay_size"] == c4["replay_size"] + (c5["env_steps"] - c4["env_steps"])
        assert c5["replay_added"] + c5["lost"] == c5["env_steps"] and c5["lost"] == c4["lost"]
        assert c5["rejected"] == 0 and c5["duplicates"] == 0

        # -- both die at once (the imagination in flight fails first, then the training call made before the
        # recovery is made again with the new actors)
        ray.kill(algo._world_model, no_restart=True)
        ray.kill(algo._replay, no_restart=True)
        c6 = counters(algo.train())
        assert (c6["world_model_restarts"], c6["replay_restarts"]) == (2, 2)
        assert c6["lost"] == c5["lost"] + (c6["env_steps"] - c5["env_steps"])
        assert c6["replay_added"] + c6["lost"] == c6["env_steps"] and c6["replay_size"] == c5["replay_size"]
        assert c6["world_model_updates"] == int(RATIO * c6["env_steps"])

        # -- a third death of the world model is past recovery.max_actor_restarts=2
        ray.kill(algo._world_model, no_restart=True)
        with pytest.raises(Exception, match="max_actor_restarts=2"):
            algo.train()
    finally:
        algo.stop()
    assert not run_dir.exists()  # the snapshots serve the run's actor restarts and go with it (AGD.cleanup)
    assert c1["world_model_restarts"] == c1["replay_restarts"] == 0
