"""MLflow artifacts on S3 through `s3.endpoint_url` alone (issue 32): a SQLite store whose experiment keeps its
artifacts at `mlflow.artifact_root=s3://...`, a training stage that logs and registers there (its Ray Train worker's
pictures included), and `etc-pipeline evaluate` loading that model and reading s3:// shards, with neither
AWS_ENDPOINT_URL nor MLFLOW_S3_ENDPOINT_URL in the environment of any process (moto stands for S3)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from etc_core.storage import uri as storage
from tests.conftest import REPO, TINY_DATA

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TRAIN = ["teacher.arch=pspnet18_slim", "train.max_steps=2", "train.steps_per_epoch=2", "train.batch_size=2",
         "train.val_batch_size=4", "train.crop=null", "train.workers=1"]


def _run(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_artifacts_on_s3_with_the_endpoint_in_the_config_only(ray_local, moto_s3, tmp_path):
    from etc_core.config import load_config
    from etc_core.data.generated import write_dataset
    from etc_core.flow.stage import run_flow_stage

    storage.s3_client(moto_s3).create_bucket(Bucket="etc-art")
    data = [f"data.root={tmp_path / 'data'}", *TINY_DATA, "shards.uri=s3://etc-art/shards", f"s3.endpoint_url={moto_s3}"]
    cfg = load_config(None, data)
    run_flow_stage(cfg, write_dataset(cfg.data, progress=False), progress=False)
    store = [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "mlflow.artifact_root=s3://etc-art/mlflow",
             f"train.storage_path={tmp_path}/ray_results"]
    # fake keys only: without the config's endpoint, boto3 would go to AWS and fail, not to moto
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    proc = _run("pipelines/train_teacher.py", *data, *store, *TRAIN, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    objects = storage.list_files("s3://etc-art/mlflow", moto_s3)
    assert any(o.endswith("/MLmodel") for o in objects), objects  # the registered model's files
    assert any("/images/" in o or o.endswith(".png") for o in objects), objects  # the rank-0 worker's pictures
    assert not (tmp_path / "s3:").exists() and not (REPO / "s3:").exists()  # no local folder named after the URI
    proc = _run("-m", "etc_core.cli", "evaluate", "--model", "models:/etc-teacher/1", "--shards", "s3://etc-art/shards",
                "--split", "val", *store, f"s3.endpoint_url={moto_s3}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "models:/etc-teacher/1" in proc.stdout and "ground truth" in proc.stdout
