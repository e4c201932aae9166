"""Guidance effect on a known linear system: advantage gain against dynamics and reward consistency.

For each guide setting and temperature, from the same start states and noise as the unguided sampler:
the mean n-step advantage gain under the known critic, and the imagined windows' one-step dynamics residual
and reward error against the true system (ALGORITHM.md 3.3 and 7). Prints a table, writes JSON.

    python bench/guidance.py [--out bench/out/guidance.json] [--updates 1500]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import time

import numpy as np
import torch

from agd_ray.world_model import GuideConfig, WorldModelConfig
from agd_ray.world_model.linear_system import LinearSystem

SETTINGS = {  # name -> GuideConfig fields besides kind and temperature
    "default (x0, classifier, c=0.1)": {},
    "x0, classifier, c=0.3": {"scale": 0.3},
    "xt, classifier, c=5": {"grad_wrt": "xt", "scale": 5.0},
    "reference (td1, x0, c=4 var^2)": "reference",
}
TEMPERATURES = (10.0, 3.0, 1.0, 0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/out/guidance.json", help="JSON output path")
    parser.add_argument("--updates", type=int, default=1500, help="world-model updates on the system's windows")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    system = LinearSystem()
    cfg = WorldModelConfig(horizon=system.horizon, hidden_dim=128, num_layers=2, diffusion_steps=32,
                           sampling_steps=32, lr=1e-3, ema_start=10**9, return_model_hidden=64)
    began = time.perf_counter()
    wm, losses = system.train(cfg, updates=args.updates, seed=0)
    train_s = time.perf_counter() - began
    start = system.start_states(1024, np.random.default_rng(1))

    def run(guide):
        out = wm.imagine(start, policy=system.policy, critic=system.critic, guide=guide,
                         generator=torch.Generator().manual_seed(0))
        return system.advantage(out), *system.consistency(out)

    base_adv, base_dyn, base_rew = run(GuideConfig(kind="none"))
    rows = [{"setting": "none (PolyGRAD)", "kind": "none", "temperature": None, "advantage_gain": 0.0,
             "dynamics_mse": base_dyn, "reward_mse": base_rew}]
    for name, fields in SETTINGS.items():
        for kind in ("sag", "eag"):
            for temperature in TEMPERATURES:
                if fields == "reference":
                    guide = GuideConfig.reference(kind, temperature)
                else:
                    guide = GuideConfig(kind=kind, temperature=temperature, **fields)
                adv, dyn, rew = run(guide)
                rows.append({"setting": name, "kind": kind, "temperature": temperature,
                             "advantage_gain": adv - base_adv, "dynamics_mse": dyn, "reward_mse": rew})

    header = f"{'setting':34} {'kind':5} {'beta':>5} {'adv gain':>9} {'dyn mse':>9} {'x base':>7} {'rew mse':>9}"
    print(f"trained {args.updates} updates in {train_s:.1f} s; loss {losses[:10].mean():.3f} -> "
          f"{losses[-100:].mean():.4f}; unguided n-step advantage {base_adv:.3f}")
    print(header)
    print("-" * len(header))
    for r in rows:
        beta = "" if r["temperature"] is None else f"{r['temperature']:g}"
        print(f"{r['setting']:34} {r['kind']:5} {beta:>5} {r['advantage_gain']:9.3f} {r['dynamics_mse']:9.4f} "
              f"{r['dynamics_mse'] / base_dyn:7.1f} {r['reward_mse']:9.3f}")
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": args.threads, "updates": args.updates, "train_seconds": train_s,
            "unguided_advantage": base_adv, "system": dataclasses.asdict(system)}
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
