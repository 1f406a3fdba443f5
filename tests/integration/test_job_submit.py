"""`ray job submit -- python pipelines/full.py` against a `ray start --head` cluster on 127.0.0.1, S3 on moto."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest

from tests.conftest import REPO, TINY_DATA, answers, aws_env, end_processes

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """`ray start --head --block` on free loopback ports; stopping it ends only this cluster's processes."""
    import shutil
    import tempfile

    gcs, dash = _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")  # short: Ray's unix socket paths must fit 107 chars
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "PATH": f"{BIN}:{os.environ['PATH']}"}  # a job's `python` is the one on PATH when Ray started
    env.pop("RAY_ADDRESS", None)
    ports = [f"--{flag}={_free_port()}" for flag in (  # all free: another Ray here may hold the defaults
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
        "ray-client-server-port", "node-manager-port", "object-manager-port")]
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2",
                             "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(dash), "--temp-dir", temp_dir, *ports],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if answers(f"{address}/api/version"):  # the dashboard's job API (a `ray job` call costs seconds of CPU)
            break
        time.sleep(1)
    else:
        _stop_cluster(head, temp_dir)
        raise AssertionError("ray head did not come up")
    yield address, env
    _stop_cluster(head, temp_dir)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_cluster(head: subprocess.Popen, temp_dir: str) -> None:
    """End this cluster's processes only: `ray start`, everything naming its temp dir, and their descendants."""
    procs = {psutil.Process(head.pid)}
    for proc in psutil.process_iter(["cmdline"]):
        if temp_dir in " ".join(proc.info["cmdline"] or []):
            procs.add(proc)
    for proc in list(procs):
        try:
            procs.update(proc.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    end_processes(list(procs), timeout=5)  # this test's own cluster: no need to wait long for a clean exit
    head.wait(10)


def _jobs(address: str, env: dict, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), "job", *args, "--address", address], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def _submit(address: str, env: dict, args: list[str], cwd) -> str:
    """infra/submit.sh --no-wait from cwd (the directory relative config paths mean); returns the job id."""
    env = {**env, "RAY_ADDRESS": address, "PYTHON": sys.executable, "RAY": str(BIN / "ray")}
    for _ in range(20):  # the job agent may come up a little after the dashboard answers
        proc = subprocess.run([str(REPO / "infra" / "submit.sh"), "--no-wait", "--pass-credentials", *args], env=env,
                              capture_output=True, text=True, timeout=120, cwd=cwd)
        if "No available agent" not in proc.stderr:
            break
        time.sleep(3)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return next(line.split("'")[1] for line in proc.stdout.splitlines() if "submitted successfully" in line)


def _wait(address: str, env: dict, job_id: str, timeout: int = 600) -> str:
    """The job's log once it has ended (AssertionError unless it succeeded). `ray job logs --follow` returns when
    the job ends: one process where polling `ray job status` started dozens, each seconds of CPU."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            _jobs(address, env, "logs", job_id, "--follow", timeout=max(int(left), 1))
        except subprocess.TimeoutExpired:
            break
        proc = _jobs(address, env, "status", job_id)
        status = (proc.stdout + proc.stderr).lower()  # "Job '...' succeeded" (Ray's CLI logger)
        if any(word in status for word in ("succeeded", "failed", "stopped")):
            logs = _jobs(address, env, "logs", job_id).stdout
            assert "succeeded" in status, (status, logs[-4000:])
            return logs
        time.sleep(3)  # the stream ended before the job did (a dropped connection): follow it again
    logs = _jobs(address, env, "logs", job_id).stdout
    _jobs(address, env, "stop", job_id)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s; its log ends:\n{logs[-3000:]}")


@pytest.mark.slow
def test_full_pipeline_via_job_submit_with_s3_relative_paths_and_rerun_skips(ray_head, moto_s3, tmp_path):
    import boto3

    address, env = ray_head
    boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1").create_bucket(Bucket="etc-jobs")
    db = tmp_path / "mlflow.db"
    # relative local paths: infra/submit.sh carries where it was started (tmp_path) to the job, so they land here
    # and not inside Ray's unpacked working directory (gone with the job)
    args = ["--config", "configs/demo.yaml", "data.root=data", "shards.uri=s3://etc-jobs/shards",
            "mlflow.tracking_uri=sqlite:///mlflow.db", "mlflow.artifact_root=artifacts",
            "train.storage_path=ray_results", *TINY_DATA, "teacher.arch=pspnet18_slim",
            "student.arch=lraspp_mobilenetv3", "train.max_steps=2", "train.steps_per_epoch=2", "train.batch_size=2",
            "train.crop=null",
            # the submission path needs two training stages, not four: demo.yaml's baseline (the student's warm
            # start) and control run in test_doc_examples (its full.py line, the table's two difference lines and
            # the control run's params); each Ray Train stage costs tens of seconds of start-up here
            "pipeline.baseline=false", "pipeline.control=false", "student.init_from=null"]
    commit = "c0ffee42" * 5  # the job has no .git: infra/submit.sh passes the checkout's commit like this
    env = {**env, **aws_env(moto_s3), "MLFLOW_DISABLE_TELEMETRY": "true", "ETC_GIT_COMMIT": commit}
    logs = _wait(address, env, _submit(address, env, args, cwd=tmp_path))
    assert "joining Ray at" in logs  # it joined the cluster rather than starting its own
    assert "stages run: flow, teacher, student, evaluate; reused: -" in logs
    table = logs.split("stages run:")[1]  # the evaluation table: every model, the references, every metric
    for row in ("teacher:etc-teacher/1", "student:etc-student-lraspp_mobilenetv3/1", "ground truth",
                "stride-8 oracle"):
        assert row in table, table
    assert all(column in table for column in ("mIoU", "TC-noc", "flick-int", "latency ms"))
    assert "ptlflow rapidflow_it1 (random init, timing only)" in table
    # a job's log is no console: one line per model scored, no progress bar redrawn into every line after it
    assert "evaluate: student:etc-student-lraspp_mobilenetv3/1 scored in " in logs and "batch/s" not in table
    assert "mlflow ui --backend-store-uri sqlite:///" in table and "--host 127.0.0.1" in table
    assert (tmp_path / "data" / "dataset.json").is_file() and db.is_file() and (tmp_path / "ray_results").is_dir()
    s3 = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="etc-jobs", Prefix="shards/")["Contents"]]
    assert "shards/manifest.json" in keys and any(k.startswith("shards/train/shard-") for k in keys)
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    for name in ("etc-teacher", "etc-student-lraspp_mobilenetv3"):
        assert client.get_model_version_by_alias(name, "champion").version in (1, "1")
    runs = client.search_runs([client.get_experiment_by_name("etc-pipeline").experiment_id])
    assert runs and {r.data.tags.get("mlflow.source.git.commit") for r in runs} == {commit}

    rerun = _wait(address, env, _submit(address, env, args, cwd=tmp_path))
    ran = next((line for line in rerun.splitlines() if line.startswith("stages run:")), rerun[-2000:])
    assert ran == "stages run: evaluate; reused: flow, teacher, student", ran
    assert len(client.search_model_versions("name='etc-student-lraspp_mobilenetv3'")) == 1
