"""Issue 17, item 2: a worker node is lost mid-iteration (killed as a machine dies, no draining: after the
iteration's real steps, before its world-model training call, or after the training and before the snapshot) and
another node of its type joins, as the autoscaler brings one after a preemption.

The run snapshots the world model and replay every iteration. The actors of the lost node are recreated, on the
new node (their custom resource is only there), from the snapshots: the run goes on, the restarts are counted,
`replay/num_added + replay/lost_transitions = agd/env_steps_lifetime` holds and the world-model update ratio is
kept. Replay writes its snapshot on its own node: when the snapshot directory is not one every node mounts, the
new node cannot read it, and the run stops with one line that says what to set, instead of waiting or silently
starting an empty replay. (Every node here shares this machine's filesystem, so that test removes the replay
snapshot with its node, as a lost machine takes its disk.)
"""

import pathlib
import shutil
import time

import pytest

from cluster_nodes import (
    CPU_WORKER,
    GPU_WORKER,
    HEAD,
    counters,
    env_runner_nodes,
    lose_node_before,
    node_of,
    placed_config,
)

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("step", ["_start_world_model_training", "_snapshot_actors"],
                         ids=["before-training", "after-training"])
def test_lost_world_model_node(local_cluster, tmp_path, step):
    config = placed_config().recovery(snapshot_interval=1, snapshot_dir=str(tmp_path), max_actor_restarts=2)
    ratio = config.world_model_training.updates_per_env_step
    algo = config.build_algo()
    try:
        c1 = counters(algo.train())
        c2 = counters(algo.train())
        nodes = lose_node_before(algo, step, local_cluster, GPU_WORKER)  # the trainer's; replay (head) stays
        c3 = counters(algo.train())
        trainer_node = node_of(algo._world_model)
        c4 = counters(algo.train())
        workers = [node_of(worker) for worker in algo._imagination.workers]
    finally:
        algo.stop()
    assert trainer_node == nodes["new"] != nodes["lost"]
    assert workers == [local_cluster.node_ids()[CPU_WORKER]] * 2  # untouched, fed by the new trainer
    assert (c1["world_model_restarts"], c2["world_model_restarts"]) == (0, 0)
    assert c3["world_model_restarts"] == c4["world_model_restarts"] == 1
    for c in (c1, c2, c3, c4):
        # the updates since the snapshot are made again in the same iteration
        assert c["world_model_updates"] == int(ratio * c["env_steps"])
        assert c["replay_added"] == c["replay_size"] == c["env_steps"] == c["rllib_env_steps"] and c["lost"] == 0
        assert c["replay_restarts"] == c["imagination_worker_restarts"] == 0
        assert c["imagination_seq_no"] == c["world_model_seq_no"] - 1  # the new trainer has the current weights
        assert c["imagined_this_iter"] >= config.imagination_config.batch_size
    assert c4["env_steps"] - c2["env_steps"] == 2 * config.train_batch_size_per_learner


def replay_on_a_worker(**recovery):
    """Replay alone on the `agd_gpu_worker` node; the trainer (which imagines) on the head."""
    return (placed_config(replay=GPU_WORKER, world_model=HEAD, imagination_workers=0)
            .recovery(snapshot_interval=1, max_actor_restarts=2, **recovery))


def test_lost_replay_node_with_a_shared_snapshot_dir(local_cluster, tmp_path):
    config = replay_on_a_worker(snapshot_dir=str(tmp_path))
    ratio = config.world_model_training.updates_per_env_step
    algo = config.build_algo()
    try:
        c1 = counters(algo.train())
        c2 = counters(algo.train())
        assert node_of(algo._replay) == local_cluster.node_ids()[GPU_WORKER]
        # iteration 3's steps are in replay by then; the trainer's pull of its windows fails
        nodes = lose_node_before(algo, "_start_world_model_training", local_cluster, GPU_WORKER)
        c3 = counters(algo.train())  # replay comes back from the snapshot after iteration 2
        replay_node = node_of(algo._replay)
        c4 = counters(algo.train())  # the env runners stream into the new replay actor
        runners = env_runner_nodes(algo)
    finally:
        algo.stop()
    assert replay_node == nodes["new"] != nodes["lost"]
    assert runners == [local_cluster.node_ids()[CPU_WORKER]] * 2
    assert c1["lost"] == c2["lost"] == 0 and c2["replay_added"] == c2["env_steps"]
    assert (c2["replay_restarts"], c3["replay_restarts"], c4["replay_restarts"]) == (0, 1, 1)
    assert c3["replay_size"] == c2["replay_size"]  # the snapshot after iteration 2 is back ...
    assert c3["lost"] == c3["env_steps"] - c2["env_steps"] > 0  # ... and iteration 3's steps are counted lost
    assert c4["lost"] == c3["lost"]
    assert c4["replay_size"] == c3["replay_size"] + (c4["env_steps"] - c3["env_steps"])
    for c in (c1, c2, c3, c4):
        assert c["replay_added"] + c["lost"] == c["env_steps"] == c["rllib_env_steps"]
        assert c["world_model_updates"] == int(ratio * c["env_steps"])
        assert c["world_model_restarts"] == 0 and c["rejected"] == c["duplicates"] == 0


def test_replay_snapshot_lost_with_its_node_fails_with_what_to_set(local_cluster):
    config = replay_on_a_worker()  # recovery.snapshot_dir unset: under the run's log directory
    algo = config.build_algo()
    try:
        algo.train()
        snapshot = (pathlib.Path(algo._snapshot_dir()) / "replay").resolve()
        assert (snapshot / "replay.json").is_file()
        local_cluster.lose(GPU_WORKER)
        shutil.rmtree(snapshot)  # it was on the lost node's disk
        new_node = local_cluster.add_worker(GPU_WORKER).node_id
        started = time.monotonic()
        with pytest.raises(RuntimeError) as error:
            algo.train()
        seconds = time.monotonic() - started
    finally:
        algo.stop()
    message = str(error.value)
    assert "\n" not in message
    assert f"recreated on node {new_node}" in message and str(snapshot) in message
    assert "set recovery.snapshot_dir to a directory every node mounts" in message
    assert seconds < 120  # the dead actor is found and the new one asked, no waiting
