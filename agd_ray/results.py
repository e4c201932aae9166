"""A run's results: the row of each iteration (metrics.csv, the iteration line), the learning curve, the iteration
line's pieces, and what a resumed run drops of the rows and TensorBoard points logged after its checkpoint."""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib

ROW_KEYS = {
    "iteration": ("training_iteration",),
    "env_steps": ("agd", "env_steps_lifetime"),
    "episode_return_mean": ("env_runners", "episode_return_mean"),
    "eval_return_mean": ("evaluation", "env_runners", "episode_return_mean"),
    "world_model_loss": ("world_model", "loss"),
    "world_model_updates": ("world_model", "num_updates"),
    "imagined_transitions": ("imagination", "num_transitions_lifetime"),
    "imagination_transitions_per_s": ("imagination", "transitions_per_s"),
    "action_z_std": ("imagination", "action_z_std"),
    "advantage_gain": ("guidance", "advantage_gain"),
    "advantage_gain_sigma": ("guidance", "advantage_gain_sigma"),
    "quality_advantage_gain_sigma": ("quality", "advantage_gain_sigma"),
    "quality_real_advantage_gain_sigma": ("quality", "real_advantage_gain_sigma"),
    "open_loop_mse_guided": ("quality", "open_loop_mse_guided"),
    "open_loop_mse_unguided": ("quality", "open_loop_mse_unguided"),
    "replay_size": ("replay", "size"),
    "time_this_iter_s": ("time_this_iter_s",),
}


def lookup(result: dict, path: tuple):
    value = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None  # RLlib reports nan for "not measured this iteration"


def result_row(result: dict) -> dict:
    row = {name: lookup(result, path) for name, path in ROW_KEYS.items()}
    # RLlib carries the last evaluation forward in every result: keep it only where it was measured
    # (`agd/evaluated`, AGD.step; results written before it existed: RLlib's every-`evaluation_interval` rule).
    evaluated = lookup(result, ("agd", "evaluated"))
    if evaluated is None:
        interval = lookup(result, ("config", "evaluation_interval"))
        iteration = lookup(result, ("training_iteration",))
        evaluated = bool(interval) and iteration is not None and not iteration % interval
    if not evaluated:
        row["eval_return_mean"] = None
    if row["env_steps"] is None:
        row["env_steps"] = lookup(result, ("env_runners", "num_env_steps_sampled_lifetime"))
    return row


