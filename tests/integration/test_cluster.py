"""The cluster path on one machine: two Ray nodes on 127.0.0.1 that share S3 (a moto server reached through
`s3.endpoint_url` only: no AWS_ENDPOINT_URL anywhere) and an MLflow server (infra/mlflow_server.sh on 127.0.0.1) on a
real PostgreSQL (pgserver) that the pipeline logs to, registers in and loads its models from.

The worker node runs in its own mount namespace with its own home, torch cache, temp dir and working directory
(tests/integration/_isolated_node.py); the teacher's backbone weights sit in a folder only the head sees, so a
worker that opened them instead of taking them from the driver would fail. pipelines/full.py runs every stage with
its Ray Train workers spread over both nodes; the worker node is killed during student training and the run
finishes from its last S3 checkpoint on the head node, with one registered version. A node-local (SQLite) MLflow
store on the same two nodes is refused in one line before any work. What this does not show: separate disks for
the data (both nodes read data.root from this machine's disk; a real cluster needs it on every node, and the path
check refuses a node that lacks it: test_node_paths.py), GPUs, NCCL, and a network between hosts.
"""
from __future__ import annotations

import json
import os
import re

import mlflow
import psutil
import pytest
import torch

from etc_core.storage import uri as storage
from tests.conftest import TINY_DATA, run_python, wait_for
from tests.integration import _isolated_node as isolated_node
from tests.conftest import mlflow_server as start_mlflow_server
from tests.reliability._inputs import assert_one_line_error
from tests.reliability._procs import Output, popen, sigkill

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUCKET = "etc-cluster"
STEPS = ["train.max_steps=24", "train.steps_per_epoch=8", "train.batch_size=2", "train.val_batch_size=4",
         "train.crop=null", "train.pictures=0", "train.log_every=1", "train.max_failures=2"]


