"""The run directory of `agd-ray train` (--output): what marks a run, the checkpoint protocol (written to
checkpoint.tmp, marked complete, swapped in; a disk error keeps the last complete one) and the checks on a
checkpoint before Ray starts."""

from __future__ import annotations

import json
import os
import pathlib

from agd_ray.errors import UsageError, first_line, os_error, os_error_text

CHECKPOINT_MARKER = "agd-ray-checkpoint.json"  # written last: a checkpoint without it is incomplete


def checkpoint_path(directory: pathlib.Path) -> pathlib.Path:
    """DIR/checkpoint if it is complete (else the previous one, DIR/checkpoint.old, if a save was killed
    between its renames); raises UsageError naming the path otherwise."""
    for candidate in (directory / "checkpoint", directory / "checkpoint.old"):
        marker = candidate / CHECKPOINT_MARKER
        if not candidate.exists() and candidate.name == "checkpoint" and (directory / "checkpoint.old").exists():
            continue
        if not candidate.is_dir():
            raise UsageError(f"no checkpoint at {candidate}; nothing to resume from")
        try:
            json.loads(marker.read_text())["env_steps"]
            json.loads((candidate / "agd" / "counters.json").read_text())["env_steps"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UsageError(f"checkpoint {candidate} is incomplete or corrupt (no valid {CHECKPOINT_MARKER} or "
                             f"agd/counters.json); cannot resume") from None
        if not (candidate / MODULE_SUBDIR).is_dir():
            raise UsageError(f"checkpoint {candidate} is incomplete or corrupt (no {MODULE_SUBDIR}); cannot resume")
        from agd_ray.algorithm import check_checkpoint_format

        try:
            check_checkpoint_format(candidate)
        except ValueError as error:
            raise UsageError(f"{error}; cannot resume") from None
        return candidate
    raise UsageError(f"no checkpoint at {directory / 'checkpoint'}; nothing to resume from")


def save_checkpoint(algo, output: pathlib.Path, row: dict) -> pathlib.Path:
    """Save to OUTPUT/checkpoint.tmp, mark it complete, then swap it in (the previous one is checkpoint.old
    until the swap is done): a driver killed mid-save leaves a complete checkpoint to resume from."""
    import shutil

    final, tmp, old = output / "checkpoint", output / "checkpoint.tmp", output / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        algo.save_to_path(str(tmp.resolve()))
        (tmp / CHECKPOINT_MARKER).write_text(json.dumps(
            {"iteration": int(row.get("iteration") or 0), "env_steps": int(row.get("env_steps") or 0)}))
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
    except Exception as error:
        cause = os_error(error)
        if cause is None:
            raise
        # A read-only or full disk: the partial save goes, the last complete checkpoint stays where it was.
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.exists() and old.exists():
            os.replace(old, final)
        kept = (f"the last complete checkpoint, {final}, is kept" if (final / CHECKPOINT_MARKER).is_file()
                else "no earlier checkpoint")
        raise UsageError(f"could not write the checkpoint to {tmp}: {os_error_text(cause)}; {kept}") from None
    shutil.rmtree(old, ignore_errors=True)
    return final


# Files and folders `train` writes into --output: a directory holding one of them holds a run.
RUN_MARKERS = ("config.json", "metrics.jsonl", "metrics.csv", "checkpoint", "checkpoint.old", "checkpoint.tmp")


SNAPSHOT_DIR = "actor_snapshots"


def check_checkpoint_data(checkpoint: pathlib.Path, model_based: bool) -> None:
    """A checkpoint's world model (zip members against their CRCs) and replay (its sha256) checked whole before
    Ray starts; UsageError naming the file and the reason otherwise."""
    import zipfile

    from agd_ray.replay.buffer import ReplayBuffer

    if not model_based:
        return
    world_model = checkpoint / "agd" / "world_model.pt"
    try:
        with zipfile.ZipFile(world_model) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as error:
        raise UsageError(f"checkpoint {checkpoint}: {world_model} is unreadable ({first_line(error)}); "
                         f"cannot resume") from None
    if bad is not None:
        raise UsageError(f"checkpoint {checkpoint}: {world_model} is corrupt (its member {bad} fails its CRC); "
                         f"cannot resume")
    try:
        ReplayBuffer.check_saved(checkpoint / "agd" / "replay")
    except ValueError as error:
        raise UsageError(f"checkpoint {checkpoint}: {error}; cannot resume") from None


def check_output_dir(output: pathlib.Path, overwrite: bool) -> None:
    """A new run's --output: new or empty, or holding an earlier run and --overwrite given; UsageError otherwise.
    --overwrite never removes a directory that holds no run (a mistyped --output must not cost other files)."""
    if not output.is_dir() or not any(output.iterdir()):
        return
    if not any((output / name).exists() for name in RUN_MARKERS):
        raise UsageError(f"output={str(output)!r} exists, is not empty and holds no agd-ray run (no "
                         f"{', '.join(RUN_MARKERS[:3])} or checkpoint/); give a new or empty directory "
                         f"(--overwrite removes only an earlier run)")
    if not overwrite:
        raise UsageError(f"output={str(output)!r} exists and holds a run; use --resume {output} to continue it "
                         f"or --overwrite to replace it")


def finished_run_text(directory: pathlib.Path, env_steps: int) -> str | None:
    """`train --resume DIR` of a run whose checkpoint already has `env_steps` real env steps: the one line
    that says so (exit status 0, nothing started); None if the run has steps left."""
    checkpoint = checkpoint_path(directory)
    reached = int(json.loads((checkpoint / CHECKPOINT_MARKER).read_text())["env_steps"])
    if reached < env_steps:
        return None
    return (f"agd-ray train: {directory} is finished: its checkpoint has {reached} env steps, the budget is "
            f"--env-steps {env_steps}; to continue it give a larger --env-steps "
            f"(e.g. agd-ray train --resume {directory} --env-steps {max(2 * env_steps, reached + 1)})")


MODULE_SUBDIR = pathlib.Path("learner_group") / "learner" / "rl_module" / "default_policy"
