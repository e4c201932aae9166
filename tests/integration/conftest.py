"""Shared fixtures of the integration tests (local Ray)."""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_ray():
    """A small local Ray for one test module; its workers import agd_ray from this checkout, one thread each."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}})
    yield
    ray.shutdown()
