"""Few-step sampling on a known linear system: DDIM (eta) against the DDPM chain, by number of reverse steps.

One world model (N = 128 diffusion steps) is trained on the system's windows; then for each eta and K the same
trained weights sample windows from the same start states and noise seeds (`WorldModelConfig.sampler_eta`,
`sampling_steps`), and each is checked against the true system (ALGORITHM.md 3 and 7): the one-step dynamics
residual, the reward error, their ratio to the K = 128 DDPM chain (eta = 1), the spread of the imagined states
against the true system's from the same start states and actions, the actions' z = (a - mu) / sigma std under
the policy that guided them, and the sampling wall time. Prints a table, writes JSON.

The true system's residual is its process noise (variance noise^2 per dimension), so a residual is not an error
by itself: it is split exactly (`split_residual`) into the error of the imagined mean dynamics (a least-squares
fit of s' on (s, a, 1) against the system's A and B; ideal 0) and the imagined process noise (ideal noise^2).

    OMP_NUM_THREADS=1 python bench/solver.py [--out bench/out/solver.json] [--updates 3000] [--seeds 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run as a file from a checkout without install
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from agd_ray.world_model import GuideConfig, WorldModel, WorldModelConfig  # noqa: E402
from agd_ray.world_model.linear_system import LinearSystem  # noqa: E402

from imagination import cpu_name  # noqa: E402

ETAS = (1.0, 0.5, 0.0)
STEPS = (128, 64, 32, 16, 12, 8, 6, 4, 3)
TOLERANCE = 1.1  # "as good as the 128-step chain": dynamics residual within 10% of it


def state_spread_ratio(system: LinearSystem, out: dict, seed: int) -> float:
    """sqrt of the imagined states' variance over windows (steps 1..H-1, mean over steps and dims) over that of the
    true system rolled out from the same start states with the same (imagined) actions and fresh process noise."""
    s, a = out["observations"].double(), out["actions"].double()  # [B, H, D_s], [B, H, D_a]
    gen = torch.Generator().manual_seed(10_000 + seed)
    true = [s[:, 0]]
    for h in range(s.shape[1] - 1):
        noise = torch.randn(true[-1].shape, generator=gen, dtype=torch.float64)
        true.append(system.a * true[-1] + system.b * a[:, h] + system.noise * noise)
    true = torch.stack(true, dim=1)
    return (s[:, 1:].var(dim=0).mean() / true[:, 1:].var(dim=0).mean()).sqrt().item()


def split_residual(system: LinearSystem, out: dict) -> tuple[float, float]:
    """The mean square of the one-step residual s' - (a s + b a) as mean((X c - (a s + b a))^2) + mean((s' - X c)^2),
    c the least-squares fit of s' on X = (s, a, 1) over all imagined transitions: the imagined mean dynamics' error
    and the imagined process noise. The two parts are orthogonal, so they add up to `LinearSystem.consistency`'s."""
    s, a = out["observations"].double(), out["actions"].double()  # [B, H, D_s], [B, H, D_a]
    x = torch.cat([s[:, :-1], a[:, :-1], torch.ones_like(s[:, :-1, :1])], dim=-1)  # [B, H-1, D_s + D_a + 1]
    x = x.reshape(-1, x.shape[-1])
    y = s[:, 1:].reshape(-1, s.shape[-1])  # [n, D_s]
    fit = x @ torch.linalg.lstsq(x, y).solution  # [n, D_s]
    true = (system.a * s[:, :-1] + system.b * a[:, :-1]).reshape(-1, s.shape[-1])
    return ((fit - true) ** 2).mean().item(), ((y - fit) ** 2).mean().item()


