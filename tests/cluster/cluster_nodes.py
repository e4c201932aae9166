"""Ray nodes on this machine and the tiny AGD run the cluster tests share (fixtures: conftest.py)."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEAD, GPU_WORKER, CPU_WORKER = "agd_head", "agd_gpu_worker", "agd_cpu_worker"  # the node types of cluster/*.yaml
LABEL = 1000  # units of its type's resource each node advertises (as cluster/*.yaml do): any number of actors fit
# A removed node is declared dead after ~3 s (Ray's default is ~30 s of missed health checks).
FAST_NODE_FAILURE = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                     "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}


class LocalCluster:
    """A head and worker nodes on this machine (`ray.cluster_utils.Cluster`, one raylet per node); the test
    process is the driver, connected to the head. `nodes[name]` is a node by the resource it advertises."""

    def __init__(self, head_cpus: float = 1):
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args=dict(
            num_cpus=head_cpus, resources={HEAD: LABEL}, include_dashboard=False, _system_config=FAST_NODE_FAILURE))
        self.nodes = {HEAD: self.cluster.head_node}

    def add_worker(self, resource: str, num_cpus: float = 1):
        """A worker node advertising `resource` (and `num_cpus` logical CPUs); it replaces any earlier one of
        that name in `nodes`."""
        node = self.cluster.add_node(num_cpus=num_cpus, resources={resource: LABEL})
        self.nodes[resource] = node
        return node

    def lose(self, resource: str) -> str:
        """The worker node advertising `resource` is gone, as a machine that dies: its raylet and every process
        on it are killed (SIGKILL), no draining. Returns its node id."""
        node = self.nodes.pop(resource)
        self.cluster.remove_node(node, allow_graceful=False)
        return node.node_id

    def node_ids(self) -> dict:
        return {name: node.node_id for name, node in self.nodes.items()}

    def connect(self) -> None:
        import ray

        # Workers import agd_ray from this checkout, with one torch thread each.
        ray.init(address=self.cluster.address, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}})

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()  # kills every node's processes by PID


def tiny_config():
    """The `tiny` preset's sizes (agd_ray/cli.py) on InvertedPendulum with 2 env runners, as the integration
    tests build it; quality measurements off (they add minutes here, nothing multi-node)."""
    from agd_ray import AGDConfig
    from agd_ray.cli import PRESET_SETTINGS

    tiny = PRESET_SETTINGS["tiny"]
    return (AGDConfig()
            .environment("InvertedPendulum-v5")
            .env_runners(num_env_runners=2, num_cpus_per_env_runner=0.5, rollout_fragment_length=50)
            .training(**tiny["training"])
            .rl_module(model_config={"fcnet_hiddens": [16, 16]})
            .world_model(**tiny["world_model"])
            .imagination(**{**tiny["imagination"], "quality_interval": 0})
            .replay(**tiny["replay"])
            .debugging(seed=0))


def placed_config(replay: str = HEAD, world_model: str = GPU_WORKER, imagination_workers: int = 2):
    """`tiny_config` with every actor placed by the resource of a node type: replay on `replay`, the world-model
    trainer on `world_model`, `imagination_workers` imagination workers (0: the trainer imagines) and the env
    runners on the `agd_cpu_worker`."""
    config = (tiny_config()
              .env_runners(custom_resources_per_env_runner={CPU_WORKER: 1})
              .world_model(resources={world_model: 1})
              .replay(resources={replay: 1}))
    if imagination_workers:
        config.imagination(num_workers=imagination_workers, resources_per_worker={CPU_WORKER: 1})
    return config


def lose_node_before(algo, step: str, cluster: LocalCluster, resource: str) -> dict:
    """Arm `algo`: in its next iteration, right before the driver's step `step` (a method of AGD, e.g.
    `_start_world_model_training`: the training call goes to the lost node; `_snapshot_actors`: the training is
    done, the snapshot fails), the node advertising `resource` is lost and a new node of its type joins.
    Returns {"lost": node id, "new": node id}, filled then."""
    original, events = getattr(algo, step), {}

    def armed(*args, **kwargs):
        if not events:
            events["lost"] = cluster.lose(resource)
            events["new"] = cluster.add_worker(resource).node_id
        return original(*args, **kwargs)

    setattr(algo, step, armed)
    return events


def node_of(actor) -> str:
    """The id of the node an actor runs on (asked of the actor itself)."""
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()), timeout=120)


def env_runner_nodes(algo) -> list[str]:
    import ray

    return sorted(algo.env_runner_group.foreach_env_runner(
        lambda runner: ray.get_runtime_context().get_node_id(), local_env_runner=False))


def counters(result: dict) -> dict:
    """The loop's exact counters from one training result."""
    return {
        "env_steps": int(result["agd"]["env_steps_lifetime"]),
        "rllib_env_steps": int(result["env_runners"]["num_env_steps_sampled_lifetime"]),
        "replay_size": int(result["replay"]["size"]),
        "replay_added": int(result["replay"]["num_added"]),
        "lost": int(result["replay"]["lost_transitions"]),
        "rejected": int(result["replay"]["num_rejected_chunks"]),
        "duplicates": int(result["replay"]["num_duplicate_chunks"]),
        "world_model_updates": int(result["world_model"]["num_updates"]),
        "world_model_restarts": int(result["agd"]["world_model_restarts"]),
        "replay_restarts": int(result["agd"]["replay_restarts"]),
        "imagination_worker_restarts": int(result["agd"]["imagination_worker_restarts"]),
        "imagined_this_iter": int(result["imagination"]["num_transitions"]),
        "env_runner_seq_no": int(result["env_runners"]["weights_seq_no"]),
        "world_model_seq_no": int(result["world_model"]["weights_seq_no"]),
        "imagination_seq_no": int(result["imagination"]["weights_seq_no"]),
        "policy_updates": int(result["agd"]["policy_updates"]),
    }
