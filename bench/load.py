"""Load: env runners streaming into one replay actor at full speed, with capacity wrap-around (issue 6, item 6).

N `AGDEnvRunner` actors (RLlib's env runner with agd-ray's streaming, as the training loop creates them) sample
uniformly random actions as fast as they can, each `sample()` call's transitions sent to the replay actor as
msgpack chunks and acknowledged, then its metrics collected (as the training loop does); the replay's capacity is
a fraction of what streams in, so it wraps many times.
Every few seconds: env steps/s, replay size, and the resident memory (RSS) of the replay actor and the runners.
At the end: every stream's last accepted chunk seq_no against the chunks its runner sent, gaps, duplicates,
rejected chunks, and transitions added against transitions sampled (nothing lost, nothing twice).

    OMP_NUM_THREADS=1 RAY_AUTH_MODE=disabled .venv/bin/python bench/load.py [--runners 4] [--seconds 180]

Prints a table and writes bench/out/load.json; `tests/integration/test_load.py` (marked slow) runs it and
checks the counts and that memory stays flat once replay is full.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from a checkout without install


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def run_load(*, env: str = "HalfCheetah-v5", runners: int = 4, seconds: float = 180.0, capacity: int = 50_000,
             steps_per_call: int = 1000, chunk_size: int = 250, report_every_s: float = 10.0) -> dict:
    """Stream for `seconds`; returns the counts, the RSS samples and the checks' inputs (needs Ray started)."""
    import numpy as np
    import ray
    from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED

    from agd_ray import AGDConfig
    from agd_ray.envs.core import make_env
    from agd_ray.envs.runner import AGDEnvRunner
    from agd_ray.replay.actor import ReplayActor

    config = (AGDConfig().environment(env).env_runners(num_env_runners=runners, rollout_fragment_length=steps_per_call)
              .debugging(seed=0))
    probe = make_env(env, {})
    obs_dim, act_dim = int(np.prod(probe.observation_space.shape)), int(np.prod(probe.action_space.shape))
    qpos_dim, qvel_dim = int(probe.unwrapped.model.nq), int(probe.unwrapped.model.nv)
    probe.close()
    replay = ReplayActor.as_remote(num_cpus=0).remote(obs_dim=obs_dim, act_dim=act_dim, qpos_dim=qpos_dim,
                                                       qvel_dim=qvel_dim, capacity=capacity, seed=0)
    remote_runner = ray.remote(num_cpus=0)(AGDEnvRunner)
    actors = [remote_runner.remote(config=config, worker_index=i + 1) for i in range(runners)]
    streams = ray.get([a.connect_replay.remote(replay, chunk_size=chunk_size, return_episodes=False) for a in actors])
    pids = {"replay": ray.get(replay.__ray_call__.remote(lambda self: os.getpid()))}
    pids.update({f"runner{i + 1}": ray.get(a.__ray_call__.remote(lambda self: os.getpid()))
                 for i, a in enumerate(actors)})

    def call(actor):
        # As the training loop samples (RLlib's synchronous_parallel_sample): sample, then collect the metrics,
        # which also clears the runner's metrics logger. The steps count comes from those metrics.
        actor.sample.remote(num_timesteps=steps_per_call, random_actions=True, force_reset=False)
        return actor.get_metrics.remote()

    sampled = [0] * runners
    samples, full_at = [], None
    started = last_report = time.monotonic()
    pending = {call(a): i for i, a in enumerate(actors)}
    print(f"{'t (s)':>6} {'env steps':>10} {'steps/s':>8} {'replay size':>11} {'replay RSS MB':>13} "
          f"{'runner RSS MB (max)':>19}", flush=True)
    while True:
        ready, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ready[0])
        sampled[i] += int(ray.get(ready[0])[NUM_ENV_STEPS_SAMPLED])
        now = time.monotonic()
        if now - started < seconds:
            pending[call(actors[i])] = i
        if now - last_report >= report_every_s or not pending:
            last_report = now
            size = ray.get(replay.size.remote())
            if full_at is None and size >= capacity:
                full_at = len(samples)
            sample = {"t_s": round(now - started, 1), "env_steps": sum(sampled), "replay_size": size,
                      "replay_rss_mb": round(_rss_mb(pids["replay"]), 1),
                      "runner_rss_mb": [round(_rss_mb(pids[f"runner{j + 1}"]), 1) for j in range(runners)]}
            samples.append(sample)
            rate = sample["env_steps"] / max(now - started, 1e-9)
            print(f"{sample['t_s']:>6.0f} {sample['env_steps']:>10} {rate:>8.0f} {size:>11} "
                  f"{sample['replay_rss_mb']:>13.1f} {max(sample['runner_rss_mb']):>19.1f}", flush=True)
        if not pending:
            break
    metrics = ray.get(replay.metrics.remote())
    last_seq = ray.get(replay.stream_seq_numbers.remote())
    chunks_sent = ray.get([a.__ray_call__.remote(lambda self: self._chunk_seq_no) for a in actors])
    for actor in (*actors, replay):
        ray.kill(actor)
    return {
        "env": env, "runners": runners, "seconds": seconds, "capacity": capacity, "chunk_size": chunk_size,
        "steps_per_call": steps_per_call, "sampled": sampled, "num_added": int(metrics["replay/num_added"]),
        "replay_size": int(metrics["replay/size"]), "gaps": int(metrics["replay/num_gaps"]),
        "duplicates": int(metrics["replay/num_duplicate_chunks"]),
        "rejected": int(metrics["replay/num_rejected_chunks"]),
        "streams": {str(s): {"chunks_sent": int(n), "last_seq_no": int(last_seq.get(s, -1))}
                    for s, n in zip(streams, chunks_sent, strict=True)},
        "samples": samples, "full_at_sample": full_at,
    }


def memory_growth(result: dict) -> dict:
    """RSS growth (MB) of the replay actor and of the largest runner from when replay was first full to the end."""
    samples = result["samples"]
    if result["full_at_sample"] is None:
        return {"replay_mb": None, "runner_mb": None}
    first, last = samples[result["full_at_sample"]], samples[-1]
    return {"replay_mb": round(last["replay_rss_mb"] - first["replay_rss_mb"], 1),
            "runner_mb": round(max(last["runner_rss_mb"]) - max(first["runner_rss_mb"]), 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--runners", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--capacity", type=int, default=50_000, help="replay capacity (wraps when exceeded)")
    parser.add_argument("--out", default="bench/out/load.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    try:
        result = run_load(env=args.env, runners=args.runners, seconds=args.seconds, capacity=args.capacity)
    finally:
        ray.shutdown()
    result["memory_growth_after_full"] = memory_growth(result)
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    total = sum(result["sampled"])
    print(f"\n{args.runners} runners, {args.seconds:.0f} s: {total} env steps sampled ({total / args.seconds:.0f}/s), "
          f"{result['num_added']} added to replay (capacity {args.capacity}: {total / args.capacity:.1f} wraps); "
          f"gaps {result['gaps']}, duplicates {result['duplicates']}, rejected {result['rejected']}")
    for stream, counts in result["streams"].items():
        print(f"  stream {stream}: {counts['chunks_sent']} chunks sent, last accepted seq_no {counts['last_seq_no']}")
    print(f"RSS growth after replay was full: {result['memory_growth_after_full']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
