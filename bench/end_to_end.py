"""End to end, side by side: env steps per wall-minute of whole `agd-ray train` runs at an earlier commit and at
this tree (a bench, not a test).

Each commit named by `--baseline` is checked out once as a `git worktree` under OUT/trees/ and run with this
venv's Python (its PYTHONPATH pointing at the worktree, so that it runs its own code); this tree runs as it is.
The runs alternate (baseline, this tree, baseline, ...) so that a noisy neighbour on a shared machine hits
both alike. Two workloads, as the speed issue names them:

- `halfcheetah`: AGD-SAG on HalfCheetah-v5 at `tune_configs/halfcheetah_cpu.yaml`'s settings (cpu preset, 2
  world-model updates per env step, `reparam`, clean action input, 5-step windows, 512 windows per update),
  with the gradient guide both sides (the only SAG the baseline has; this tree's default is resampling);
- `make-run`: `make run`'s settings on InvertedPendulum-v5 (causal sampler, the task's termination rule, 2
  updates per env step, gradient SAG).

Each run's env steps per minute is its env steps over the process's wall time (Ray's start included) and over
the run's own `wall_s` (from its metrics.csv). Returns at these short budgets say nothing about learning: the
learning comparisons are the sample-efficiency tables of docs/RESULTS.md.

    OMP_NUM_THREADS=1 python bench/end_to_end.py --baseline c6e0744 --env-steps 5000 [--variant few-steps]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HALFCHEETAH = ["--env", "HalfCheetah-v5", "--guide", "sag", "--temperature", "1.0", "--preset", "cpu",
               "--config", "world_model.updates_per_env_step=2.0", "world_model.policy_guidance=reparam",
               "world_model.action_input=clean", "world_model.horizon=5", "imagination.batch_size=512"]
MAKE_RUN = ["--env", "InvertedPendulum-v5", "--guide", "sag", "--temperature", "1.0", "--preset", "cpu",
            "--config", "world_model.policy_guidance=causal", "imagination.termination=env",
            "world_model.updates_per_env_step=2"]
WORKLOADS = {"halfcheetah": HALFCHEETAH, "make-run": MAKE_RUN}
# What this tree adds to a workload to run the same method as the baseline (guidance.method arrived later),
# and the variants it can also run (`--variant`).
SAME_METHOD = ["guidance.method=gradient"]
# few-steps: the fewest reverse steps measured within the full chain's open-loop error on each workload's rule
# (docs/RESULTS.md: K = 6 with `reparam` on HalfCheetah, K = 8 with `causal` on InvertedPendulum).
VARIANTS = {"few-steps": {"halfcheetah": ["world_model.sampling_steps=6"],
                          "make-run": ["world_model.sampling_steps=8"]}}


def _worktree(commit: str, trees: Path) -> Path:
    path = trees / commit
    if not path.exists():
        trees.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit], check=True,
                       stdout=subprocess.DEVNULL)
    return path


def _run(tree: Path, args: list[str], output: Path, env_steps: int, seed: int) -> dict:
    """One `agd-ray train` run from `tree`; its env steps per minute (process and run wall time)."""
    command = [sys.executable, "-m", "agd_ray.cli", "train", *args[:args.index("--config")], "--env-steps",
               str(env_steps), "--seed", str(seed), "--output", str(output), *args[args.index("--config"):]]
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    process_s = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}:\n{proc.stdout[-3000:]}")
    rows = list(csv.DictReader((output / "metrics.csv").open()))
    steps, wall = float(rows[-1]["env_steps"]), float(rows[-1]["wall_s"])
    return {"env_steps": steps, "process_s": process_s, "run_wall_s": wall,
            "steps_per_min_process": 60 * steps / process_s, "steps_per_min_run": 60 * steps / wall,
            "command": command}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="c6e0744", help="the earlier commit to compare with")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--variant", nargs="*", default=[], choices=list(VARIANTS),
                        help="also run this tree with these settings added (few-steps: 6 reverse steps on "
                             "HalfCheetah, 8 with the causal rule on InvertedPendulum)")
    parser.add_argument("--env-steps", type=int, default=5000, help="env steps per run")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/out/end_to_end", help="worktrees, run folders and JSON go here")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    baseline_tree = _worktree(args.baseline, out / "trees")
    sides = [(args.baseline, baseline_tree, {})] + [("this tree", ROOT, {})] + \
        [(f"this tree +{v}", ROOT, VARIANTS[v]) for v in args.variant]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    results = []
    for workload in args.workloads:
        for repeat in range(args.repeats):
            for label, tree, extra in sides:
                run_dir = out / "runs" / f"{workload}-{label.replace(' ', '_').replace('+', '')}-{repeat}"
                shutil.rmtree(run_dir, ignore_errors=True)
                added = [] if tree is baseline_tree else SAME_METHOD + extra.get(workload, [])
                row = _run(tree, WORKLOADS[workload] + added, run_dir, args.env_steps, args.seed)
                row.update(workload=workload, side=label, repeat=repeat)
                results.append(row)
                print(f"{workload:<12} {label:<18} {row['env_steps']:>6.0f} steps  process {row['process_s']:>6.0f} s "
                      f"run {row['run_wall_s']:>6.0f} s  {row['steps_per_min_run']:>6.0f} steps/min", flush=True)
    print()
    header = f"{'workload':<12} {'side':<18} {'steps/min (run)':>16} {'x baseline':>11} {'steps/min (process)':>20}"
    print(f"{args.env_steps} env steps per run, seed {args.seed}, {args.repeats} run(s) per side (median); "
          f"baseline {args.baseline}, this tree {head}; {platform.machine()}, {os.cpu_count()} CPUs")
    print(header)
    print("-" * len(header))
    table = []
    for workload in args.workloads:
        base = None
        for label, _, _ in sides:
            rows = [r for r in results if r["workload"] == workload and r["side"] == label]
            run_rate = statistics.median(r["steps_per_min_run"] for r in rows)
            process_rate = statistics.median(r["steps_per_min_process"] for r in rows)
            base = base or run_rate
            table.append(dict(workload=workload, side=label, steps_per_min_run=run_rate,
                              steps_per_min_process=process_rate, ratio=run_rate / base))
            print(f"{workload:<12} {label:<18} {run_rate:>16.0f} {run_rate / base:>10.2f}x {process_rate:>20.0f}")
    (out / "end_to_end.json").write_text(json.dumps(dict(baseline=args.baseline, head=head,
                                                         machine=platform.machine(), cpus=os.cpu_count(),
                                                         env_steps=args.env_steps, table=table, runs=results),
                                                    indent=2))
    print(f"wrote {out / 'end_to_end.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
