"""Runtime throughput of the AGD loop (issue 3's "Measure and report", issue 4's imagination workers; not a test).

In one local Ray session:
1. per env: AGD (the `agd-ray train` config of the preset, eval off) for a few iterations; wall-clock per
   iteration split by phase (`agd/phase_s/*`, driver seconds per phase) and the share of driver time blocked
   on actors (`agd/wait_s/*`: ray.get of imagination and training results, weights get/put/sync, replay size);
2. per env: real sampling through `synchronous_parallel_sample`, as each loop does it, side by side and
   interleaved: AGD's env runner (streams every step to the replay actor, returns no episodes) against plain
   RLlib PPO (`PPOConfig`, `SingleAgentEnvRunner`, episodes back to the driver), same env, RLlib's default module
   (the preset's);
3. imagined transitions/s of `ImaginationPool` with K = 1 (the trainer imagines) and K = 2 imagination actors,
   preset world-model size, HalfCheetah dims, measured at the driver (request -> merged answer).

    OMP_NUM_THREADS=1 RAY_AUTH_MODE=disabled .venv/bin/python bench/throughput.py \\
        [--envs InvertedPendulum-v5 HalfCheetah-v5] [--iterations 4] [--preset cpu] [--quick]

Prints tables and writes bench/out/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from a checkout without install

import numpy as np  # noqa: E402
import ray  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("agd_sample_real", "agd_world_model_train", "agd_imagine", "learner_update_timer", "synch_weights",
          "agd_world_model_wait")


def agd_config(env: str, preset: str, seed: int = 0):
    """The config `agd-ray train --env ENV --preset PRESET --eval-interval 0` builds."""
    from agd_ray.cli import build_config, build_parser, check_train_args

    args = build_parser().parse_args(["train", "--env", env, "--preset", preset, "--eval-interval", "0",
                                      "--seed", str(seed)])
    return build_config(args, check_train_args(args))


# -- 1. the AGD loop -------------------------------------------------------------------------------------------
def run_agd(env: str, preset: str, iterations: int, imagination_workers: int = 1) -> list[dict]:
    config = agd_config(env, preset)
    if imagination_workers > 1:
        config.imagination(num_workers=imagination_workers)
    algo = config.build_algo()
    rows = []
    try:
        for i in range(iterations):
            started = time.perf_counter()
            result = algo.train()
            wall = time.perf_counter() - started
            agd = result["agd"]
            phases = {k: float(v) for k, v in agd.get("phase_s", {}).items()}
            waits = {k: float(v) for k, v in agd.get("wait_s", {}).items()}
            transfers = {k: float(v) for k, v in agd.get("transfer_s", {}).items()}
            rows.append({"iteration": i + 1, "wall_s": wall, "phase_s": phases, "wait_s": waits,
                         "transfer_s": transfers, "wait_share": sum(waits.values()) / wall,
                         "transfer_share": sum(transfers.values()) / wall,
                         "env_steps": int(agd["env_steps_lifetime"]),
                         "world_model_updates": int(result["world_model"]["num_updates"]),
                         "imagined_transitions": int(result["imagination"]["num_transitions_lifetime"]),
                         "prefetched": int(result["imagination"]["prefetched"]),
                         "imagination_transitions_per_s": float(result["imagination"]["transitions_per_s"])})
            print(f"  {env} iteration {i + 1}: {wall:.2f} s, env steps {rows[-1]['env_steps']}, "
                  f"blocked {rows[-1]['wait_share']:.1%}, transfer {rows[-1]['transfer_share']:.1%}", flush=True)
    finally:
        algo.stop()
    return rows


# -- 2. env steps/s: AGD env runner vs plain RLlib PPO sampling ------------------------------------------------
def compare_sampling(env: str, preset: str, steps: int, repeats: int) -> dict:
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
    from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED

    config = agd_config(env, preset).replay(prefill_steps=0)
    agd = config.build_algo()
    plain = (PPOConfig().environment(env)
             .env_runners(num_env_runners=config.num_env_runners, num_cpus_per_env_runner=1)
             .debugging(seed=0)).build_algo()
    times = {"agd_env_runner": [], "rllib_single_agent_env_runner": []}

    def sample(algo, num_steps: int) -> int:
        # As AGD's training_step samples: count steps from the runners' metrics (AGD returns no episodes).
        _, metrics = synchronous_parallel_sample(worker_set=algo.env_runner_group, max_env_steps=num_steps,
                                                 _uses_new_env_runners=True, _return_metrics=True)
        return sum(int(m.get(NUM_ENV_STEPS_SAMPLED, 0)) for m in metrics)

    try:
        for algo in (agd, plain):  # warm-up
            sample(algo, steps // 4)
        for _ in range(repeats):  # interleaved, so both see the same background load
            for name, algo in (("agd_env_runner", agd), ("rllib_single_agent_env_runner", plain)):
                started = time.perf_counter()
                sampled = sample(algo, steps)
                times[name].append((sampled, time.perf_counter() - started))
        replay_size = int(ray.get(agd._replay.size.remote()))
    finally:
        agd.stop()
        plain.stop()
    out = {}
    for name, runs in times.items():
        rates = [n / t for n, t in runs]
        out[name] = {"env_steps_per_s_median": statistics.median(rates), "env_steps_per_s": rates}
    out["ratio"] = out["agd_env_runner"]["env_steps_per_s_median"] / \
        out["rllib_single_agent_env_runner"]["env_steps_per_s_median"]
    out["agd_replay_size"] = replay_size  # every AGD-sampled step reached replay
    out["steps_per_call"] = steps
    return out


# -- 3. imagination across workers ---------------------------------------------------------------------------
def imagination_workers(preset: str, batch_size: int, worker_counts: list[int], repeats: int) -> dict:
    import gymnasium as gym
    import torch
    from ray.rllib.algorithms.ppo import PPOConfig

    from agd_ray.cli import PRESET_SETTINGS
    from agd_ray.replay.actor import ReplayActor
    from agd_ray.world_model import GuideConfig, WorldModelConfig
    from agd_ray.world_model.actor import ImaginationActor, ImaginationPool, WorldModelActor

    obs_dim, act_dim = 17, 6  # HalfCheetah-v5
    settings = PRESET_SETTINGS[preset]["world_model"]
    model_config = WorldModelConfig(**{k: v for k, v in settings.items() if k in WorldModelConfig.__dataclass_fields__})
    rng = np.random.default_rng(0)
    n = 5000
    observations = rng.normal(size=(n, obs_dim)).astype(np.float32)
    chunk = {"observations": observations, "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
             "rewards": rng.normal(size=n).astype(np.float32), "next_observations": observations,
             "terminated": np.arange(n) % 1000 == 999, "truncated": np.zeros(n, bool),
             "qpos": np.zeros((n, 9)), "qvel": np.zeros((n, 9)),
             "episode_ids": (np.arange(n) // 1000).astype(np.int64), "runner_id": 0, "seq_no": 0}
    replay = ReplayActor.as_remote(num_cpus=0).remote(obs_dim=obs_dim, act_dim=act_dim, qpos_dim=9, qvel_dim=9,
                                                      capacity=n, seed=0)
    ray.get(replay.add_chunk.remote(chunk))
    obs_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32)
    spec = PPOConfig().get_rl_module_spec(spaces={"default_policy": (obs_space, act_space)}, inference_only=False)
    spec.observation_space, spec.action_space = obs_space, act_space
    torch.manual_seed(0)
    module_state = (0, [ray.put(spec.build().get_state())])
    kwargs = dict(obs_dim=obs_dim, act_dim=act_dim, world_model_config=model_config, module_spec=spec, seed=0,
                  device="cpu", guide_config=GuideConfig(kind="sag", temperature=1.0))
    trainer = WorldModelActor.options(num_cpus=1).remote(replay=replay, **kwargs)
    ray.get(trainer.set_module_state.remote(module_state[1][0], 0))
    ray.get(trainer.train.remote(num_updates=16))
    workers = [ImaginationActor.options(num_cpus=1).remote(**kwargs) for _ in range(max(worker_counts))]
    start = replay.sample_start_states.remote(batch_size=batch_size, seed=0)
    out = {"batch_size": batch_size, "horizon": model_config.horizon, "sampling_steps": model_config.sampling_steps,
           "hidden_dim": model_config.hidden_dim, "num_layers": model_config.num_layers}
    pools = {k: ImaginationPool(trainer, [] if k == 1 else workers[:k]) for k in worker_counts}
    for pool in pools.values():  # warm-up (and the workers fetch the EMA weights and module once)
        pool.merge(ray.get(pool.request(start_observations=start, batch_size=batch_size, seed=0,
                                        module_state=module_state)))
    rates = {k: [] for k in worker_counts}
    for r in range(repeats):
        for k, pool in pools.items():
            started = time.perf_counter()
            merged = pool.merge(ray.get(pool.request(start_observations=start, batch_size=batch_size, seed=r,
                                                     module_state=module_state)))
            rates[k].append(merged["metrics"]["num_transitions"] / (time.perf_counter() - started))
    for k, values in rates.items():
        out[f"K={k}"] = {"transitions_per_s_median": statistics.median(values), "transitions_per_s": values}
    for actor in (trainer, replay, *workers):
        ray.kill(actor)
    return out


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
            "ray": ray.__version__, "load_average_at_start": os.getloadavg(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envs", nargs="+", default=["InvertedPendulum-v5", "HalfCheetah-v5"])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--iterations", type=int, default=7,
                        help="AGD iterations per env (the first prefills and pretrains; with the cpu preset the "
                             "world model trains again from iteration 4)")
    parser.add_argument("--sample-steps", type=int, default=2000, help="env steps per sampling call (part 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--imagination-batch", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--agd-workers", type=int, default=1, help="imagination workers of the AGD loop (part 1)")
    parser.add_argument("--parts", nargs="+", default=["loop", "sampling", "imagination"],
                        help="which parts to run: loop (1), sampling (2), imagination (3)")
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 iterations, small calls")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "throughput.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.sample_steps, args.repeats, args.imagination_batch = 2, 500, 1, 64
    report = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "machine": machine(),
              "preset": args.preset, "agd_imagination_workers": args.agd_workers, "agd": {}, "sampling": {}}
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}})
    started = time.perf_counter()
    try:
        for env in args.envs:
            if "loop" in args.parts:
                print(f"AGD loop: {env}", flush=True)
                report["agd"][env] = run_agd(env, args.preset, args.iterations, args.agd_workers)
            if "sampling" in args.parts:
                print(f"sampling: {env}", flush=True)
                report["sampling"][env] = compare_sampling(env, args.preset, args.sample_steps, args.repeats)
        if "imagination" in args.parts:
            print("imagination workers", flush=True)
            report["imagination_workers"] = imagination_workers(args.preset, args.imagination_batch, args.workers,
                                                                args.repeats)
    finally:
        ray.shutdown()
    report["wall_s"] = time.perf_counter() - started
    print_tables(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


def _steady(rows: list[dict]) -> list[dict]:
    """Iterations after the first in which the world model trained (at ratio r and `pretrain_updates` P the
    updates start again once r x env steps > P: before that an iteration has no training and is faster)."""
    steady = [b for a, b in zip(rows, rows[1:]) if b["world_model_updates"] > a["world_model_updates"]]
    return steady or rows[1:] or rows


def print_tables(report: dict) -> None:
    short = {"agd_sample_real": "sample", "agd_world_model_train": "wm start", "agd_imagine": "imagine",
             "learner_update_timer": "ppo", "synch_weights": "sync", "agd_world_model_wait": "wm wait"}
    print(f"\nAGD iteration wall-clock by phase (driver seconds; later iterations are pipelined; "
          f"{report.get('agd_imagination_workers', 1)} imagination worker(s))")
    header = f"{'env':<20} {'it':>2} {'wall':>6} " + " ".join(f"{short[p]:>8}" for p in PHASES) + \
        f" {'blocked':>8} {'transfer':>8} {'share':>6} {'prefetch':>8}"
    print(header + "   wm updates")
    print("-" * (len(header) + 13))
    for env, rows in report["agd"].items():
        for row in rows:
            phases = " ".join(f"{row['phase_s'].get(p, 0.0):8.2f}" for p in PHASES)
            print(f"{env:<20} {row['iteration']:>2} {row['wall_s']:6.2f} {phases} "
                  f"{sum(row['wait_s'].values()):8.2f} {sum(row['transfer_s'].values()):8.3f} "
                  f"{row['transfer_share']:6.1%} {row['prefetched']:>8} {row['world_model_updates']:>12}")
    print("\nsteady state (iterations after the first that train the world model, mean seconds per iteration):")
    print("driver blocked on actors, and of that the")
    print("transfer (after the actor had finished: results, weights get/put/sync, replay size)")
    for env, rows in report["agd"].items():
        steady = _steady(rows)
        wall = statistics.mean(r["wall_s"] for r in steady)
        for kind in ("wait_s", "transfer_s"):
            parts = {k: statistics.mean(r[kind].get(k, 0.0) for r in steady) for k in steady[0][kind]}
            print(f"{env:<20} {kind:<10} wall {wall:6.2f}  " + "  ".join(f"{k} {v:.3f}" for k, v in parts.items()) +
                  f"  share {sum(parts.values()) / wall:.1%}")
    if report["sampling"]:
        print("\nreal sampling, env steps/s (median of interleaved calls)")
        print(f"{'env':<20} {'AGD env runner':>15} {'RLlib PPO':>10} {'ratio':>6}")
        for env, s in report["sampling"].items():
            print(f"{env:<20} {s['agd_env_runner']['env_steps_per_s_median']:15.0f} "
                  f"{s['rllib_single_agent_env_runner']['env_steps_per_s_median']:10.0f} {s['ratio']:6.2f}")
    iw = report.get("imagination_workers")
    if iw:
        print(f"\nimagination across workers (batch {iw['batch_size']}, H {iw['horizon']}, "
              f"{iw['sampling_steps']} steps, {iw['hidden_dim']}x{iw['num_layers']})")
        for key, value in iw.items():
            if key.startswith("K="):
                print(f"  {key}: {value['transitions_per_s_median']:.0f} imagined transitions/s")


if __name__ == "__main__":
    raise SystemExit(main())
