"""Issue 17, item 1: a tiny AGD run whose actors are placed on three nodes by custom resources.

A head and two workers on this machine, advertising the resources of cluster/*.yaml's node types. The replay
actor asks for `agd_head`, the world-model trainer for `agd_gpu_worker`, the imagination workers and the env
runners for `agd_cpu_worker`: every actor is on its node (asked of the actor), so chunks, training windows,
EMA weights and imagined batches all cross nodes, and the loop's counters are as exact as on one node.
"""

import pytest

from cluster_nodes import CPU_WORKER, GPU_WORKER, HEAD, counters, env_runner_nodes, node_of, placed_config

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.cluster


def test_actors_land_on_the_nodes_that_advertise_their_resources(local_cluster):
    config = placed_config()
    ratio = config.world_model_training.updates_per_env_step
    per_iteration = config.train_batch_size_per_learner
    prefill = config.replay_config.prefill_steps
    nodes = local_cluster.node_ids()
    assert len(set(nodes.values())) == 3
    algo = config.build_algo()
    try:
        history = [counters(algo.train()) for _ in range(3)]
        placed = {
            "driver": ray.get_runtime_context().get_node_id(),
            "replay": node_of(algo._replay),
            "world_model": node_of(algo._world_model),
            "imagination": sorted(node_of(worker) for worker in algo._imagination.workers),
            "env_runners": env_runner_nodes(algo),
        }
    finally:
        algo.stop()
    assert placed == {
        "driver": nodes[HEAD],  # the local PPO learner
        "replay": nodes[HEAD],
        "world_model": nodes[GPU_WORKER],
        "imagination": [nodes[CPU_WORKER]] * 2,
        "env_runners": [nodes[CPU_WORKER]] * 2,
    }
    for i, c in enumerate(history, start=1):
        assert c["env_steps"] == c["rllib_env_steps"] == c["replay_size"] == c["replay_added"]  # every step once
        assert c["lost"] == c["rejected"] == c["duplicates"] == 0
        assert c["world_model_updates"] == int(ratio * c["env_steps"])
        assert c["policy_updates"] == i
        # iteration i sampled and imagined (from the trainer's EMA weights, on the other worker) with weights
        # version i - 1; its PPO update made version i, which went to the trainer
        assert c["env_runner_seq_no"] == c["imagination_seq_no"] == c["world_model_seq_no"] - 1 == i - 1
        assert c["imagined_this_iter"] >= config.imagination_config.batch_size
        assert c["world_model_restarts"] == c["replay_restarts"] == c["imagination_worker_restarts"] == 0
    assert history[0]["env_steps"] >= prefill
    for before, after in zip(history, history[1:]):
        assert after["env_steps"] - before["env_steps"] == per_iteration
