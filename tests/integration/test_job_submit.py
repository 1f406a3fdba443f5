"""`ray job submit -- python pipelines/full.py` against a `ray start --head` cluster on 127.0.0.1, S3 on moto: two
jobs on one store at once take turns (the second waits, then reuses everything), and a third run refuses."""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest

from tests.conftest import REPO, TINY_DATA, answers, aws_env, end_processes, wait_for

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


def _lock_holder(lock: str) -> int | None:
    """The pid a held lock file names (etc_core/locks.py writes it), None while it is free or being written."""
    try:
        return json.loads(Path(lock).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_two_pipelines_via_job_submit_take_turns_on_one_store_with_s3_relative_paths(ray_head, moto_s3, tmp_path):
    import boto3

    from etc_core.data import shards
    from etc_core.storage import uri as storage

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
    # two pipelines on one SQLite store at once: whichever takes the store's lock first runs every stage, the other
    # waits for it (pipeline.lock_wait_s), then reuses all; a third run told not to wait refuses in one line
    jobs = [_submit(address, env, args, cwd=tmp_path), _submit(address, env, [*args, "pipeline.lock_wait_s=600"],
                                                                cwd=tmp_path)]
    lock = f"{db}.lock"
    holder_pid = wait_for(lambda: _lock_holder(lock), 240, "a job to take the store's lock")
    refused = subprocess.run([sys.executable, str(REPO / "pipelines" / "full.py"), "--config",
                              str(REPO / "configs" / "demo.yaml"), *args[2:], "pipeline.lock_wait_s=0"], cwd=tmp_path,
                             env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 75, refused.stderr[-2000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"LockError: lock {lock} is held by pid {holder_pid} ") and \
        "(pipeline.lock_wait_s=0)" in last, last
    logs = [_wait(address, env, job) for job in jobs]
    ran = [next((line for line in log.splitlines() if line.startswith("stages run:")), log[-2000:]) for log in logs]
    holder, waiter = (0, 1) if ran[0].startswith("stages run: flow") else (1, 0)
    assert ran[holder] == "stages run: flow, teacher, student, evaluate; reused: -", ran
    assert ran[waiter] == "stages run: evaluate; reused: flow, teacher, student", ran  # waited, then reused all
    assert f"waiting for lock {lock} held by pid {holder_pid} on host " in logs[waiter]

    logs = logs[holder]
    assert "joining Ray at" in logs  # it joined the cluster rather than starting its own
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
    # the shards on S3 are whole: the manifest lists every shard object, each with its count of samples
    manifest = json.loads(storage.read_bytes("s3://etc-jobs/shards/manifest.json", moto_s3))
    entries = {f"s3://etc-jobs/shards/{s['path']}": s["samples"] for split in manifest["splits"].values()
               for s in split["shards"]}
    assert sorted(u for u in storage.list_files("s3://etc-jobs/shards", moto_s3) if u.endswith(".tar")) == \
        sorted(entries)
    for url, samples in entries.items():
        assert shards.count_samples(url, moto_s3) == samples
    with sqlite3.connect(db) as store:
        assert store.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    for name in ("etc-teacher", "etc-student-lraspp_mobilenetv3"):
        assert [str(v.version) for v in client.search_model_versions(f"name='{name}'")] == ["1"]
        assert client.get_model_version_by_alias(name, "champion").version in (1, "1")
    runs = client.search_runs([client.get_experiment_by_name("etc-pipeline").experiment_id])
    assert runs and {r.data.tags.get("mlflow.source.git.commit") for r in runs} == {commit}
