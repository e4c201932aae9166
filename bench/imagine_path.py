"""Where one imagined PPO batch spends its time, and what the policy path and the reverse steps save (a bench,
not a test).

The tuned HalfCheetah-v5 settings (cpu preset model, H = 5, the `reparam` action rule, clean action input, 512
windows per batch) with RLlib's default PPO module (separate 256 x 256 tanh actor and critic encoders), through
`actor.imagine_windows`, the function the world-model actor runs for every PPO batch. Side by side in one run,
repetitions interleaved: the policy read through RLlib's `forward_exploration` (the whole encoder, critic
included) against the actor's layers alone (`imagination._actor_path`), at K = 16 and K = 6 reverse steps, for
PolyGRAD and for EAG by resampling (K = 4 candidates per start state). Weights are random: the cost of a call
does not depend on them.

    OMP_NUM_THREADS=1 python bench/imagine_path.py [--repeats 5] [--out bench/out/imagine_path.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from a checkout without install
import agd_ray.imagination as imagination  # noqa: E402
from agd_ray.cli import PRESET_SETTINGS  # noqa: E402
from agd_ray.world_model import GuideConfig, WorldModel, WorldModelConfig  # noqa: E402
from agd_ray.world_model.actor import imagine_windows  # noqa: E402

OBS_DIM, ACT_DIM = 17, 6  # HalfCheetah-v5
GUIDES = {"polygrad": GuideConfig(kind="none"), "eag-resample": GuideConfig(kind="eag", method="resample")}
POLICY_PATHS = ("forward_exploration", "actor-only")


def _module():
    import gymnasium as gym
    from ray.rllib.algorithms.ppo import PPOConfig

    obs_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)
    spec = PPOConfig().get_rl_module_spec(spaces={"default_policy": (obs_space, act_space)}, inference_only=False)
    spec.observation_space, spec.action_space = obs_space, act_space
    module = spec.build()
    module.eval()
    return module


def _model(sampling_steps: int) -> WorldModel:
    names = {f.name for f in dataclasses.fields(WorldModelConfig)}
    preset = {k: v for k, v in PRESET_SETTINGS["cpu"]["world_model"].items() if k in names}
    config = WorldModelConfig(**{**preset, "horizon": 5, "policy_guidance": "reparam", "action_input": "clean",
                                 "sampling_steps": sampling_steps})
    return WorldModel(OBS_DIM, ACT_DIM, config, seed=0)


def _time(model, module, guide, start, path: str, seed: int) -> float:
    whole_module = path == POLICY_PATHS[0]  # RLlib's forward, as before the actor path
    with mock.patch.object(imagination, "_actor_path", return_value=None) if whole_module else nullcontext():
        started = time.perf_counter()
        imagine_windows(model, module, guide, start, start_index=0, seed=seed, unit_size=len(start))
        return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=512, help="windows per batch (the tuned settings' 512)")
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 6], help="reverse steps K (of N = 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per configuration (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/out/imagine_path.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module = _module()
    start = np.random.default_rng(0).normal(size=(args.windows, OBS_DIM)).astype(np.float32)
    models = {k: _model(k) for k in args.steps}
    configs = [(g, k, p) for g in GUIDES for k in args.steps for p in POLICY_PATHS]
    times = {c: [] for c in configs}
    for c in configs:  # warm-up
        _time(models[c[1]], module, GUIDES[c[0]], start, c[2], seed=0)
    for rep in range(args.repeats):  # interleaved, so that a noisy neighbour hits every configuration alike
        for c in configs:
            times[c].append(_time(models[c[1]], module, GUIDES[c[0]], start, c[2], seed=rep + 1))
    baseline = {g: statistics.median(times[(g, max(args.steps), POLICY_PATHS[0])]) for g in GUIDES}
    rows = []
    header = f"{'guide':<14}{'K':>4}  {'policy path':<21}{'s / batch':>10}{'x baseline':>12}{'transitions/s':>15}"
    print(f"{args.windows} windows, H = 5, {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} thread(s), median of {args.repeats}")
    print(header)
    print("-" * len(header))
    for guide, steps, path in configs:
        seconds = statistics.median(times[(guide, steps, path)])
        speedup = baseline[guide] / seconds
        rate = args.windows * 4 / seconds
        rows.append(dict(guide=guide, sampling_steps=steps, policy_path=path, seconds=seconds,
                         speedup=speedup, transitions_per_s=rate, all_seconds=times[(guide, steps, path)]))
        print(f"{guide:<14}{steps:>4}  {path:<21}{seconds:>10.3f}{speedup:>11.2f}x{rate:>15.0f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(machine=platform.machine(), cpus=os.cpu_count(), torch=torch.__version__,
                                   threads=args.threads, windows=args.windows, rows=rows), indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
