"""A real SQLite MLflow store: experiment set-up, nested stage runs, params without secrets, pictures."""
import numpy as np
import pytest

from etc_core.config import MlflowConfig
from etc_core.tracking import mlflow as tracking

pytestmark = pytest.mark.integration


def test_stage_runs_nest_and_log(tmp_path):
    import mlflow

    cfg = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "art"))
    assert cfg.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    with tracking.stage_run(cfg, "pipeline", params={"data.height": 32, "s3.secret_access_key": "hunter2"}) as parent:
        with tracking.stage_run(cfg, "flow", params={"flow.model": "raft_small"}) as child:
            tracking.log_metrics({"flow/pairs_per_s": 3.5}, step=0)
            tracking.log_image(np.zeros((4, 6, 3), np.uint8), "flow/pair", step=3)
    client = mlflow.MlflowClient(cfg.tracking_uri)
    p, c = client.get_run(parent.info.run_id), client.get_run(child.info.run_id)
    assert p.data.tags["etc.stage"] == "pipeline" and c.data.tags["etc.stage"] == "flow"
    assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert p.data.params == {"data.height": "32"}  # the secret never reached MLflow
    assert c.data.metrics["flow/pairs_per_s"] == 3.5
    images = [a.path for a in client.list_artifacts(child.info.run_id, "images")]  # log_image(key, step) layout
    assert len(images) == 2 and all(p.startswith("images/flow~pair+step+3+") for p in images), images
    assert c.data.tags["mlflow.loggedImages"] == "True"
    assert c.data.tags["mlflow.source.git.commit"] == tracking.git_commit() and len(tracking.git_commit()) == 40
    assert client.get_experiment(c.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert (tmp_path / "art").is_dir()  # artifacts under the configured absolute root, not ./mlruns


def test_default_uri_is_absolute_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert MlflowConfig().tracking_uri == f"sqlite:///{tmp_path}/runs/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert MlflowConfig().tracking_uri == "http://127.0.0.1:5999"


def test_git_commit_from_env_and_shards_as_input_dataset(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv(tracking.GIT_COMMIT_ENV, "0123abcd" * 5)  # what infra/submit.sh passes to a Ray job
    cfg = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "art"))
    manifest = {"format": 1, "config_hash": "x", "splits": {"train": {"samples": 4, "shards": []}}}
    with tracking.stage_run(cfg, "teacher") as run:
        logged = tracking.log_shards_input(str(tmp_path / "shards"), manifest)
    changed = tracking.shards_dataset(str(tmp_path / "shards"), {**manifest, "config_hash": "y"})
    got = mlflow.MlflowClient(cfg.tracking_uri).get_run(run.info.run_id)
    assert got.data.tags["mlflow.source.git.commit"] == "0123abcd" * 5
    (dataset_input,) = got.inputs.dataset_inputs
    assert dataset_input.dataset.digest == logged.digest != changed.digest and len(logged.digest) == 16
    assert str(tmp_path / "shards") in dataset_input.dataset.source
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
