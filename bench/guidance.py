"""Guidance effect on a known linear system: the frontier of gain against cost in time and in consistency.

For each mechanism (the gradient guides at several strengths, the reference code's guide, advantage-weighted
resampling with K candidates, self-weighted guidance on a model trained with the weight channel) and each
temperature, from the same start states: the gain in the mean n-step advantage under the system's true critic,
in standard deviations of the unguided windows' advantage; the imagined
windows' one-step dynamics residual and reward error against the true system, as ratios to unguided; and the
sampling time as a ratio to unguided (measured side by side in this run). ALGORITHM.md 3.3, 6 and 7.
Prints a table, writes JSON and a plot of the frontier.

    OMP_NUM_THREADS=1 python bench/guidance.py [--out bench/out/guidance.json] [--updates 1500]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run as a file from a checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402

from agd_ray.world_model import GuideConfig, WorldModelConfig  # noqa: E402
from agd_ray.world_model.guidance import window_advantages  # noqa: E402
from agd_ray.world_model.linear_system import LinearSystem  # noqa: E402

MECHANISMS = {  # name -> GuideConfig fields besides kind and temperature ("reference": GuideConfig.reference)
    "gradient x0, c=0.1 (old default)": {"method": "gradient"},
    "gradient x0, c=1": {"method": "gradient", "scale": 1.0},
    "gradient xt, c=5": {"method": "gradient", "grad_wrt": "xt", "scale": 5.0},
    "reference (td1, x0, c=4 var^2)": "reference",
    "resample K=2": {"method": "resample", "candidates": 2},
    "resample K=4 (default)": {"method": "resample", "candidates": 4},
    "resample K=8": {"method": "resample", "candidates": 8},
    "resample K=16": {"method": "resample", "candidates": 16},
}
TEMPERATURES = (2.0, 1.0, 0.5, 0.25)
# Self-weighted guidance: the weight W = w(A / beta) is a training target, so each (form, temperature) is its own
# model with the weight channel, trained like the others; sampled at c = 1 (the exact tilt) and c = 4.
SWG = {"swg c=1": 1.0, "swg c=4": 4.0}
SWG_FORMS = {"sag": "sigmoid", "eag": "exp"}  # the kind column: SAG's or EAG's weight form


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/out/guidance.json", help="JSON output path (the plot beside it)")
    parser.add_argument("--updates", type=int, default=1500, help="world-model updates on the system's windows")
    parser.add_argument("--windows", type=int, default=1024, help="start states per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    system = LinearSystem()
    cfg = WorldModelConfig(horizon=system.horizon, hidden_dim=128, num_layers=2, diffusion_steps=32,
                           sampling_steps=32, lr=1e-3, ema_start=10**9, return_model_hidden=64)
    began = time.perf_counter()
    wm, losses = system.train(cfg, updates=args.updates, seed=0)
    train_s = time.perf_counter() - began
    start = system.start_states(args.windows, np.random.default_rng(1))

    def run(guide):
        began = time.perf_counter()
        out = wm.imagine(start, policy=system.policy, critic=system.critic, guide=guide,
                         generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - began
        return out, seconds

    run(GuideConfig(kind="none"))  # warm-up
    base_times = []
    for _ in range(3):
        base, seconds = run(GuideConfig(kind="none"))
        base_times.append(seconds)
    base_s = float(np.median(base_times))
    base_adv = window_advantages(base, system.critic, system.gamma)
    spread = float(base_adv.std())
    base_dyn, base_rew = system.consistency(base)
    rows = [{"mechanism": "none (PolyGRAD)", "kind": "none", "temperature": None, "gain_sigma": 0.0,
             "dynamics_ratio": 1.0, "reward_ratio": 1.0, "time_ratio": 1.0}]
    for name, fields in MECHANISMS.items():
        for kind in ("sag", "eag"):
            for temperature in TEMPERATURES:
                if fields == "reference":
                    guide = GuideConfig.reference(kind, temperature)
                else:
                    guide = GuideConfig(kind=kind, temperature=temperature, **fields)
                out, seconds = run(guide)
                adv = window_advantages(out, system.critic, system.gamma)
                dyn, rew = system.consistency(out)
                rows.append({"mechanism": name, "kind": kind, "temperature": temperature,
                             "gain_sigma": float(adv.mean() - base_adv.mean()) / spread,
                             "dynamics_ratio": dyn / base_dyn, "reward_ratio": rew / base_rew,
                             "time_ratio": seconds / base_s})

    for kind, form in SWG_FORMS.items():
        for temperature in TEMPERATURES:
            guide = GuideConfig(kind="swg", temperature=temperature, swg_weight=form)
            swg_model, _ = system.train(cfg.replace(weight_channel=True, return_model_hidden=0), updates=args.updates,
                                        seed=0, guide=guide)
            base_swg = swg_model.imagine(start, policy=system.policy, critic=system.critic,
                                         guide=GuideConfig(kind="none"), generator=torch.Generator().manual_seed(0))
            base_swg_adv = window_advantages(base_swg, system.critic, system.gamma)
            base_swg_dyn, base_swg_rew = system.consistency(base_swg)
            for name, scale in SWG.items():
                began = time.perf_counter()
                out = swg_model.imagine(start, policy=system.policy, critic=system.critic,
                                        guide=guide.replace(scale=scale), generator=torch.Generator().manual_seed(0))
                seconds = time.perf_counter() - began
                adv = window_advantages(out, system.critic, system.gamma)
                dyn, rew = system.consistency(out)
                # against its own model's unguided windows (same start states and noise), in the same units
                rows.append({"mechanism": name, "kind": kind, "temperature": temperature,
                             "gain_sigma": float(adv.mean() - base_swg_adv.mean()) / float(base_swg_adv.std()),
                             "dynamics_ratio": dyn / base_swg_dyn, "reward_ratio": rew / base_swg_rew,
                             "time_ratio": seconds / base_s})

    print(f"trained {args.updates} updates in {train_s:.1f} s; loss {losses[:10].mean():.3f} -> "
          f"{losses[-100:].mean():.4f}; unguided: n-step advantage {float(base_adv.mean()):.3f} +- {spread:.3f}, "
          f"dynamics mse {base_dyn:.5f}, sampling {base_s * 1e3:.0f} ms for {args.windows} windows")
    header = (f"{'mechanism':34} {'kind':5} {'beta':>5} {'gain (sd)':>9} {'dyn x':>6} {'rew x':>6} "
              f"{'time x':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        beta = "" if r["temperature"] is None else f"{r['temperature']:g}"
        print(f"{r['mechanism']:34} {r['kind']:5} {beta:>5} {r['gain_sigma']:+9.3f} {r['dynamics_ratio']:6.2f} "
              f"{r['reward_ratio']:6.2f} {r['time_ratio']:7.1f}")
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.machine()} {platform.processor()}".strip(), "cpus": torch.get_num_threads(),
            "torch": torch.__version__, "threads": args.threads, "updates": args.updates, "windows": args.windows,
            "train_seconds": train_s, "unguided_advantage_mean": float(base_adv.mean()),
            "unguided_advantage_std": spread, "unguided_dynamics_mse": base_dyn, "unguided_sampling_s": base_s,
            "system": dataclasses.asdict(system), "world_model": cfg.to_dict()}
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    plot(rows, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")


def plot(rows: list[dict], path: pathlib.Path) -> None:
    """Two panels: gain against sampling time and against the dynamics residual, one marker per mechanism, one
    point per (kind, temperature); the gain's target band (ALGORITHM.md 6) shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 4.8), sharey=True)
    names = list(dict.fromkeys(r["mechanism"] for r in rows))
    markers = "o^svDP*Xh"
    for i, name in enumerate(names):
        for kind, fill in (("sag", "none"), ("eag", None), ("none", None)):
            pts = [r for r in rows if r["mechanism"] == name and r["kind"] == kind]
            if not pts:
                continue
            label = f"{name} {kind}" if kind != "none" else name
            style = dict(marker=markers[i % len(markers)], linestyle="", label=label, color=f"C{i}")
            if fill == "none":
                style["markerfacecolor"] = "none"
            axes[0].plot([r["time_ratio"] for r in pts], [r["gain_sigma"] for r in pts], **style)
            axes[1].plot([r["dynamics_ratio"] for r in pts], [r["gain_sigma"] for r in pts], **style)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("sampling time / unguided")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("one-step dynamics residual / unguided")
    axes[1].axvline(1.2, color="grey", linestyle=":")
    axes[0].set_ylabel("advantage gain (sd of unguided windows)")
    top = max(r["gain_sigma"] for r in rows)
    axes[0].set_ylim(-1.0, top + 0.15)  # the strong gradient steps fall far below: off the plot, in the table
    for ax in axes:
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("Guidance on the known linear system: gain against cost (hollow: SAG, filled: EAG; "
                 "temperatures 2, 1, 0.5, 0.25; gains below -1 off the plot)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
