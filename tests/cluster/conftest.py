"""Multi-node Ray on this machine, for the tests marked `cluster` (`make test-cluster`).

Each test starts its own Ray nodes and stops them in a finalizer, also when it fails or times out. The nodes keep
their sessions, sockets and Ray's "latest cluster" address file in a temp directory of their own (RAY_TMPDIR), so
that a `ray.init()` elsewhere on the machine never finds and joins them, and they are stopped by process (their
own PIDs), never with `ray stop`, which stops every Ray process on the machine whoever started it.

The nodes advertise the resources of the node types in cluster/*.yaml (`agd_head`, `agd_gpu_worker`,
`agd_cpu_worker`), so a placement tested here is the one a `ray up` cluster gives.
"""

import atexit
import os
import pathlib
import shutil
import signal
import tempfile

import pytest

from cluster_nodes import CPU_WORKER, GPU_WORKER, LocalCluster

TEST_LIMIT_S = int(os.environ.get("AGD_CLUSTER_TEST_LIMIT_S", "900"))  # a hang fails the test instead


@pytest.fixture(autouse=True)
def time_limit():
    """Fail a test that runs past TEST_LIMIT_S (SIGALRM interrupts a blocked `ray.get`), so that its
    finalizers still stop what it started."""
    def expire(signum, frame):
        raise TimeoutError(f"cluster test still running after {TEST_LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def ray_tmpdir(monkeypatch):
    """A private Ray temp dir (short: Ray's unix sockets live in it) for this test's nodes and commands."""
    path = tempfile.mkdtemp(prefix="agdc-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # Ray's exit hooks of a node removed mid-test may make its session's directories again when pytest exits.
    atexit.register(shutil.rmtree, path, True)
    yield pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def local_cluster(ray_tmpdir):
    """A head (`agd_head`) and two workers (`agd_gpu_worker`, `agd_cpu_worker`), the driver connected."""
    cluster = LocalCluster()
    try:
        cluster.add_worker(GPU_WORKER, num_cpus=1)
        cluster.add_worker(CPU_WORKER, num_cpus=2)
        cluster.connect()
        yield cluster
    finally:
        cluster.shutdown()
