"""Security: loopback-only servers, no credentials in MLflow or logs, weights-only checkpoints, safe shard names and
no shell reachable from config values. Real Ray, MLflow server, moto and torch; nothing is mocked."""
from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.conftest import REPO, end_processes
from tests.reliability._inputs import (ETC, assert_one_line_error, closed_port, files_under, frames_dir, run,
                                       write_checkpoint, write_shard_set)

pytestmark = pytest.mark.integration

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _listening(pids: set[int]) -> list:
    return [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]


def _name(pid: int) -> str:
    """A process's title: `ray::RayTrainWorker...` for a Ray Train worker (Ray sets it per task)."""
    try:
        return (psutil.Process(pid).cmdline() or ["?"])[0]
    except psutil.NoSuchProcess:
        return "?"


def _stop(pid: int) -> None:
    """Terminate a process we started and all its descendants, by PID."""
    end_processes(list(reversed(_tree(pid))), timeout=5)


# ------------------------------------------------------------------------------------------------ loopback

@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """infra/mlflow_server.sh started for real with its default host on a free port (SQLite + local artifacts)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = closed_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([str(REPO / "infra" / "mlflow_server.sh"), "--backend", str(root / "mlflow.db"),
                             "--artifacts-destination", str(root / "artifacts"), "--port", str(port),
                             "--", "--workers", "1"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while not any(c.laddr.port == port for c in _listening({p.pid for p in _tree(proc.pid)})):
            assert proc.poll() is None and time.time() < deadline, (root / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield {"port": port, "pid": proc.pid, "db": root / "mlflow.db", "artifacts": root / "artifacts",
               "log": root / "server.log"}
    finally:
        _stop(proc.pid)
        log.close()


def test_mlflow_server_script_listens_only_on_loopback_by_default(mlflow_server):
    listening = _listening({p.pid for p in _tree(mlflow_server["pid"])})
    assert mlflow_server["port"] in {c.laddr.port for c in listening}
    assert {c.laddr.ip for c in listening} <= LOOPBACK, sorted({c.laddr.ip for c in listening})


def test_test_s3_server_listens_only_on_loopback(moto_s3):
    port = int(moto_s3.rsplit(":", 1)[1])
    mine = [c for c in _listening({os.getpid()}) if c.laddr.port == port]
    assert mine and {c.laddr.ip for c in mine} <= LOOPBACK


def test_every_printed_or_documented_mlflow_ui_or_serve_command_binds_loopback():
    files = [*REPO.glob("pipelines/*.py"), *REPO.glob("etc_core/**/*.py"), *REPO.glob("docs/*.md"), REPO / "README.md",
             REPO / "Makefile", *REPO.glob("infra/**/*.sh")]
    commands = [(f.name, line) for f in files for line in f.read_text().splitlines()
                if re.search(r"mlflow\s+(ui\b|models\s+serve\s+-)", line)]  # a serve command, not prose
    assert {"full.py", "quickstart.md"} <= {name for name, line in commands if "models serve" in line}
    assert [c for c in commands if not re.search(r"(--host|-h) 127\.0\.0\.1\b", c[1])] == []


# ------------------------------------------------------------------------------------------------ credentials

SECRETS = {"AWS_ACCESS_KEY_ID": "AKIAETCSECRET7Q2W3E4R", "AWS_SECRET_ACCESS_KEY": "etcSecretAccessKey/9f8e7d6c5b4a",
           "AWS_SESSION_TOKEN": "etcSessionToken+1a2b3c4d5e", "MLFLOW_TRACKING_PASSWORD": "etcTrackingPassword-5566",
           "ETC_API_TOKEN": "etcApiToken-0a9b8c7d"}
ENDPOINT_PASSWORD, TRACKING_PASSWORD = "etcEndpointPass-3141", "etcUriPass-2718"


def _found(secrets: list[str], blobs: dict[str, bytes]) -> list[tuple[str, str]]:
    return [(secret, where) for where, blob in blobs.items() for secret in secrets if secret.encode() in blob]


@pytest.mark.slow
def test_training_keeps_credentials_out_of_mlflow_logs_and_artifacts_and_ray_stays_on_loopback(
        mlflow_server, moto_s3, tmp_path):
    """A real training run with S3 shards and an MLflow server, fake AWS secrets and secret-looking variables in
    its environment, and passwords inside the endpoint and tracking URIs of its config: none of them reaches the
    MLflow store, its artifacts, Ray Train's storage or the output; every socket it opens listens on loopback."""
    from etc_core.storage import uri as storage

    storage.s3_client(moto_s3).create_bucket(Bucket="etc-secrets")
    shards = write_shard_set("s3://etc-secrets/shards", endpoint_url=moto_s3)
    endpoint = moto_s3.replace("http://", f"http://etc:{ENDPOINT_PASSWORD}@")
    tracking = f"http://etc:{TRACKING_PASSWORD}@127.0.0.1:{mlflow_server['port']}"
    out = tmp_path / "out"
    args = [sys.executable, "pipelines/train_teacher.py", f"shards.uri={shards}", f"s3.endpoint_url={endpoint}",
            f"mlflow.tracking_uri={tracking}", "mlflow.experiment=secrets", f"train.storage_path={out}/ray_results",
            "teacher.arch=pspnet18_slim", "train.max_steps=2", "train.steps_per_epoch=2", "train.batch_size=2",
            "train.val_batch_size=2", "train.pictures=1", "train.log_every=1", "ray.num_cpus=2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), **SECRETS, "MLFLOW_TRACKING_USERNAME": "etc"}  # a name, no secret
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = set()
    deadline = time.time() + 500
    while proc.poll() is None and time.time() < deadline:  # sample the sockets of the run's process tree
        for conn in _listening({p.pid for p in _tree(proc.pid)}):
            seen.add((conn.laddr.ip, conn.laddr.port, _name(conn.pid)))
        time.sleep(1)
    if proc.poll() is None:
        _stop(proc.pid)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-4000:]
    assert len(seen) >= 3, seen  # GCS, raylet, dashboard, ... were really there
    # torch.distributed's TCPStore would bind every interface ([::]) whatever MASTER_ADDR says; one-node runs
    # rendezvous through a FileStore instead (etc_core/train/backend.py), so nothing here may listen beyond loopback
    assert {ip for ip, _, _ in seen} <= LOOPBACK, sorted(seen)

    with sqlite3.connect(mlflow_server["db"]) as conn:
        store = "\n".join(conn.iterdump()).encode()  # params, tags, metric keys, run names, model versions, ...
    assert b"s3.endpoint_url" in store and b"etc:***@" in store  # the params were logged, masked
    blobs = {"MLflow store": store, "stdout": stdout.encode(), "stderr": stderr.encode(),
             "server log": mlflow_server["log"].read_bytes()}
    artifacts = [p for p in mlflow_server["artifacts"].rglob("*") if p.is_file()]
    assert any(p.name == "MLmodel" for p in artifacts) and any(p.suffix == ".png" for p in artifacts)
    blobs.update({f"artifact {p.name}": p.read_bytes() for p in artifacts})
    everything = [*SECRETS.values(), ENDPOINT_PASSWORD, TRACKING_PASSWORD]
    leaks = _found(everything, blobs)
    assert leaks == [], [(w, blobs[w][max(0, blobs[w].find(s.encode()) - 200):][:300]) for s, w in leaks]
    ray_storage = {f"ray {p}": p.read_bytes() for p in (out / "ray_results").rglob("*") if p.is_file()}
    assert ray_storage and _found(list(SECRETS.values()), ray_storage) == []


