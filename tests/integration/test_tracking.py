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
            tracking.log_image(np.zeros((4, 6, 3), np.uint8), "pictures/flow.png")
    client = mlflow.MlflowClient(cfg.tracking_uri)
    p, c = client.get_run(parent.info.run_id), client.get_run(child.info.run_id)
    assert p.data.tags["etc.stage"] == "pipeline" and c.data.tags["etc.stage"] == "flow"
    assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert p.data.params == {"data.height": "32"}  # the secret never reached MLflow
    assert c.data.metrics["flow/pairs_per_s"] == 3.5
    assert [a.path for a in client.list_artifacts(child.info.run_id, "pictures")] == ["pictures/flow.png"]
    assert (tmp_path / "art").is_dir()  # artifacts under the configured absolute root, not ./mlruns


def test_default_uri_is_absolute_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert MlflowConfig().tracking_uri == f"sqlite:///{tmp_path}/runs/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert MlflowConfig().tracking_uri == "http://127.0.0.1:5999"
