"""Shared fixtures. Every test process keeps Ray on 127.0.0.1 and MLflow telemetry off."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.pop("RAY_ADDRESS", None)  # tests start their own local Ray, never join a user's cluster
# Ray's background work a test does not need, for every Ray this session starts (inherited by subprocesses): the log
# monitor lists its folder every 0.5 s instead of every 0.1 s (a new worker's lines reach the driver up to 0.4 s
# later, none is lost), no usage report, and no Python worker started before a task asks for one (Ray otherwise
# starts one per CPU as soon as it is up). Measured on one tiny teacher stage in its own Ray
# (pipelines/train_teacher.py, 3 runs each): 60-68 s of CPU in all its processes without these, 56-57 s with them.
for _key, _value in {"RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0", "RAY_USAGE_STATS_ENABLED": "0",
                     "RAY_enable_worker_prestart": "0", "RAY_prestart_worker_first_driver": "0"}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]


# what Ray's own processes start with: the flow stage's workers write shards to moto (the endpoint comes from
# s3.endpoint_url) with these fake keys; a call without an endpoint goes to a closed loopback port, never to AWS
RAY_AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs on 127.0.0.1, shared by the session's integration tests; its workers get
    RAY_AWS_ENV (this process's environment is left as it was)."""
    import ray

    from etc_core.config import RayConfig
    from etc_core.ray_utils import init_ray

    saved = {k: os.environ.get(k) for k in RAY_AWS_ENV}
    os.environ.update(RAY_AWS_ENV)
    try:
        init_ray(RayConfig(num_cpus=2))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    yield ray
    ray.shutdown()


def run_python(*args: str, cwd: Path = REPO, timeout: int = 300):
    """Run `python args...` with this interpreter; returns the CompletedProcess (text mode)."""
    import subprocess

    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture(scope="session")
def moto_s3():
    """A real moto S3 server on 127.0.0.1 (port chosen by the OS); yields its endpoint URL.

    Sets fake AWS_* credentials and AWS_ENDPOINT_URL in os.environ for the whole session, so boto3 in this process,
    in subprocesses and in Ray workers started afterwards can never reach real AWS; tests that start Ray earlier
    pass the same variables through runtime_env (see `aws_env`).
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = aws_env(endpoint)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


def aws_env(endpoint: str) -> dict[str, str]:
    """Test-only AWS variables pointing boto3 at `endpoint` (a moto server)."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}


TINY_DATA = ["data.num_videos=4", "data.val_fraction=0.25", "data.num_frames=6", "data.height=32", "data.width=48",
             "data.label_every=2", "shards.k=[-1, 1]", "shards.max_samples_per_shard=8"]


@pytest.fixture(scope="session")
def tiny_shards(ray_local, tmp_path_factory):
    """Ground-truth-flow shards of a tiny generated dataset; returns the overrides that point a config at them."""
    from etc_core.config import load_config
    from etc_core.data.generated import write_dataset
    from etc_core.flow.stage import run_flow_stage

    root = tmp_path_factory.mktemp("tiny")
    overrides = [f"data.root={root / 'data'}", f"shards.uri={root / 'shards'}", *TINY_DATA]
    cfg = load_config(None, overrides)
    run_flow_stage(cfg, write_dataset(cfg.data, progress=False), progress=False)
    return overrides


def run_dirs(tmp_path: Path) -> list[str]:
    """Overrides that keep MLflow and Ray Train storage of one test inside tmp_path."""
    return [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"mlflow.artifact_root={tmp_path}/artifacts",
            f"train.storage_path={tmp_path}/ray_results"]


def answers(url: str) -> bool:
    """Whether an HTTP GET of url (a server this test started on 127.0.0.1) answers 200 within 2 s."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_for(predicate, timeout: float, what: str, poll_s: float = 0.2):
    """predicate()'s first truthy value within timeout seconds, else AssertionError naming `what`."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if found := predicate():
            return found
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


def registered_checkpoints(run_dir) -> list[str]:
    """Checkpoints the Train controller has registered under run_dir/ray_results (a worker's upload alone is not
    one: a worker killed before the controller takes it in restarts from the checkpoint before)."""
    import glob
    import json

    found = []
    for snapshot in glob.glob(f"{run_dir}/ray_results/*/checkpoint_manager_snapshot.json"):
        try:
            found += [r["checkpoint_dir_name"] for r in json.load(open(snapshot))["checkpoint_results"]]
        except (ValueError, KeyError):
            pass  # being rewritten
    return found


def end_processes(procs, timeout: float) -> None:
    """Terminate processes this test started (psutil.Process objects), then kill those still alive after timeout."""
    import psutil

    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        proc.kill()


@contextmanager
def mlflow_server(backend: str, artifacts: Path):
    """`infra/mlflow_server.sh` on 127.0.0.1 with this backend store (a SQLite path or postgresql://...) and artifact
    root; yields its URI once /health answers, and ends it (and its workers) afterwards."""
    import socket
    import subprocess
    import urllib.request

    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen(["bash", "infra/mlflow_server.sh", "--backend", backend, "--artifacts-destination",
                             str(artifacts), "--port", str(port), "--", "--workers", "1"], cwd=REPO,
                            env={**os.environ, "MLFLOW": mlflow_bin}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"{uri}/health", timeout=2).read() == b"OK"
        except OSError:
            return proc.poll() is not None  # exited: the assertion below says so

    try:
        wait_for(healthy, 120, "the MLflow server to answer /health")
        assert proc.poll() is None, "infra/mlflow_server.sh exited"
        yield uri
    finally:
        server = psutil.Process(proc.pid)
        end_processes([*server.children(recursive=True), server], timeout=10)
