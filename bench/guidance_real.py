"""Does what the guide selects hold up on the simulator? Imagined against real advantage gain from a checkpoint.

From one checkpoint (an `agd-ray train` OUTPUT/checkpoint or a Tune trial's checkpoint_NNNNNN): real windows from its
replay, and for each guide setting the windows imagined from their start states with and without the guide
(`diagnostics.guidance_effect`). Each window's actions are replayed in MuJoCo from its true start state (qpos, qvel);
the n-step advantage of the imagined windows and of what the simulator does with the same actions, under the
checkpoint's own critic, give the imagined and the real gain (guided minus unguided, in standard deviations of
the unguided windows'), next to the open-loop error of guided and unguided windows and, for resampling, the share
of the unguided windows' spread that lies within start states (what a choice among a start's candidates can act
on). An imagined gain that does not appear on the simulator is value the model hallucinated (ALGORITHM.md 7).
Also draws, for a few windows, imagined
against simulated state trajectories, guided and unguided.

    OMP_NUM_THREADS=1 .venv/bin/python bench/guidance_real.py CHECKPOINT [--windows 128] \\
        [--out bench/out/guidance_real.json]
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

SETTINGS = {  # name -> GuideConfig fields besides kind and temperature
    "resample K=4 (default)": {"method": "resample", "candidates": 4},
    "resample K=8": {"method": "resample", "candidates": 8},
    "gradient x0, c=0.1": {"method": "gradient"},
    "gradient xt, c=5": {"method": "gradient", "grad_wrt": "xt", "scale": 5.0},
}
TEMPERATURES = (2.0, 1.0, 0.5, 0.25)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint directory with agd/ (train's OUTPUT/checkpoint, a trial's)")
    parser.add_argument("--env", default=None, help="MuJoCo task id (default: from the run's params/config)")
    parser.add_argument("--windows", type=int, default=128, help="real windows (start states) from replay")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    parser.add_argument("--out", default="bench/out/guidance_real.json", help="JSON path (plot beside it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import gymnasium as gym
    from ray.rllib.utils.spaces.space_utils import unsquash_action

    from agd_ray.imagination import make_critic, make_policy
    from agd_ray.world_model import GuideConfig
    from agd_ray.world_model.diagnostics import guidance_effect

    from consistency import open_checkpoint

    checkpoint = Path(args.checkpoint)
    opened = open_checkpoint(checkpoint, args.env, "guidance_real")
    if opened is None:
        return 2
    env_id, model, module, replay = opened
    policy, critic = make_policy(module), make_critic(module)
    env = gym.make(env_id)
    real = replay.sample_windows(args.windows, model.config.horizon, rng=np.random.default_rng(args.seed))

    def to_env(actions):
        return unsquash_action(actions, env.action_space)

    rows, pictures = [], {}
    print(f"{env_id}, H={model.config.horizon}, {args.windows} replay windows; gains in sd of the unguided windows")
    header = (f"{'setting':24} {'kind':4} {'beta':>5} {'imagined':>9} {'real':>7} {'open-loop g/u':>13} "
              f"{'within/all sd':>13} {'seconds':>8}")
    print(header)
    print("-" * len(header))
    for name in args.settings:
        for kind in ("sag", "eag"):
            for temperature in args.temperatures:
                guide = GuideConfig(kind=kind, temperature=temperature, **SETTINGS[name])
                began = time.perf_counter()
                effect = guidance_effect(model, env, real, policy=policy, critic=critic, guide=guide,
                                         seed=args.seed, to_env_actions=to_env)
                seconds = time.perf_counter() - began
                m = effect["metrics"]
                within = None  # the spread a choice among a start's candidates acts on, against the whole spread
                if "candidate_advantages" in effect["imagined"]["guided"]:
                    from agd_ray.world_model.guidance import within_start_spread

                    candidates = effect["imagined"]["guided"]["candidate_advantages"].double()
                    within = float(within_start_spread(candidates) / candidates.std())
                row = {"setting": name, "kind": kind, "temperature": temperature,
                       "imagined_gain_sigma": m["quality/advantage_gain_sigma"],
                       "real_gain_sigma": m["quality/real_advantage_gain_sigma"],
                       "imagined_gain": m["quality/advantage_gain"], "real_gain": m["quality/real_advantage_gain"],
                       "open_loop_mse_guided": m["quality/open_loop_mse_guided"],
                       "open_loop_mse_unguided": m["quality/open_loop_mse_unguided"], "seconds": seconds,
                       "within_start_share": within}
                rows.append(row)
                ratio = row["open_loop_mse_guided"] / row["open_loop_mse_unguided"]
                print(f"{name:24} {kind:4} {temperature:5g} {row['imagined_gain_sigma']:+9.3f} "
                      f"{row['real_gain_sigma']:+7.3f} {ratio:13.2f} "
                      f"{'-' if within is None else f'{within:.2f}':>13} {seconds:8.1f}", flush=True)
                if kind == "eag" and temperature == min(args.temperatures):
                    pictures[name] = effect
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {"checkpoint": str(checkpoint), "env": env_id, "windows": args.windows, "seed": args.seed,
            "horizon": model.config.horizon, "machine": f"{platform.machine()} {platform.processor()}".strip(),
            "torch": torch.__version__, "commit": commit}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    plot(pictures, out.with_suffix(".png"), env_id, min(args.temperatures))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def plot(pictures: dict, path: Path, env_id: str, temperature: float, windows: int = 3, dims: int = 3) -> None:
    """For a few windows: the first state dimensions along the window, imagined (solid) against what the
    simulator does with the same actions (dashed), guided and unguided, one row per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not pictures:
        return
    fig, axes = plt.subplots(len(pictures), windows, figsize=(4.2 * windows, 3.2 * len(pictures)), squeeze=False)
    for row, (name, effect) in enumerate(pictures.items()):
        for b in range(windows):
            ax = axes[row, b]
            for label, color in (("guided", "C3"), ("unguided", "C0")):
                imagined = effect["imagined"][label]["observations"].detach().cpu().numpy()
                real = effect["real_states"][label]
                k = len(imagined) // len(effect["imagined"]["guided"]["observations"])  # candidates per start
                i = b * k  # the first window of start b
                for d in range(dims):
                    ax.plot(imagined[i, :, d], color=color, alpha=0.4 + 0.2 * d, linewidth=1.5,
                            label=f"{label} imagined" if d == 0 else None)
                    ax.plot(real[i, :, d], color=color, alpha=0.4 + 0.2 * d, linewidth=1.0, linestyle="--",
                            label=f"{label} simulator" if d == 0 else None)
            ax.set_title(f"{name}: window {b}", fontsize=9)
            ax.set_xlabel("step h")
            if b == 0:
                ax.set_ylabel(f"state dims 0..{dims - 1}")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{env_id}: imagined (solid) against simulated (dashed) states, EAG at temperature {temperature:g}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