def flat_scalars(result: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_scalars(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
        elif hasattr(value, "item") and getattr(value, "size", 2) == 1:
            flat[name] = float(value.item())
    return {k: v for k, v in flat.items() if math.isfinite(v)}


def plot_learning_curve(rows: list[dict], path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("episode_return_mean", "training episodes"), ("eval_return_mean", "evaluation (mean action)")):
        points = [(r["env_steps"], r[key]) for r in rows if r.get(key) is not None and r.get("env_steps") is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o" if key.startswith("eval") else None, label=label)
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def duration(seconds: float) -> str:
    """3m10s, 1h05m, 42s."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def progress_text(step: int, budget: int, wall_s: float) -> str:
    """'/30000 (42%) eta 3m10s' after the env-step count: the budget's share reached, and the time left at the
    run's mean rate so far (wall time over env steps, both counted across --resume)."""
    share = min(100, int(100 * step / budget))
    if step >= budget:
        eta = "0s"
    elif step > 0 and wall_s > 0:
        eta = duration(wall_s / step * (budget - step))
    else:
        eta = "-"
    return f"/{budget} ({share}%) eta {eta}"


def idle_iteration_text(previous: dict | None, row: dict, result: dict, previous_result: dict | None) -> str | None:
    """One line when an iteration added no real env steps (its row's env_steps equal the previous row's), with
    the reason where the result tells it; None otherwise."""
    if previous is None or previous.get("env_steps") is None or row.get("env_steps") != previous["env_steps"]:
        return None
    reasons = []
    counters = result.get("agd", {}) if isinstance(result.get("agd"), dict) else {}
    earlier = (previous_result or {}).get("agd", {})
    reconnects = lookup(counters, ("env_runner_reconnects",))
    before = lookup(earlier, ("env_runner_reconnects",)) if isinstance(earlier, dict) else None
    if reconnects is not None and before is not None and reconnects > before:
        reasons.append(f"{int(reconnects - before)} env runner(s) died and restarted (agd/env_runner_reconnects); "
                       f"RLlib restarts them and the next iteration samples again")
    why = "; ".join(reasons) if reasons else "no reason reported (see the env runners' logs under Ray's session dir)"
    return f"  iteration {int(row.get('iteration') or 0)} took no real env steps: {why}"


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def guide_method_text(guide) -> str:
    """' (resample, K=4)' or ' (gradient)' for an advantage guide (the run's GuideConfig); '' otherwise."""
    if guide.kind not in ("sag", "eag"):
        return ""
    return f" ({guide.method}, K={guide.candidates})" if guide.resampling else f" ({guide.method})"


def gain_text(row: dict) -> str:
    """The guide's effect for the iteration line, in standard deviations of the unguided windows' advantage:
    this batch's (resampling) or the quality measurement's, with the simulator's where it was measured."""
    imagined = row["advantage_gain_sigma"]
    if imagined is None:
        imagined = row["quality_advantage_gain_sigma"]
    if imagined is None:
        return ""
    real = row["quality_real_advantage_gain_sigma"]
    return f"gain {imagined:+.2f}sd{'' if real is None else f' (sim {real:+.2f}sd)'}  "


def read_rows(path: pathlib.Path) -> list[dict]:
    """metrics.csv rows of an earlier (resumed) run, for the learning curve."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            try:
                rows.append({k: (float(v) if v not in ("", None) else None) for k, v in r.items() if k in ROW_KEYS
                             or k == "wall_s"})
            except (TypeError, ValueError):
                pass  # a row cut short by the kill
    return rows


def truncate_metrics(output: pathlib.Path, iteration: int) -> list[dict]:
    """A resumed run redoes the iterations after its checkpoint: their rows (logged before the driver died,
    after the last save) are dropped from metrics.jsonl and metrics.csv; returns the csv rows kept."""
    jsonl = output / "metrics.jsonl"
    if jsonl.is_file():
        lines = [line for line in jsonl.read_text().splitlines() if line.strip()]
        kept = []
        for line in lines:
            try:
                if json.loads(line).get("training_iteration", 0) <= iteration:
                    kept.append(line)
            except ValueError:
                pass  # a line cut short by the kill
        tmp = jsonl.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, jsonl)
    rows = [r for r in read_rows(output / "metrics.csv") if (r.get("iteration") or 0) <= iteration]
    tmp = output / "metrics.csv.tmp"
    with open(tmp, "w", newline="") as f:
        table = csv.DictWriter(f, fieldnames=list(ROW_KEYS) + ["wall_s"], extrasaction="ignore")
        table.writeheader()
        table.writerows(rows)
    os.replace(tmp, output / "metrics.csv")
    return rows


def truncate_tensorboard(directory: pathlib.Path, env_steps: int) -> int:
    """A resumed run redoes the iterations after its checkpoint: the scalars they logged before the driver died
    (steps past the checkpoint's `env_steps`) are dropped from tb/'s event files, so that no tag has two points
    at one step; a record cut short by the kill ends its file. Returns the number of events dropped."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    dropped = 0
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        kept, offset = [], 0
        while offset + 12 <= len(data):  # a record: length (8 bytes), its crc (4), the event, the event's crc (4)
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            end = offset + 12 + length + 4
            if end > len(data):
                break
            event = Event()
            try:
                event.ParseFromString(data[offset + 12:offset + 12 + length])
            except Exception:  # noqa: BLE001 - protobuf's DecodeError: a damaged record ends the file
                break
            if event.HasField("summary") and event.step > env_steps:
                dropped += 1
            else:
                kept.append(data[offset:end])
            offset = end
        if offset != len(data) or len(b"".join(kept)) != len(data):
            tmp = directory / ".truncating"  # no "tfevents" in the name: TensorBoard never reads it
            tmp.write_bytes(b"".join(kept))
            os.replace(tmp, path)
    return dropped
