"""Tuned settings as data: one file per task, `tuned/<env>.yaml`, with the settings measured to learn it here.

    env: HalfCheetah-v5
    preset: cpu
    config:                          # dotted keys, as `--config` and a sweep file take them
      guidance.kind: eag
      guidance.temperature: 1.0
      world_model.horizon: 5
    evidence:                        # where the settings come from
      section: "The evidence, first pass: HalfCheetah-v5 with the guides that act"   # a heading of docs/RESULTS.md
      table: "EAG, resampling: 422.8 +- 505.0 over 8 seeds at 30k env steps"
      commit: "48c48f3"
    note: what the settings do and what they do not show

`agd-ray train --env X` starts from X's file when there is one (`apply_tuned`): every key is checked as a
`--config` item is (`agd_ray.sweep.check_dotted`), `guidance.kind` and `guidance.temperature` become the
`--guide` and `--temperature` values and the other keys `--config` items placed before the command line's, so
that a flag or a `--config` key given on the command line wins over the file's value for the same setting. The
settings belong to their preset: an explicit `--preset` other than the file's, or `--no-tuned`, leaves the file
unused. `--resume` takes its settings from the run's config.json, never from these files.
"""

from __future__ import annotations

import argparse
import pathlib
from dataclasses import dataclass

from agd_ray.sweep import _check_mapping, _fail, _section_types, check_dotted, check_top_level, parse_value

# The source checkout's tuned/ folder (beside agd_ray/, as bench/ is).
TUNED_DIR = pathlib.Path(__file__).resolve().parent.parent / "tuned"

TOP_LEVEL_KEYS = {
    "env": "the task id, the file's own name (tuned/HalfCheetah-v5.yaml holds env: HalfCheetah-v5)",
    "preset": "the sizes the settings were measured at: cpu, paper or tiny",
    "config": "dotted keys over the preset, as --config takes them, e.g. {guidance.kind: eag, world_model.horizon: 5}",
    "evidence": "where the settings come from: section (a heading of docs/RESULTS.md), table, commit, and "
                "optionally command",
    "note": "a short note: what the settings do, and what the evidence does not show",
}
EVIDENCE_KEYS = {
    "section": "a heading of docs/RESULTS.md",
    "table": "the table and rows the settings come from",
    "commit": "the commit(s) the runs ran at",
    "command": "optional: the command that ran them",
}
REQUIRED_EVIDENCE = ("section", "table", "commit")
# Flags whose value a tuned file gives through its dotted key (shown on the run's header line and in the default
# --output name); every other tuned key is given as a --config item.
AS_FLAGS = ("guide", "temperature")


@dataclass(frozen=True)
class Tuned:
    """A checked tuned file."""

    path: pathlib.Path
    env: str
    preset: str
    config: dict
    evidence: dict
    note: str


def tuned_file(env: str, folder: pathlib.Path | None = None) -> pathlib.Path | None:
    """The tuned file of `env` in `folder` (default: TUNED_DIR), or None if it has none."""
    folder = TUNED_DIR if folder is None else pathlib.Path(folder)
    if not folder.is_dir():
        return None
    return {path.stem: path for path in folder.glob("*.yaml")}.get(env)


