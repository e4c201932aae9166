"""Few-step sampling on a trained MuJoCo world model: open-loop error against the reverse steps K and DDIM's eta.

From one checkpoint (an `agd-ray train` OUTPUT/checkpoint or a Tune trial's checkpoint_NNNNNN): real windows from its
replay; for each (eta, K) the checkpoint's weights sample windows from their start states with the checkpoint's
policy (its policy-guidance rule, no state guidance; the same seed), and each window's actions are replayed in
MuJoCo from its true (qpos, qvel) (`diagnostics.open_loop_error`). Reported: the open-loop state MSE (mean over
steps 1..H-1), its ratio to the full chain (K = N, eta = 1), the action z mean / std under the policy at the
returned states, and the seconds per imagine call. The fewest reverse steps within `--tolerance` of the full chain
is printed at the end. Prints a table, writes JSON.

    OMP_NUM_THREADS=1 .venv/bin/python bench/solver_mujoco.py CHECKPOINT [--windows 256] \\
        [--out bench/out/solver_mujoco.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from a checkout without install
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

ETAS = (1.0, 0.0)
STEPS = (64, 32, 16, 8, 6, 4, 3, 2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint directory with agd/ (train's OUTPUT/checkpoint, a trial's)")
    parser.add_argument("--env", default=None, help="MuJoCo task id (default: from the run's params/config)")
    parser.add_argument("--windows", type=int, default=256, help="real windows (start states) from replay")
    parser.add_argument("--seeds", type=int, default=2, help="sampling seeds per setting")
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS), help="reverse steps K (<= N)")
    parser.add_argument("--etas", type=float, nargs="+", default=list(ETAS))
    parser.add_argument("--tolerance", type=float, default=1.05, help="within this ratio of the full chain")
    parser.add_argument("--policy-guidance", default=None, choices=["score", "reparam", "causal"],
                        help="sample with this action rule (default: the checkpoint's)")
    parser.add_argument("--warm-steps", type=int, nargs="+", default=None,
                        help="causal rule only: instead of the K x eta grid, the checkpoint's K and eta with each "
                             "causal_warm_steps M here (0: every reverse process from noise, the reference row)")
    parser.add_argument("--out", default="bench/out/solver_mujoco.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import gymnasium as gym
    from ray.rllib.utils.spaces.space_utils import unsquash_action

    from agd_ray.imagination import make_policy
    from agd_ray.world_model import GuideConfig, WorldModel
    from agd_ray.world_model.diagnostics import action_z_stats, open_loop_error

    from consistency import open_checkpoint

    checkpoint = Path(args.checkpoint)
    opened = open_checkpoint(checkpoint, args.env, "solver_mujoco")
    if opened is None:
        return 2
    env_id, trained, module, replay = opened
    policy = make_policy(module)
    env = gym.make(env_id)
    n = trained.config.diffusion_steps
    real = replay.sample_windows(args.windows, trained.config.horizon, rng=np.random.default_rng(123))
    start = real["observations"][:, 0]
    state = trained.state_dict()
    steps = sorted({k for k in args.steps if k <= n} | {n}, reverse=True)
    rule = args.policy_guidance or trained.config.policy_guidance
    if args.warm_steps is not None and rule != "causal":
        print(f"solver_mujoco: error: --warm-steps needs the causal rule; this checkpoint's is {rule!r} "
              "(add --policy-guidance causal)", file=sys.stderr)
        return 2
    base = trained.config.replace(policy_guidance=rule)
    print(f"{env_id}: N={n}, H={base.horizon}, policy guidance {rule!r}, {args.windows} windows x {args.seeds} seeds")
    if args.warm_steps is None:
        grid = [dict(sampling_steps=k, sampler_eta=eta) for eta in args.etas for k in steps]
        first_columns = f"{'eta':>4} {'K':>4}"
    else:  # the checkpoint's K and eta, the warm-started causal sampler against its full reverse processes
        grid = [dict(causal_warm_steps=m) for m in sorted(set(args.warm_steps) | {0}, reverse=True)
                if m <= base.sampling_steps]
        first_columns = f"{'M':>4} {'calls':>5}"
        print(f"causal rule at K={base.sampling_steps}, eta={base.sampler_eta:g}; M: causal_warm_steps, calls: "
              "denoiser calls per window")
    header = f"{first_columns} {'open-loop mse':>13} {'x full':>7} {'z mean':>7} {'z std':>6} {'s/imagine':>9}"
    print(header)
    print("-" * len(header))
    rows = []
    for changes in grid:
        eta, k = changes.get("sampler_eta", base.sampler_eta), changes.get("sampling_steps", base.sampling_steps)
        warm = changes.get("causal_warm_steps", 0)
        model = WorldModel(trained.obs_dim, trained.act_dim, base.replace(**changes), device="cpu",
                           terminal_rule=trained.terminal_rule)
        model.load_state_dict(state)
        errors, z_means, z_stds, seconds = [], [], [], []
        for seed in range(args.seeds):
            began = time.perf_counter()
            out = model.imagine(start, policy=policy, guide=GuideConfig(kind="none"),
                                generator=torch.Generator().manual_seed(seed))
            seconds.append(time.perf_counter() - began)
            actions = unsquash_action(out["actions"].numpy().astype(np.float64), env.action_space)
            errors.append(float(np.nanmean(open_loop_error(env, real["qpos"], real["qvel"], actions,
                                                           out["observations"])[1:])))
            z = action_z_stats(out, policy)
            z_means.append(z["action_z_mean"])
            z_stds.append(z["action_z_std"])
        horizon = base.horizon
        calls = k if rule != "causal" else k + (horizon - 2) * (warm or k)
        rows.append({"eta": eta, "steps": k, "warm_steps": warm, "denoiser_calls": calls,
                     "open_loop_mse": float(np.mean(errors)),
                     "open_loop_mse_seeds": errors, "action_z_mean": float(np.mean(z_means)),
                     "action_z_std": float(np.mean(z_stds)), "seconds": float(np.median(seconds))})
    if args.warm_steps is None:
        full = (next(r for r in rows if r["eta"] == 1.0 and r["steps"] == n)["open_loop_mse"]
                if 1.0 in args.etas else None)
    else:
        full = next(r for r in rows if r["warm_steps"] == 0)["open_loop_mse"]
    for r in rows:
        r["ratio"] = r["open_loop_mse"] / full if full else None
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        first = (f"{r['eta']:4g} {r['steps']:4d}" if args.warm_steps is None
                 else f"{r['warm_steps']:4d} {r['denoiser_calls']:5d}")
        print(f"{first} {r['open_loop_mse']:13.4f} {ratio:>7} {r['action_z_mean']:7.3f} "
              f"{r['action_z_std']:6.3f} {r['seconds']:9.3f}")
    within = [r for r in rows if r["ratio"] is not None and r["ratio"] <= args.tolerance]
    best = min(within, key=lambda r: (r["denoiser_calls"], -r["eta"])) if within else None
    if best and args.warm_steps is None:
        print(f"fewest reverse steps within {args.tolerance}x of the full chain: eta={best['eta']:g}, "
              f"K={best['steps']} ({best['ratio']:.3f}x)")
    elif best:
        print(f"fewest denoiser calls within {args.tolerance}x of full causal reverse processes: M={best['warm_steps']}"
              f" ({best['denoiser_calls']} calls per window, {best['ratio']:.3f}x)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {"checkpoint": str(checkpoint), "env": env_id, "diffusion_steps": n, "horizon": trained.config.horizon,
            "policy_guidance": rule, "windows": args.windows, "seeds": args.seeds,
            "tolerance": args.tolerance, "best": best, "machine": f"{platform.machine()} {platform.processor()}",
            "torch": torch.__version__, "commit": commit}
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
