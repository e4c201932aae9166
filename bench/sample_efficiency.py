"""Sample efficiency: evaluation return against real env steps for every method, through the Tune harness.

Methods (`--methods`, default the first six, `DEFAULT_METHODS`): `ppo` (model-free PPO on real data),
`polygrad` (guide none: policy-guided actions, no state guidance), `reward` (Diffuser-style reward guide), `sag` and
`eag` (advantage guidance at agd-ray's defaults, temperature 1), `sag-reference` (the reference code's guide settings,
ALGORITHM.md 3, `GuideConfig.reference`); `polygrad-causal` and `sag-causal` (the causal sampler,
`world_model.policy_guidance="causal"`); `sag-envterm`, `polygrad-causal-envterm` and `sag-causal-envterm`
(the same with terminations by the task's own rule, `imagination.termination="env"`); `simulator` (the
perfect-model control, `imagination.source="simulator"`: an upper bound for learning from these windows, not a
method). `sag@0.3` / `eag@3` are the same guides at another temperature. Each method x seed
is one trial of an `agd-ray sweep` (the same `SweepSpec`, `AGD` trainable, stopper and checkpoints), evaluated
with the mean action every `--eval-every` env steps (rounded to whole iterations) and at `--env-steps` (the
iteration that reaches the budget evaluates too, so every curve ends there); the world-model quality of
ALGORITHM.md 7 (open-loop error by step, guided and unguided; action z) is measured on the same runs
(`imagination.quality_interval`).

    agd-ray bench sample-efficiency --env InvertedPendulum-v5 --env-steps 20000 --seeds 0 1 2
    agd-ray bench sample-efficiency --env HalfCheetah-v5 --env-steps 30000 --methods ppo polygrad sag --resume

A run that is interrupted continues with `--resume` (same arguments: the trials restart from their latest
checkpoints). Runs with other methods or seeds (another Tune experiment, named after them) add to the same
files: OUTPUT/ENV/curves.csv (every evaluation of every trial), summary.md (the table: evaluation return at
fixed env steps, area under the curve, wall time, imagined transitions, world-model quality), curves.png,
quality.png and sample_efficiency.json. `--report-only` rebuilds those from what is on disk.

Curves are compared on env steps, not iterations: a method's value at x env steps is its evaluation curve,
linearly interpolated between evaluations (flat beyond the first and last), averaged over seeds; AUC is that
curve's mean over [eval_every, env_steps] (on a 100-point grid).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from a checkout without install

import numpy as np  # noqa: E402

REFERENCE_SAG = {  # GuideConfig.reference("sag", 1.0), written out as sweep keys (tests check they agree)
    "guidance.kind": "sag", "guidance.temperature": 1.0, "guidance.scale": 4.0,
    "guidance.scale_mode": "reference", "guidance.advantage": "td1", "guidance.normalize_advantage": False,
    "guidance.guide_rewards": False, "guidance.guide_last_state": False,
}
METHODS = {
    "ppo": {"model_free": True},
    "polygrad": {"guidance.kind": "none"},
    "reward": {"guidance.kind": "reward"},
    "sag": {"guidance.kind": "sag", "guidance.temperature": 1.0},  # advantage-weighted resampling (the default)
    "eag": {"guidance.kind": "eag", "guidance.temperature": 1.0},
    "sag-reference": REFERENCE_SAG,
    # the gradient guides at their defaults (the default method before resampling: RESULTS' earlier "sag" rows)
    "sag-gradient": {"guidance.kind": "sag", "guidance.temperature": 1.0, "guidance.method": "gradient"},
    "eag-gradient": {"guidance.kind": "eag", "guidance.temperature": 1.0, "guidance.method": "gradient"},
    # self-weighted guidance at 4x the exact tilt, its strongest setting within the dynamics (RESULTS.md)
    "swg": {"guidance.kind": "swg", "guidance.temperature": 1.0, "guidance.scale": 4.0},
    # ours: the causal sampler (world_model.policy_guidance="causal") without and with advantage guidance
    "polygrad-causal": {"guidance.kind": "none", "world_model.policy_guidance": "causal"},
    "sag-causal": {"guidance.kind": "sag", "guidance.temperature": 1.0, "world_model.policy_guidance": "causal"},
    # ours: terminations by the task's own rule on the imagined states (imagination.termination="env")
    "sag-envterm": {"guidance.kind": "sag", "guidance.temperature": 1.0, "imagination.termination": "env"},
    "polygrad-causal-envterm": {"guidance.kind": "none", "world_model.policy_guidance": "causal",
                                "imagination.termination": "env"},
    "sag-causal-envterm": {"guidance.kind": "sag", "guidance.temperature": 1.0,
                           "world_model.policy_guidance": "causal", "imagination.termination": "env"},
    # the perfect-model control: the same windows rolled out in the simulator (not a method: an upper bound)
    "simulator": {"guidance.kind": "none", "imagination.source": "simulator"},
}
DEFAULT_METHODS = ("ppo", "polygrad", "reward", "sag", "eag", "sag-reference")  # the six
CURVE_COLUMNS = ("experiment", "method", "seed", "iteration", "env_steps", "eval_return", "train_return",
                 "imagined_transitions", "wall_s", "world_model_loss", "advantage_gain", "advantage_gain_sigma",
                 "quality_gain_sigma", "real_gain_sigma", "action_z_std",
                 "open_loop_mse_guided", "open_loop_mse_unguided", "action_z_mean_guided", "action_z_std_guided")
# curve columns `agd_ray.results.result_row` already reads (its name, when it differs)
FROM_ROW = {"iteration": "iteration", "env_steps": "env_steps", "eval_return": "eval_return_mean",
            "train_return": "episode_return_mean", "imagined_transitions": "imagined_transitions",
            "world_model_loss": "world_model_loss", "advantage_gain": "advantage_gain",
            "advantage_gain_sigma": "advantage_gain_sigma", "quality_gain_sigma": "quality_advantage_gain_sigma",
            "real_gain_sigma": "quality_real_advantage_gain_sigma",
            "action_z_std": "action_z_std", "open_loop_mse_guided": "open_loop_mse_guided",
            "open_loop_mse_unguided": "open_loop_mse_unguided"}
# and the others: result path (nested keys)
EXTRA = {
    "wall_s": ("time_total_s",),
    "action_z_mean_guided": ("quality", "action_z_mean_guided"),
    "action_z_std_guided": ("quality", "action_z_std_guided"),
}
BY_STEP = ("open_loop_mse_guided_by_step", "open_loop_mse_unguided_by_step")
FINAL_FILE = "final_evaluation.json"  # in a trial's directory: `evaluate_finals`' returns at the budget


def method_settings(name: str) -> dict:
    """A method name (or KIND@TEMPERATURE for sag/eag/reward) -> its sweep keys; ValueError names the allowed."""
    if "@" in name:
        kind, _, temperature = name.partition("@")
        try:
            value = float(temperature)
        except ValueError:
            value = float("nan")
        kinds = ("sag", "eag", "reward", "sag-reference", "sag-gradient", "eag-gradient", "swg")
        if kind not in kinds or not value > 0 or not math.isfinite(value):
            raise ValueError(f"method {name!r} is not allowed; KIND@T takes KIND in {', '.join(kinds)} and a "
                             f"temperature T > 0, e.g. sag@0.3")
        return {**METHODS[kind], "guidance.temperature": value}
    if name not in METHODS:
        raise ValueError(f"method {name!r} is not allowed; choose from {', '.join(METHODS)} or KIND@T (e.g. sag@0.3)")
    return dict(METHODS[name])


def build_spec(args):
    """The `agd_ray.sweep.SweepSpec` these arguments describe, checked by `agd_ray.sweep.parse_sweep` (every
    trial's config)."""
    from agd_ray.cli import PRESET_SETTINGS
    from agd_ray.sweep import parse_config_items, parse_sweep

    batch = PRESET_SETTINGS[args.preset]["training"]["train_batch_size_per_learner"]
    config = parse_config_items(args.config)
    data = {
        "name": args.name or experiment_name(args),
        "env": args.env,
        "preset": args.preset,
        "env_steps": args.env_steps,
        "seeds": list(args.seeds),
        "eval_interval": max(1, round(args.eval_every / batch)),
        "checkpoint_every": args.checkpoint_every,
        "methods": {name: method_settings(name) for name in args.methods},
        "config": config,
        # one trial at a time on a small machine: the trial's process (learner, evaluation) and one env runner
        "resources": {"num_env_runners": 1, "num_cpus_per_env_runner": 1, "evaluation_env_runners": 0,
                      "world_model_cpus": 0, "max_concurrent_trials": args.concurrent},
    }
    if args.eval_episodes is not None:
        data["eval_episodes"] = args.eval_episodes
    return parse_sweep(data, default_name=data["name"])


def experiment_name(args) -> str:
    """Tune experiment name: env, preset, budget, methods, seeds and settings (same arguments, same name)."""
    parts = [args.preset, f"{args.env_steps}", "-".join(m.replace("@", "T") for m in args.methods),
             "s" + "-".join(map(str, args.seeds))]
    if args.config:
        parts.append("-".join(c.replace("=", "_") for c in args.config))
    return "_".join(parts).replace("/", "-")


# -- reading results ---------------------------------------------------------------------------------------------
def history_rows(history: list[dict]) -> list[dict]:
    """A trial's results (`agd_ray.sweep.trial_history`) -> one row per iteration with the curve columns."""
    from agd_ray.results import lookup, result_row

    rows = []
    for result in history:
        base = result_row(result)  # evaluation only where measured; env steps of AGD or of RLlib's PPO
        row = {name: base[key] for name, key in FROM_ROW.items()}
        row.update({name: lookup(result, path) for name, path in EXTRA.items()})
        for key in BY_STEP:
            steps = (result.get("quality") or {}).get(key) or {}
            row[key] = [lookup(steps, (f"h{h}",)) for h in range(1, len(steps) + 1)]
        rows.append(row)
    return rows


def read_trials(root: Path) -> list[dict]:
    """Every trial under root/tune/*/: its experiment, method, seed, guide and per-iteration rows."""
    from agd_ray.sweep import trial_history

    trials = []
    for params_path in sorted(root.glob("tune/*/*/params.json")):
        params = json.loads(params_path.read_text())
        rows = history_rows(trial_history(params_path.parent))
        if not rows:
            continue
        final = params_path.parent / FINAL_FILE
        trials.append({"experiment": params_path.parent.parent.name, "method": params.get("sweep_method"),
                       "seed": params.get("seed"), "guide": params.get("guidance.kind"),
                       "temperature": params.get("guidance.temperature"),
                       "model_based": params.get("model_based", True), "rows": rows,
                       "final": json.loads(final.read_text()) if final.is_file() else None})
    return trials


def final_checkpoint(trial_dir: Path) -> tuple[Path, int] | None:
    """The trial's checkpoint with the most real env steps (agd/counters.json) and that count; None without."""
    best = None
    for checkpoint in trial_dir.glob("checkpoint_*"):
        counters = checkpoint / "agd" / "counters.json"
        if counters.is_file():
            steps = int(json.loads(counters.read_text())["env_steps"])
            if best is None or steps > best[1]:
                best = (checkpoint, steps)
    return best


def evaluate_finals(root: Path, *, env: str, env_steps: int, episodes: int, seed: int = 10_000) -> int:
    """Runs the mean action of every finished trial's last checkpoint (at >= env_steps) for `episodes`
    episodes (`agd_ray.evaluate.mean_action_returns`, episode seeds from `seed`, apart from the runs' own) and writes
    the returns to the trial's FINAL_FILE; trials that have one with as many episodes are skipped. One
    protocol for every method at the budget itself, with more episodes than the in-run evaluations.
    Returns the number of trials evaluated now."""
    from agd_ray.evaluate import mean_action_returns

    done = 0
    for params_path in sorted(root.glob("tune/*/*/params.json")):
        trial_dir = params_path.parent
        target = trial_dir / FINAL_FILE
        if target.is_file() and json.loads(target.read_text())["episodes"] == episodes:
            continue
        found = final_checkpoint(trial_dir)
        if found is None or found[1] < env_steps:
            continue  # unfinished: its last checkpoint is short of the budget
        checkpoint, steps = found
        returns = mean_action_returns(checkpoint, env, episodes, seed=seed)
        target.write_text(json.dumps({"checkpoint": checkpoint.name, "env_steps": steps, "episodes": episodes,
                                      "seed": seed, "returns": returns}, indent=1))
        print(f"final evaluation {trial_dir.name[:60]}: {np.mean(returns):.1f} over {episodes} episodes "
              f"at {steps} env steps", flush=True)
        done += 1
    return done


def eval_points(trial: dict) -> tuple[np.ndarray, np.ndarray]:
    points = [(r["env_steps"], r["eval_return"]) for r in trial["rows"]
              if r["eval_return"] is not None and r["env_steps"] is not None]
    if not points:
        return np.zeros(0), np.zeros(0)
    steps, returns = map(np.asarray, zip(*points, strict=True))
    return steps, returns


def curve_at(trial: dict, grid: np.ndarray) -> np.ndarray | None:
    """The trial's evaluation curve at `grid` env steps (linear between evaluations, flat beyond); None
    without evaluations."""
    steps, returns = eval_points(trial)
    return np.interp(grid, steps, returns) if len(steps) else None


def summarize(trials: list[dict], *, env_steps: int, eval_every: int, fixed_steps: list[int]) -> list[dict]:
    """One row per method: seeds, evaluation return at the fixed env steps (mean and std over seeds), AUC,
    final wall time, imagined transitions, and the last world-model quality measurement (mean over seeds)."""
    grid = np.linspace(eval_every, env_steps, 100)
    by_method: dict[str, list[dict]] = {}
    for trial in trials:
        by_method.setdefault(trial["method"], []).append(trial)
    # each trial's final checkpoint: its mean over the episodes, one value per seed
    finals = {m: [float(np.mean(t["final"]["returns"])) for t in group if t.get("final")]
              for m, group in by_method.items()}
    rows = []
    for method in sorted(by_method, key=_method_order):
        group = [t for t in by_method[method] if curve_at(t, grid) is not None]
        row = {"method": method, "seeds": len(group),
               "reached": sum(1 for t in group if (t["rows"][-1]["env_steps"] or 0) >= env_steps)}
        for x in fixed_steps:
            values = [float(curve_at(t, np.asarray([x]))[0]) for t in group
                      if eval_points(t)[0].size and eval_points(t)[0][-1] >= x - eval_every]
            row[f"return@{x}"] = (float(np.mean(values)), float(np.std(values))) if values else None
        mine = finals[method]
        row["final"] = (float(np.mean(mine)), float(np.std(mine))) if mine else None
        row["final_seeds"] = len(mine)
        aucs = [float(curve_at(t, grid).mean()) for t in group]
        row["auc"] = (float(np.mean(aucs)), float(np.std(aucs))) if aucs else None
        row["best"] = float(np.mean([eval_points(t)[1].max() for t in group])) if group else None
        for name in ("wall_s", "imagined_transitions"):
            values = [t["rows"][-1][name] for t in group if t["rows"][-1][name] is not None]
            row[name] = float(np.mean(values)) if values else None
        for name in ("open_loop_mse_guided", "open_loop_mse_unguided", "action_z_mean_guided",
                     "action_z_std_guided"):
            values = [_last(t, name) for t in group]
            values = [v for v in values if v is not None]
            row[name] = float(np.mean(values)) if values else None
        for name in ("advantage_gain", "advantage_gain_sigma", "quality_gain_sigma", "real_gain_sigma"):
            gains = [r.get(name) for t in group for r in t["rows"] if r.get(name) is not None]
            gains = [g for g in gains if math.isfinite(g)]
            row[name] = float(np.mean(gains)) if gains else None
        row["guide"] = group[0]["guide"] if group and group[0]["model_based"] else "model-free"
        row["temperature"] = group[0]["temperature"] if group and group[0]["model_based"] else None
        rows.append(row)
    for row in rows:  # does the method's final return beat model-free PPO's? (seeds as the unit)
        mine, ppo = finals[row["method"]], finals.get("ppo", [])
        row["final_p_above_ppo"] = (permutation_p(mine, ppo) if row["method"] != "ppo" and len(mine) >= 2
                                    and len(ppo) >= 2 else None)
    return rows


def permutation_p(a, b, *, samples: int = 100_000, seed: int = 0) -> float:
    """One-sided permutation test: the share of relabellings of a + b into groups of len(a) and len(b) whose
    mean difference is at least the observed mean(a) - mean(b). Exact (every relabelling) up to `samples`
    relabellings, else `samples` random ones (seeded)."""
    import itertools

    pool = np.asarray(list(a) + list(b), dtype=float)
    n, total = len(a), pool.sum()
    observed = np.mean(a) - np.mean(b)
    tolerance = 1e-9 * max(1.0, float(np.abs(pool).max()))

    def difference(first_sum):
        return first_sum / n - (total - first_sum) / (len(pool) - n)

    if math.comb(len(pool), n) <= samples:
        sums = [pool[list(c)].sum() for c in itertools.combinations(range(len(pool)), n)]
    else:
        rng = np.random.default_rng(seed)
        sums = [pool[rng.permutation(len(pool))[:n]].sum() for _ in range(samples)]
    return float(np.mean([difference(x) >= observed - tolerance for x in sums]))


def _last(trial: dict, name: str):
    """The trial's last measured value of `name` (None, or an empty by-step list, is not measured)."""
    def measured(value) -> bool:
        return value is not None and (not isinstance(value, list) or any(v is not None for v in value))

    values = [r[name] for r in trial["rows"] if measured(r.get(name))]
    return values[-1] if values else None


def _method_order(method: str):
    base = method.partition("@")[0]
    return (list(METHODS).index(base) if base in METHODS else len(METHODS), method)


# -- writing ---------------------------------------------------------------------------------------------------
def write_curves(trials: list[dict], path: Path) -> int:
    """Every evaluated iteration of every trial (and the quality measurements), one CSV row each."""
    horizon = max((len(r.get("open_loop_mse_guided_by_step") or []) for t in trials for r in t["rows"]), default=0)
    step_columns = [f"{kind}_h{h}" for kind in ("open_loop_guided", "open_loop_unguided")
                    for h in range(1, horizon + 1)]
    count = 0
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([*CURVE_COLUMNS, *step_columns])
        for trial in sorted(trials, key=lambda t: (_method_order(t["method"]), t["seed"], t["experiment"])):
            for row in trial["rows"]:
                if row["eval_return"] is None and row["open_loop_mse_guided"] is None:
                    continue
                by_step = []
                for key in ("open_loop_mse_guided_by_step", "open_loop_mse_unguided_by_step"):
                    values = list(row.get(key) or [])
                    by_step += values + [None] * (horizon - len(values))
                values = {"experiment": trial["experiment"], "method": trial["method"], "seed": trial["seed"], **row}
                writer.writerow([_csv(values.get(c)) for c in CURVE_COLUMNS] + [_csv(v) for v in by_step])
                count += 1
    return count


def write_finals(trials: list[dict], path: Path) -> int:
    """One row per trial with a final evaluation: its checkpoint's env steps, episodes, mean and returns."""
    rows = [t for t in sorted(trials, key=lambda t: (_method_order(t["method"]), t["seed"], t["experiment"]))
            if t.get("final")]
    if not rows:
        path.unlink(missing_ok=True)
        return 0
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["experiment", "method", "seed", "env_steps", "episodes", "mean_return", "returns"])
        for t in rows:
            final = t["final"]
            writer.writerow([t["experiment"], t["method"], t["seed"], final["env_steps"], final["episodes"],
                             f"{np.mean(final['returns']):.6g}", " ".join(f"{r:.6g}" for r in final["returns"])])
    return len(rows)