def parse_tuned(data, *, path, presets) -> Tuned:
    """Check a parsed tuned file (`presets`: the preset names allowed); ValueError names the key, the value and
    what is allowed."""
    from agd_ray.envs.core import validate_env_id

    path = pathlib.Path(path)
    check_top_level(data, "a tuned file", TOP_LEVEL_KEYS, TOP_LEVEL_KEYS)
    validate_env_id(data["env"])
    if data["env"] != path.stem:
        _fail("env", data["env"], f"it must be the file's own name, {path.stem}")
    if data["preset"] not in presets:
        _fail("preset", data["preset"], f"choose one of {', '.join(presets)}")
    config = _check_mapping("config", data["config"])
    types = _section_types()
    for key, value in config.items():
        check_dotted("config", key, value, types)
        if parse_value(_text(value)) != value:  # as --config items they must read back the same (config.json)
            _fail(f"config.{key}", value, "it must read back as itself on the command line; write it as a number, "
                                          "true/false or a plain string")
    evidence = _check_mapping("evidence", data["evidence"])
    for key, value in evidence.items():
        if key not in EVIDENCE_KEYS:
            raise ValueError(f"unknown key evidence.{key}; allowed: {', '.join(EVIDENCE_KEYS)}")
        if not isinstance(value, str) or not value.strip():
            _fail(f"evidence.{key}", value, f"it must be a non-empty string: {EVIDENCE_KEYS[key]}")
    missing = [key for key in REQUIRED_EVIDENCE if key not in evidence]
    if missing:
        raise ValueError(f"missing key evidence.{missing[0]}: {EVIDENCE_KEYS[missing[0]]}")
    if not isinstance(data["note"], str) or not data["note"].strip():
        _fail("note", data["note"], "it must be a non-empty string")
    return Tuned(path=path, env=data["env"], preset=data["preset"], config=dict(config), evidence=dict(evidence),
                 note=data["note"].strip())


def load_tuned(path, *, presets) -> Tuned:
    """Read and check a tuned file; every ValueError starts with the file's path."""
    import yaml

    path = pathlib.Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{_shown(path)} is unreadable or not valid YAML: {str(error).splitlines()[0]}") from None
    try:
        return parse_tuned(data, path=path, presets=presets)
    except ValueError as error:
        raise ValueError(f"{_shown(path)}: {error}") from None


def _shown(path: pathlib.Path) -> str:
    """The path relative to the working directory where it lies below it (tuned/X.yaml in the checkout)."""
    try:
        return str(path.resolve().relative_to(pathlib.Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _text(value) -> str:
    """A value as a --config item's text that `agd_ray.sweep.parse_value` reads back as the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def apply_tuned(args, *, presets, flag_keys: dict, folder=None) -> tuple[argparse.Namespace, str | None]:
    """`train` arguments started from the task's tuned file, and the line that says so (None if no file is used).

    `presets`: the preset names; `flag_keys`: flag (args attribute) -> the dotted key it sets (the CLI's
    CONFLICTING_KEYS). A tuned key is dropped where the command line sets the same setting: by a flag in
    `args.explicit_flags` or by a `--config` item. `args` itself is not changed."""
    if getattr(args, "no_tuned", False):
        return args, None
    path = tuned_file(args.env, folder)
    if path is None:
        return args, None
    tuned = load_tuned(path, presets=presets)
    if args.preset is not None and args.preset != tuned.preset:
        return args, None  # the settings were measured at their preset; another preset is another run
    given_keys = {str(item).partition("=")[0] for item in (args.config or [])}
    given_keys.update(flag_keys[name] for name in getattr(args, "explicit_flags", ()) if name in flag_keys)
    flag_of = {flag_keys[name]: name for name in AS_FLAGS}
    values = dict(vars(args))
    values["preset"], values["tuned_file"] = tuned.preset, _shown(path)
    items, applied, overridden = [], [f"preset={tuned.preset}"], []
    for key, value in tuned.config.items():
        if key in given_keys:
            overridden.append(key)
            continue
        if key in flag_of:
            values[flag_of[key]] = _text(value)
        else:
            items.append(f"{key}={_text(value)}")
        applied.append(f"{key}={_text(value)}")
    values["config"] = [*items, *(args.config or [])]
    line = (f"agd-ray train: starting from the tuned settings of {args.env} in {_shown(path)}: {' '.join(applied)}"
            + (f" (set on the command line instead: {', '.join(overridden)})" if overridden else "")
            + "; a flag or --config overrides one of them, --no-tuned turns the file off")
    return argparse.Namespace(**values), line
