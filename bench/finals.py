"""Final returns across sample-efficiency experiments: one value per (method, seed) from any number of
`final_evaluations.csv` files (the harness writes one per report; PATH:METHOD,... takes only those methods from
a file, for files whose other rows ran other code under the same names), the table with one-sided permutation p-values
of each method against the others, and a strip plot of every seed (a bench report, not a test).

A (method, seed) found in several files keeps the first file's value (list the files newest first to prefer
re-runs). `--rename OLD=NEW` merges a method's rows under another name (e.g. a method measured under two names).

    python bench/finals.py docs/results/sample_efficiency/*/final_evaluations.csv --methods ppo polygrad eag \\
        --against polygrad ppo --out docs/results/sample_efficiency/finals
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def read_finals(paths, rename: dict, skip=()) -> dict:
    """{method: {seed: (mean return, experiment)}} from final_evaluations.csv files, first file first; rows of
    experiments whose name contains one of `skip` are left out."""
    finals: dict = {}
    for spec in paths:
        path, _, only = spec.partition(":")
        methods = set(only.split(",")) if only else None
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if any(part in row["experiment"] for part in skip) or (methods and row["method"] not in methods):
                    continue
                method = rename.get(row["method"], row["method"])
                seed = int(row["seed"])
                finals.setdefault(method, {}).setdefault(seed, (float(row["mean_return"]), row["experiment"]))
    return finals


def main(argv=None) -> int:
    from sample_efficiency import permutation_p

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", nargs="+", help="final_evaluations.csv files, each as PATH or PATH:METHOD,METHOD "
                                               "(only those methods' rows from that file)")
    parser.add_argument("--methods", nargs="+", default=None, help="methods to show, in order (default: all)")
    parser.add_argument("--against", nargs="*", default=["ppo"], help="p-value columns: each method above these")
    parser.add_argument("--rename", nargs="*", default=[], help="OLD=NEW method names")
    parser.add_argument("--skip", nargs="*", default=[], help="leave out experiments whose name contains these")
    parser.add_argument("--title", default="final returns")
    parser.add_argument("--out", default="bench/out/finals", help="writes OUT.json, OUT.md and OUT.png")
    args = parser.parse_args(argv)
    rename = dict(item.split("=", 1) for item in args.rename)
    finals = read_finals(args.csv, rename, args.skip)
    methods = args.methods or sorted(finals)
    missing = [m for m in methods if m not in finals]
    if missing:
        print(f"finals: error: no rows for {', '.join(missing)}; found {', '.join(sorted(finals))}", file=sys.stderr)
        return 2
    values = {m: [finals[m][s][0] for s in sorted(finals[m])] for m in methods}
    header = ["method", "seeds", "mean ± std", "median", "per seed"] + [f"p (above {a})" for a in args.against]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = []
    for m in methods:
        v = values[m]
        p = {a: (permutation_p(v, values[a]) if a != m and a in values and len(v) > 1 else None) for a in args.against}
        std = statistics.pstdev(v) if len(v) > 1 else 0.0
        rows.append(dict(method=m, seeds=sorted(finals[m]), returns=v, mean=statistics.mean(v), std=std,
                         median=statistics.median(v), p=p, experiments=sorted({e for _, e in finals[m].values()})))
        cells = [m, str(len(v)), f"{statistics.mean(v):.1f} ± {std:.1f}", f"{statistics.median(v):.0f}",
                 ", ".join(f"{x:.0f}" for x in v)] + ["" if p[a] is None else f"{p[a]:.3f}" for a in args.against]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table + "\n")
    out.with_suffix(".json").write_text(json.dumps(dict(files=[str(p) for p in args.csv], rows=rows), indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(methods), 4))
    for i, m in enumerate(methods):
        v = values[m]
        jitter = [i + 0.12 * ((k % 5) - 2) / 2 for k in range(len(v))]
        ax.scatter(jitter, v, s=22, alpha=0.75)
        ax.hlines(statistics.mean(v), i - 0.3, i + 0.3, color="black", linewidth=2)
        ax.hlines(statistics.median(v), i - 0.3, i + 0.3, color="gray", linewidth=1, linestyles="dashed")
    ax.set_xticks(range(len(methods)), [f"{m}\n({len(values[m])} seeds)" for m in methods])
    ax.set_ylabel("final return (10 episodes, mean action)")
    ax.set_title(f"{args.title}: one dot per seed; mean (black), median (dashed)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    plt.close(fig)
    print(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.json')}, {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
