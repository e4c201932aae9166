"""Issue 17, item 3: the job path end to end, as on a cluster's head (docs/CLUSTER.md, "Jobs on one machine").

`ray start --head` with the dashboard (and so the job server) on 127.0.0.1 and token authentication on, as
cluster/*.yaml start the head; `ray job submit --working-dir .` of `agd-ray sweep tune_configs/smoke.yaml
--address auto`, then `ray job logs --follow` and `ray job status`; the sweep's summary files with one finished
row per trial; then the head is stopped. The commands run as a user types them, with this venv's `ray` and
`agd-ray` on PATH. The head runs under a private HOME (its token) and RAY_TMPDIR, is started with `--block` and
stopped by its PID (SIGTERM stops its node's processes), not with `ray stop`, which stops every Ray process on
the machine.
"""

import csv
import importlib.util
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from cluster_nodes import ROOT

pytestmark = pytest.mark.cluster

BIN = pathlib.Path(sys.executable).parent  # this venv's `ray` and `agd-ray`


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes_under(directory: pathlib.Path) -> list[int]:
    """PIDs whose command line names `directory` (this head's Ray processes name their temp dir)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if str(directory).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


class JobHead:
    """`ray start --head --block` with its dashboard on 127.0.0.1 and token authentication, in `root`."""

    def __init__(self, root: pathlib.Path):
        self.root, self.temp = root, root / "ray"
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        (root / "home").mkdir()
        self.env = {**os.environ, "HOME": str(root / "home"), "RAY_TMPDIR": str(root), "RAY_AUTH_MODE": "token",
                    "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.env.pop("RAY_ADDRESS", None)
        self.process = None

    def ray(self, *args, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ray"), *args], env=self.env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)

    def start(self) -> None:
        generated = self.ray("get-auth-token", "--generate")  # into HOME/.ray/auth_token, as the docs say
        assert generated.returncode == 0, generated.stderr
        self.token = (self.root / "home" / ".ray" / "auth_token").read_text().strip()
        self.process = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", f"--port={self.port}", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}", "--num-cpus=2", "--num-gpus=0",
             f"--temp-dir={self.temp}", "--disable-usage-stats"],
            env=self.env, cwd=ROOT, stdout=open(self.root / "head.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 180
        while self.get("/api/version") != 200:
            assert self.process.poll() is None, (self.root / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the head's dashboard did not answer in 180 s"
            time.sleep(1)

    def get(self, path: str, host: str = "127.0.0.1", token: bool = True) -> int | None:
        """HTTP status of GET `path` on the dashboard (None: no connection)."""
        request = urllib.request.Request(f"http://{host}:{self.dashboard_port}{path}")
        if token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    def stop(self) -> list[int]:
        """SIGTERM to `ray start --block`, which stops its node's processes; whatever is left after 60 s is
        killed. Returns the PIDs that had to be killed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while processes_under(self.temp) and time.monotonic() < deadline:
            time.sleep(1)
        left = processes_under(self.temp)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left


@pytest.fixture
def job_head():
    for module in ("aiohttp", "opencensus"):  # ray[default]: the dashboard and job server
        assert importlib.util.find_spec(module), f"{module} is missing: `make` installs requirements.lock"
    root = pathlib.Path(tempfile.mkdtemp(prefix="agdj-", dir="/tmp"))  # short: Ray's sockets live in it
    head = JobHead(root)
    try:
        head.start()
        yield head
    finally:
        left = head.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"Ray processes still running after the head stopped: {left}"


def test_sweep_as_a_ray_job(job_head, tmp_path):
    from agd_ray.sweep import SUMMARY_COLUMNS, SUMMARY_FILES, load_sweep

    spec = load_sweep(ROOT / "tune_configs" / "smoke.yaml")
    # The dashboard is on the head's localhost only, and refuses a client without the token.
    try:
        node_ip = socket.gethostbyname(socket.gethostname())  # the address other machines would use
    except OSError:
        node_ip = "127.0.0.1"
    if not node_ip.startswith("127."):
        assert job_head.get("/api/version", host=node_ip) is None
    assert job_head.get("/api/jobs/", token=False) == 401

    output = tmp_path / "sweeps"
    submitted = job_head.ray("job", "submit", "--address", job_head.address, "--submission-id", "agd-smoke",
                             "--no-wait", "--working-dir", ".", "--", "agd-ray", "sweep", "tune_configs/smoke.yaml",
                             "--address", "auto", "--output", str(output))
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    logs = job_head.ray("job", "logs", "--follow", "--address", job_head.address, "agd-smoke", timeout=900)
    status = job_head.ray("job", "status", "--address", job_head.address, "agd-smoke")
    assert logs.returncode == 0, logs.stderr[-3000:]
    assert status.returncode == 0 and "Job 'agd-smoke' succeeded" in status.stdout + status.stderr, \
        status.stdout + status.stderr + logs.stdout[-3000:]

    directory = output / spec.name
    assert f"summary ({', '.join(SUMMARY_FILES)}) in {directory}" in logs.stdout  # the job's last line
    with open(directory / "summary.csv") as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    expected = sorted((t["guidance.kind"], t["guidance.temperature"], t["seed"]) for t in spec.trials())
    assert sorted((r["guide"], float(r["temperature"]), int(r["seed"])) for r in rows) == expected
    for row in rows:
        assert row["status"] == "done"
        assert int(row["iterations"]) == spec.max_iterations
        assert int(row["env_steps"]) == spec.env_steps  # 2 iterations of 200 real steps
    table = [line for line in (directory / "summary.md").read_text().splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows)  # header, rule, one line per trial
    assert all(line in logs.stdout.splitlines() for line in table)  # the job's log prints the same table
    assert (directory / "return_vs_temperature.png").stat().st_size > 1000