def _csv(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _pm(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return f"{value[0]:.1f} ± {value[1]:.1f}"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def format_table(rows: list[dict], fixed_steps: list[int]) -> str:
    finals = any(row.get("final") for row in rows)
    head = (["method", "seeds"] + [f"return @ {x}" for x in fixed_steps]
            + (["final checkpoint", "p (final > ppo)"] if finals else [])
            + ["AUC", "best", "wall s", "imagined", "open-loop MSE guided / unguided", "action z mean / std"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        seeds = f"{row['seeds']}" + ("" if row["reached"] == row["seeds"] else f" ({row['reached']} done)")
        quality = (f"{_pm(row['open_loop_mse_guided'])} / {_pm(row['open_loop_mse_unguided'])}"
                   if row["open_loop_mse_guided"] is not None else "-")
        z = (f"{_pm(row['action_z_mean_guided'])} / {_pm(row['action_z_std_guided'])}"
             if row["action_z_mean_guided"] is not None else "-")
        p_value = row.get("final_p_above_ppo")
        final = ([_pm(row["final"]) + ("" if row["final_seeds"] in (0, row["seeds"]) else f" ({row['final_seeds']})"),
                  "-" if p_value is None else f"{p_value:.2f}"] if finals else [])
        cells = ([row["method"], seeds] + [_pm(row[f"return@{x}"]) for x in fixed_steps] + final
                 + [_pm(row["auc"]), _pm(row["best"]), _pm(row["wall_s"]),
                    _pm(row["imagined_transitions"]), quality, z])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_gain_table(rows: list[dict]) -> str:
    """Advantage gain (guided minus unguided n-step advantage, mean over the run) by guide and temperature."""
    guided = [r for r in rows if r["guide"] not in ("model-free", "none") and r["advantage_gain"] is not None]
    lines = ["| method | guide | temperature | advantage gain | gain (sd) | imagined / real gain (sd), quality | "
             "open-loop MSE guided / unguided |", "|---|---|---|---|---|---|---|"]
    for row in sorted(guided, key=lambda r: (r["guide"], r["method"].partition("@")[0], r["temperature"] or 0)):
        lines.append(f"| {row['method']} | {row['guide']} | {_pm(row['temperature'])} | {row['advantage_gain']:.4g} | "
                     f"{_pm(row.get('advantage_gain_sigma'))} | {_pm(row.get('quality_gain_sigma'))} / "
                     f"{_pm(row.get('real_gain_sigma'))} | "
                     f"{_pm(row['open_loop_mse_guided'])} / {_pm(row['open_loop_mse_unguided'])} |")
    return "\n".join(lines)


def plot_curves(trials: list[dict], path: Path, *, env_steps: int, eval_every: int, title: str) -> None:
    """Evaluation return against env steps: per method the mean over seeds and a min-max band; seeds faint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(eval_every, env_steps, 100)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_method: dict[str, list[dict]] = {}
    for trial in trials:
        by_method.setdefault(trial["method"], []).append(trial)
    for method in sorted(by_method, key=_method_order):
        curves = [c for c in (curve_at(t, grid) for t in by_method[method]) if c is not None]
        if not curves:
            continue
        stack = np.stack(curves)
        line, = ax.plot(grid, stack.mean(axis=0), label=f"{method} ({len(curves)})")
        ax.fill_between(grid, stack.min(axis=0), stack.max(axis=0), color=line.get_color(), alpha=0.15)
        for trial in by_method[method]:
            steps, returns = eval_points(trial)
            ax.plot(steps, returns, color=line.get_color(), alpha=0.35, lw=0.8, marker=".", ms=3)
    ax.set_xlabel("real env steps")
    ax.set_ylabel("evaluation return (mean action)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_quality(trials: list[dict], path: Path, title: str) -> None:
    """Left: open-loop MSE by imagined step, guided (solid) and unguided (dashed), last measurement of each
    trial averaged over seeds. Right: guided action z std over env steps (ideal 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    by_method: dict[str, list[dict]] = {}
    for trial in trials:
        if trial["model_based"]:
            by_method.setdefault(trial["method"], []).append(trial)
    for method in sorted(by_method, key=_method_order):
        color = None
        for key, style in (("open_loop_mse_guided_by_step", "-"), ("open_loop_mse_unguided_by_step", "--")):
            last = [_last(t, key) for t in by_method[method]]
            last = [np.asarray([np.nan if x is None else x for x in v], dtype=float) for v in last if v]
            if not last:
                continue
            width = min(len(v) for v in last)
            mean = np.nanmean(np.stack([v[:width] for v in last]), axis=0)
            line, = left.plot(np.arange(1, width + 1), mean, style, color=color,
                              label=f"{method} {'guided' if style == '-' else 'unguided'}")
            color = line.get_color()
        for trial in by_method[method]:
            points = [(r["env_steps"], r["action_z_std_guided"]) for r in trial["rows"]
                      if r["action_z_std_guided"] is not None]
            if points:
                right.plot(*zip(*points, strict=True), color=color, alpha=0.6, marker=".",
                           label=method if trial is by_method[method][0] else None)
    left.set_yscale("log")
    left.set_xlabel("imagined step h")
    left.set_ylabel("open-loop state MSE vs MuJoCo")
    left.set_title("open-loop error (last measurement)")
    right.axhline(1.0, color="k", lw=0.8, ls=":")
    right.set_xlabel("real env steps")
    right.set_ylabel("action z std (guided)")
    right.set_title("on-policy-ness of imagined actions")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(root: Path, *, env: str, env_steps: int, eval_every: int, fixed_steps: list[int],
           by_experiment: bool = False) -> dict:
    """Rebuild curves.csv, summary.md, curves.png, quality.png and sample_efficiency.json under root
    (`by_experiment`: a row per experiment and method, for comparing settings of one method)."""
    trials = read_trials(root)
    if by_experiment:
        for trial in trials:
            trial["method"] = f"{trial['experiment']}:{trial['method']}"
    if not trials:
        raise ValueError(f"no trials with results under {root / 'tune'}; run without --report-only first")
    rows = summarize(trials, env_steps=env_steps, eval_every=eval_every, fixed_steps=fixed_steps)
    count = write_curves(trials, root / "curves.csv")
    finals = write_finals(trials, root / "final_evaluations.csv")
    title = f"{env}: evaluation return (mean action; mean, min-max over seeds)"
    plot_curves(trials, root / "curves.png", env_steps=env_steps, eval_every=eval_every, title=title)
    plot_quality(trials, root / "quality.png", title=f"{env}: world-model quality (ALGORITHM.md 7)")
    table = format_table(rows, fixed_steps)
    gains = format_gain_table(rows)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    (root / "summary.md").write_text(
        f"# Sample efficiency: {env}, {env_steps} env steps\n\n"
        f"Machine: {machine}. Experiments: {', '.join(sorted({t['experiment'] for t in trials}))}.\n\n"
        f"{table}\n\nReturn at x: the evaluation curve (mean action) interpolated at x env steps, mean ± std over "
        f"seeds; final checkpoint: each trial's checkpoint at the budget run for {_final_episodes(trials)} "
        f"episodes (mean action, `--final-episodes`; in brackets the seeds it has where fewer), mean ± std over "
        f"seeds; p (final > ppo): one-sided permutation test of the method's final returns (one per seed) against "
        f"model-free PPO's; AUC: its mean over [{eval_every}, {env_steps}]; "
        f"best: the best evaluation, mean over seeds; "
        f"open-loop MSE: mean over imagined steps 1..H-1 at the last measurement.\n\n"
        f"## Advantage gain by guide and temperature\n\n{gains}\n")
    result = {"env": env, "env_steps": env_steps, "eval_every": eval_every, "fixed_steps": fixed_steps,
              "machine": machine, "rows": rows, "curve_rows": count, "written_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    (root / "sample_efficiency.json").write_text(json.dumps(result, indent=1, default=list))
    print(table)
    print()
    print(gains)
    print(f"\n{count} curve rows from {len(trials)} trials ({finals} with a final evaluation) -> {root}/"
          f"{{curves.csv, final_evaluations.csv, summary.md, curves.png, quality.png, sample_efficiency.json}}",
          flush=True)
    return result


def _final_episodes(trials: list[dict]) -> str:
    counts = sorted({t["final"]["episodes"] for t in trials if t.get("final")})
    return "/".join(map(str, counts)) if counts else "no"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--env", default="InvertedPendulum-v5", help="MuJoCo task id")
    parser.add_argument("--env-steps", type=int, default=20_000, help="real env steps per trial")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one trial per method and seed")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help=f"{', '.join(METHODS)}, or KIND@T (sag@0.3) for another temperature")
    parser.add_argument("--preset", default="cpu", help="sizes: cpu or paper (agd_ray.cli.PRESET_SETTINGS)")
    parser.add_argument("--eval-every", type=int, default=2500, help="env steps between evaluations "
                        "(rounded to whole iterations of the preset's batch)")
    parser.add_argument("--eval-episodes", type=int, default=None, help="episodes per evaluation (None: the preset's)")
    parser.add_argument("--fixed-steps", type=int, nargs="+", default=None,
                        help="env steps of the table's columns "
                             "(None: a quarter, half, three quarters and all of --env-steps)")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="dotted keys for every trial, e.g. guidance.grad_wrt=xt imagination.batch_size=512")
    parser.add_argument("--checkpoint-every", type=int, default=10, help="iterations between checkpoints")
    parser.add_argument("--concurrent", type=int, default=1, help="trials at once (0: as many as Ray fits)")
    parser.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of the embedded Ray")
    parser.add_argument("--name", default=None, help="Tune experiment name (default: from the arguments)")
    parser.add_argument("--output", default="bench/out/sample_efficiency", help="results go in OUTPUT/ENV/")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted experiment")
    parser.add_argument("--report-only", action="store_true", help="rebuild the files from the results on disk")
    parser.add_argument("--final-episodes", type=int, default=10,
                        help="run each finished trial's checkpoint at --env-steps for this many episodes (mean "
                             "action) for the table's 'final checkpoint' column (0: skip)")
    parser.add_argument("--by-experiment", action="store_true",
                        help="a table row per experiment and method (settings compared under one method name)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    fixed = args.fixed_steps or [round(args.env_steps * q) for q in (0.25, 0.5, 0.75, 1.0)]
    root = Path(args.output).resolve() / args.env
    try:
        if args.final_episodes < 0:
            raise ValueError(f"final-episodes={args.final_episodes} is not allowed; it must be >= 0")
        if not args.report_only:
            from agd_ray.sweep import run_sweep

            spec = build_spec(args)
            root.mkdir(parents=True, exist_ok=True)
            print(f"sample efficiency on {args.env}: {len(spec.trials())} trials ({', '.join(args.methods)} x seeds "
                  f"{args.seeds}), {args.env_steps} env steps each, experiment {spec.name}", flush=True)
            run_sweep(spec, output=root / "tune", resume=args.resume, num_cpus=args.num_cpus, verbose=1)
        if args.final_episodes and (root / "tune").is_dir():
            evaluate_finals(root, env=args.env, env_steps=args.env_steps, episodes=args.final_episodes)
        report(root, env=args.env, env_steps=args.env_steps, eval_every=args.eval_every, fixed_steps=fixed,
               by_experiment=args.by_experiment)
    except ValueError as error:
        print(f"sample_efficiency: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
