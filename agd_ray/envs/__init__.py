"""Real environments: which ones are supported, how they are made, and the env runner that streams to replay.

`validate_env_id` and `make_env` need no Ray; `AGDEnvRunner` (in `runner.py`) is the RLlib env runner
subclass, imported lazily so that the CLI can validate its arguments without importing RLlib.
"""

from agd_ray.envs.core import SUPPORTED_ENVS, RecordSimState, make_env, register_recording_env, validate_env_id

__all__ = ["SUPPORTED_ENVS", "RecordSimState", "make_env", "register_recording_env", "validate_env_id", "AGDEnvRunner"]


def __getattr__(name):
    if name == "AGDEnvRunner":
        from agd_ray.envs.runner import AGDEnvRunner

        return AGDEnvRunner
    raise AttributeError(name)