@pytest.fixture
def postgres():
    """A real PostgreSQL (the pgserver package: PostgreSQL's own binaries, on a unix socket in a temp dir, no TCP
    port), stopped and removed afterwards; yields the server (its .psql(query) runs SQL)."""
    import tempfile

    import pgserver

    folder = tempfile.mkdtemp(prefix="pg", dir="/tmp")  # short: the socket's path has a length limit
    server = pgserver.get_server(folder, cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def mlflow_server(tmp_path, postgres):
    """`infra/mlflow_server.sh` on 127.0.0.1 with a PostgreSQL backend store (psycopg2, the `server` extra) and its
    own artifact root; yields its URI."""
    from urllib.parse import parse_qs, urlparse

    socket_dir = parse_qs(urlparse(postgres.get_uri()).query)["host"][0]  # pgserver listens on no TCP port
    with start_mlflow_server(f"postgresql://postgres@/postgres?host={socket_dir}", tmp_path / "server") as uri:
        yield uri


def _start_head(attempts: int = 3):
    """A head (2 CPUs) on 127.0.0.1, no dashboard. Ray gives a raylet a fixed 30 s to register with the GCS
    (ray/_private/node.py), which a machine busy with other work can miss: a failed start is shut down and tried
    again."""
    from ray.cluster_utils import Cluster

    for attempt in range(attempts):
        cluster = Cluster()
        try:
            cluster.add_node(num_cpus=2, resources={"head": 1}, include_dashboard=False)
            return cluster
        except Exception:  # noqa: BLE001 - "The current node timed out during startup"
            cluster.shutdown()
            if attempt == attempts - 1:
                raise


@pytest.fixture
def two_nodes(moto_s3, monkeypatch, tmp_path):
    """(cluster, worker node process, head-only folder): a head and a worker node (1 CPU) on 127.0.0.1 started
    without AWS_ENDPOINT_URL (moto_s3 sets it for the session). The worker node runs in its own mount namespace
    with its own home, torch cache, temp dir and working directory, and the head-only folder is an empty tmpfs
    there (tests/integration/_isolated_node.py): a worker that opened a head-local file would fail."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # nothing here may rely on it
    head_only = tmp_path / "head-only"
    head_only.mkdir()
    cluster = _start_head()
    worker = None
    try:
        worker = isolated_node.start(cluster.gcs_address, [head_only], tmp_path / "worker-home",
                                     resources={"worker": 1}, name="worker")
        yield cluster, worker, head_only
    finally:
        if worker is not None:
            isolated_node.stop(worker)
        cluster.shutdown()


def _train_workers_by_node(cluster, worker) -> dict[str, int]:
    """How many RayTrainWorker processes run under each node's raylet (workers are the raylet's children)."""
    counts = {"head": 0, "worker": 0}
    head_raylet = cluster.head_node.all_processes["raylet"][0].process.pid
    for name, raylet in (("head", head_raylet), ("worker", isolated_node.raylet_pid(worker))):
        for child in psutil.Process(raylet).children(recursive=True):
            try:
                counts[name] += "RayTrainWorker" in " ".join(child.cmdline())
            except psutil.NoSuchProcess:
                pass
    return counts


def _student_checkpoints(endpoint: str) -> list[str]:
    """Checkpoints the Train controller has registered for the student run in S3."""
    found = []
    for url in storage.list_files(f"s3://{BUCKET}/ray", endpoint):
        if re.search(r"/student-[^/]+/checkpoint_manager_snapshot\.json$", url):
            try:
                found += [r["checkpoint_dir_name"]
                          for r in json.loads(storage.read_bytes(url, endpoint))["checkpoint_results"]]
            except (ValueError, KeyError, storage.UriError):
                pass  # being rewritten
    return found


def test_pipeline_across_two_nodes_survives_losing_one(moto_s3, two_nodes, mlflow_server, postgres, tmp_path):
    import torchvision.models as tvm

    cluster, worker, head_only = two_nodes
    weights = head_only / "r18.pth"  # backbone weights on the head's disk alone: the driver hands them over
    torch.save(tvm.resnet18(weights=None).state_dict(), weights)
    storage.s3_client(moto_s3).create_bucket(Bucket=BUCKET)
    assert "AWS_ENDPOINT_URL" not in os.environ
    common = [f"data.root={tmp_path}/data", *TINY_DATA, f"ray.address={cluster.address}",
              f"shards.uri=s3://{BUCKET}/shards", f"train.storage_path=s3://{BUCKET}/ray", f"s3.endpoint_url={moto_s3}"]

    local = run_python("pipelines/full.py", *common, f"mlflow.tracking_uri=sqlite:///{tmp_path}/local.db",
                       timeout=400)
    assert_one_line_error(local, "ConfigError", f"mlflow.tracking_uri sqlite:///{tmp_path}/local.db: a node-local "
                                                "store, but Ray spans 2 nodes", code=2)
    assert storage.list_files(f"s3://{BUCKET}", moto_s3) == []  # refused before any work

    proc = popen(["pipelines/full.py", *common, f"mlflow.tracking_uri={mlflow_server}", *STEPS,
                  "teacher.arch=pspnet18", "student.arch=pspnet18_slim", "train.workers=2",
                  "train.cpus_per_worker=1", "train.placement_strategy=SPREAD", "pipeline.ptlflow_timing_pairs=0",
                  "pipeline.baseline=false", "teacher.train.max_steps=2", "teacher.train.steps_per_epoch=2",
                  f"teacher.pretrained={weights}"])
    out = Output(proc)
    try:
        out.wait_for(r"== student: training", 600)
        wait_for(lambda: _student_checkpoints(moto_s3), 300, "a student checkpoint registered in S3", poll_s=0.2)
        spread = _train_workers_by_node(cluster, worker)
        assert spread == {"head": 1, "worker": 1}, spread  # the DDP group spans both nodes
        isolated_node.stop(worker, kill=True)  # SIGKILL: raylet, object store, its Train worker
        proc.wait(timeout=600)
    finally:
        sigkill(proc)
    log = out.text()
    assert proc.returncode == 0, log[-4000:]
    resumed = int(re.search(r"student: resumed from checkpoint at step (\d+)", log).group(1))
    assert 8 <= resumed < 24
    assert re.search(r"epoch 2 step 24/24 loss", log[log.index("student: resumed"):]), log[-3000:]  # to the end
    client = mlflow.MlflowClient(mlflow_server)
    assert [v.version for v in client.search_model_versions("name='etc-student-pspnet18_slim'")] == ["1"]
    assert [v.version for v in client.search_model_versions("name='etc-teacher'")] == ["1"]
    held = postgres.psql("SELECT name FROM registered_models ORDER BY name;")  # the server's store is PostgreSQL
    assert "etc-student-pspnet18_slim" in held and "etc-teacher" in held, held
    assert any(u.endswith("/manifest.json") for u in storage.list_files(f"s3://{BUCKET}/shards", moto_s3))

    # the same student uninterrupted (its own Ray storage, so nothing resumes), on the node that is left: the run
    # that lost a node ends where this one does (seeded loop; the checkpoint holds every state it needs)
    again = run_python("pipelines/train_student.py", *common, f"mlflow.tracking_uri={mlflow_server}", *STEPS,
                       "teacher.arch=pspnet18", "student.arch=pspnet18_slim", "train.workers=2",
                       "train.cpus_per_worker=1", f"train.storage_path=s3://{BUCKET}/ray-again", timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    def final(version: str) -> list[float]:  # val mIoU and TC at the last step of the run that trained it
        run_id = client.get_model_version("etc-student-pspnet18_slim", version).tags["etc.run_id"]
        return [max(client.get_metric_history(run_id, k), key=lambda m: m.step).value for k in ("val/miou", "val/tc")]

    killed, clean = final("1"), final("2")
    assert killed == pytest.approx(clean, abs=0.01), (killed, clean)