# ------------------------------------------------------------------------------------------------ checkpoints

class _Payload:
    """Unpickling this runs `touch marker`: what a malicious checkpoint does with a plain torch.load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious(path: Path, marker: Path, wrap: bool = True) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    payload = _Payload(marker)
    torch.save({"model": payload, "arch": "pspnet18_slim", "num_classes": 3} if wrap else payload, path)
    return path


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    from etc_core.train.checkpoint import load_checkpoint

    ckpt = _malicious(tmp_path / "evil" / "state.pt", tmp_path / "pwned")
    control = run([sys.executable, "-c", f"import torch; torch.load({str(ckpt)!r}, weights_only=False)"],
                  env={"PWNED": "1"})
    assert control.returncode == 0 and (tmp_path / "pwned").exists()  # the file really is malicious
    (tmp_path / "pwned").unlink()

    proc = run([*ETC, "predict", "--model", str(ckpt), "--input", str(frames_dir(tmp_path / "frames")),
                "--out", str(tmp_path / "pred")])
    assert_one_line_error(proc, "InputError", f"{ckpt}: unreadable checkpoint (UnpicklingError: Weights only load "
                                              "failed", code=2)
    with pytest.raises(Exception, match="Weights only load failed"):  # the Ray Train resume path
        load_checkpoint(str(ckpt.parent))
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pred").exists()


def test_malicious_weights_in_the_mlflow_registry_are_refused(tmp_path):
    import mlflow

    marker = tmp_path / "pwned"
    extra = tmp_path / "extra_files"
    extra.mkdir()
    (extra / "etc_model.json").write_text(json.dumps({"arch": "pspnet18_slim", "num_classes": 3}))
    _malicious(extra / "weights.pt", marker, wrap=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("evil", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    client.log_artifacts(run_id, str(extra), "model/extra_files")
    client.set_terminated(run_id)

    proc = run([*ETC, "predict", "--model", f"runs:/{run_id}/model", "--input", str(frames_dir(tmp_path / "frames")),
                "--out", str(tmp_path / "pred"), f"mlflow.tracking_uri={uri}"])
    assert_one_line_error(proc, "InputError", f"runs:/{run_id}/model: not an etc-pipeline model (UnpicklingError: "
                                              "Weights only load failed", code=2)
    assert not marker.exists() and not (tmp_path / "pred").exists()


# ------------------------------------------------------------------------------------------------ shard names

def _hand_tar(path: Path, key: str) -> None:
    """A tar whose members are `{key}.img0.png` etc., names taken literally (tarfile, not webdataset)."""
    from etc_core.data import shards

    sample = shards.encode_sample("x", np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8),
                                  np.zeros((2, 16, 16), np.float32), None, {"video": "v", "t": 0, "k": 1})
    import webdataset as wds

    buf = io.BytesIO()
    with wds.TarWriter(buf) as sink:
        sink.write(sample)
    buf.seek(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=buf) as src, tarfile.open(path, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            member.name = key + member.name[1:]  # "x.img0.png" -> f"{key}.img0.png"
            dst.addfile(member, io.BytesIO(data))


def _manifest(root: Path, paths: list[str]) -> None:
    from etc_core.data import shards

    entries = [{"path": p, "samples": 1, "bytes": 0} for p in paths]
    shards.write_manifest(str(root), {"format": shards.FORMAT, "config_hash": "x", "config": {}, "num_classes": 3,
                                      "splits": {"val": {"samples": len(paths), "shards": entries}}})


@pytest.mark.parametrize("key", ["../../escaped_000000_1", "/tmp/etc_absolute_000000_1", "a/../../b_000000_1"])
def test_shard_member_names_with_dotdot_or_absolute_paths_are_refused(tmp_path, key):
    from etc_core.data import shards
    from etc_core.errors import ShardError

    root = tmp_path / "set" / "inner"
    _hand_tar(root / "val" / "shard-000000.tar", key)
    _manifest(root, ["val/shard-000000.tar"])
    with pytest.raises(ShardError, match=r"shard-000000.tar: refusing member name .*absolute or '\.\.' path"):
        list(shards.iter_samples(str(root), "val"))
    assert files_under(tmp_path) == ["set/inner/manifest.json", "set/inner/val/shard-000000.tar"]


@pytest.mark.parametrize("path", ["../outside.tar", "/etc/hostname", "val/../../outside.tar", "pipe:touch x"])
def test_manifest_shard_paths_outside_the_set_are_refused(tmp_path, path):
    from etc_core.data import shards
    from etc_core.errors import ShardError

    _manifest(tmp_path / "set", [path])
    with pytest.raises(ShardError, match=r"manifest.json: refusing shard path .*must be relative, inside the shard"):
        list(shards.iter_samples(str(tmp_path / "set"), "val"))


# ------------------------------------------------------------------------------------------------ no shell

def test_no_shell_in_project_code():
    code = [*REPO.glob("etc_core/**/*.py"), *REPO.glob("pipelines/*.py")]
    hits = [(p.name, n) for p in code for n, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"shell\s*=\s*True|os\.system|os\.popen|[\"']pipe:", line)]
    assert hits == []


def test_shell_metacharacters_in_shards_uri_run_nothing(tmp_path):
    marker = tmp_path / "pwned"
    for uri in (f"pipe:touch {marker}; cat", f"http://127.0.0.1:1/x'; touch {marker}; '"):
        proc = run([sys.executable, "pipelines/precompute_flow.py", f"shards.uri={uri}",
                    f"data.root={tmp_path}/data", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"])
        assert_one_line_error(proc, "ConfigError", "shards.uri: ", "must be a local path or s3://bucket/prefix",
                              "refused", code=2)
    assert files_under(tmp_path) == []


def test_a_pipe_uri_on_the_command_line_never_reaches_webdataset_s_shell(tmp_path):
    """`--shards pipe:...` where a folder of that name holds a real shard set: webdataset would hand the shard
    URL to a shell (shown first), the project refuses the scheme."""
    uri = "pipe:touch pwned;cat x"
    write_shard_set(str(tmp_path / uri))  # the folder "pipe:touch pwned;cat x" under the working directory
    control = run([sys.executable, "-c", f"import webdataset as wds; wds.gopen({uri + '/val/shard-000000.tar'!r})"
                   ".read()"], cwd=tmp_path)
    # the hole is real in webdataset itself: the shell ran `touch` (its `cat` of a path that is not there may make
    # webdataset raise afterwards, depending on when it sees the exit status; that is not the point)
    assert (tmp_path / "pwned").exists(), control.stderr[-2000:]
    (tmp_path / "pwned").unlink()

    ckpt = write_checkpoint(tmp_path / "ckpt")
    proc = run([*ETC, "evaluate", "--model", str(ckpt), "--shards", uri], cwd=tmp_path)
    assert_one_line_error(proc, "ShardError", f"{uri}: shard URIs are local paths or s3://bucket/prefix; scheme "
                                              "'pipe:' refused")
    assert not (tmp_path / "pwned").exists()