def action_z_std(system: LinearSystem, out: dict) -> float:
    """std of z = (a - mu(s)) / sigma(s) of the imagined pairs under the policy that guided them (ideal 1)."""
    mean, std = system.policy(out["observations"])
    return ((out["actions"] - mean) / std).std().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/out/solver.json", help="JSON output path")
    parser.add_argument("--updates", type=int, default=3000, help="world-model updates on the system's windows")
    parser.add_argument("--seeds", type=int, default=4, help="noise seeds per setting (same 1024 start states)")
    parser.add_argument("--starts", type=int, default=1024, help="start states (windows per seed)")
    parser.add_argument("--policy-guidance", default="score", choices=("score", "reparam", "causal"),
                        help="the sampler's action rule")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    system = LinearSystem()
    base = WorldModelConfig(horizon=system.horizon, hidden_dim=128, num_layers=2, diffusion_steps=128, lr=1e-3,
                            ema_start=10**9, return_model_hidden=0, policy_guidance=args.policy_guidance)
    began = time.perf_counter()
    trained, losses = system.train(base, updates=args.updates, seed=0)
    train_s = time.perf_counter() - began
    state = trained.state_dict()
    start = system.start_states(args.starts, np.random.default_rng(1))

    rows = []
    for eta in ETAS:
        for k in STEPS:
            cfg = base.replace(sampling_steps=k, sampler_eta=eta)
            wm = WorldModel(system.obs_dim, system.act_dim, cfg, seed=0)
            wm.load_state_dict(state)
            dyn, mean_part, noise_part, rew, spread, z_std, seconds = [], [], [], [], [], [], []
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                out = wm.imagine(start, policy=system.policy, guide=GuideConfig(kind="none"),
                                 generator=torch.Generator().manual_seed(seed))
                seconds.append(time.perf_counter() - t0)
                d, r = system.consistency(out)
                dyn.append(d)
                m, n = split_residual(system, out)
                mean_part.append(m)
                noise_part.append(n)
                rew.append(r)
                spread.append(state_spread_ratio(system, out, seed))
                z_std.append(action_z_std(system, out))
            sem = float(np.std(dyn, ddof=1) / np.sqrt(len(dyn))) if len(dyn) > 1 else None
            rows.append({"eta": eta, "steps": k, "dynamics_mse": float(np.mean(dyn)), "dynamics_mse_sem": sem,
                         "dynamics_mean_part": float(np.mean(mean_part)),
                         "dynamics_noise_part": float(np.mean(noise_part)),
                         "reward_mse": float(np.mean(rew)), "state_spread_ratio": float(np.mean(spread)),
                         "action_z_std": float(np.mean(z_std)), "imagine_seconds": float(np.median(seconds))})
    ref = next(r for r in rows if r["eta"] == 1.0 and r["steps"] == max(STEPS))
    for r in rows:
        r["dynamics_ratio"] = r["dynamics_mse"] / ref["dynamics_mse"]
        r["reward_ratio"] = r["reward_mse"] / ref["reward_mse"]
    within = [r for r in rows if r["dynamics_ratio"] <= TOLERANCE]
    best = min(within, key=lambda r: (r["steps"], r["dynamics_ratio"]))

    print(f"trained {args.updates} updates in {train_s:.1f} s; loss {losses[:10].mean():.3f} -> "
          f"{losses[-100:].mean():.4f}; the true residual is the process noise: mean 0 + noise {system.noise**2:.4f}; "
          f"{args.starts} start states x {args.seeds} noise seeds, policy guidance {args.policy_guidance!r}")
    header = (f"{'eta':>4} {'K':>4} {'dyn mse':>8} {'x K=128':>7} {'= mean':>8} {'+ noise':>8} {'rew mse':>8} "
              f"{'x K=128':>7} {'spread':>6} {'z std':>5} {'s/imagine':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['eta']:4g} {r['steps']:4d} {r['dynamics_mse']:8.5f} {r['dynamics_ratio']:7.2f} "
              f"{r['dynamics_mean_part']:8.5f} {r['dynamics_noise_part']:8.5f} {r['reward_mse']:8.4f} "
              f"{r['reward_ratio']:7.2f} {r['state_spread_ratio']:6.3f} {r['action_z_std']:5.2f} "
              f"{r['imagine_seconds']:9.3f}")
    print(f"fewest reverse steps with the dynamics residual within {TOLERANCE:g}x of the 128-step DDPM chain: "
          f"eta={best['eta']:g}, K={best['steps']} ({best['dynamics_ratio']:.2f}x, reward {best['reward_ratio']:.2f}x)")
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "torch": torch.__version__, "threads": args.threads, "updates": args.updates, "train_seconds": train_s,
            "loss_first": float(losses[:10].mean()), "loss_last": float(losses[-100:].mean()), "seeds": args.seeds,
            "starts": args.starts, "policy_guidance": args.policy_guidance, "world_model": base.to_dict(),
            "system": dataclasses.asdict(system), "tolerance": TOLERANCE,
            "fewest_steps_within_tolerance": {"eta": best["eta"], "steps": best["steps"]}}
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
