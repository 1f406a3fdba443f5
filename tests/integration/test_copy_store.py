"""etc-pipeline copy-store between two real SQLite stores: the demo's kind of experiment (a pipeline run with a stage
run nested under it: params, metric histories, a picture, the shards as input, a registered model with its LoggedModel
metrics and the champion alias) arrives whole; a rerun copies nothing; the weights load from the destination."""
from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from etc_core.cli import main as cli_main
from etc_core.config import MlflowConfig, RegistryConfig
from etc_core.models import create_model
from etc_core.tracking import mlflow as tracking
from etc_core.tracking.registry import load_model, log_and_register

pytestmark = pytest.mark.integration


def _source_store(tmp_path) -> MlflowConfig:
    cfg = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/src/mlflow.db", artifact_root=str(tmp_path / "src" / "art"))
    manifest = {"format": 1, "config_hash": "x", "splits": {"train": {"samples": 4, "shards": []}}}
    with tracking.stage_run(cfg, "pipeline", run_name="pipeline", params={"data.height": 32}):
        with tracking.stage_run(cfg, "teacher", params={"teacher.arch": "lraspp_mobilenetv3"},
                                tags={"etc.config_hash": "abc"}):
            tracking.log_shards_input(str(tmp_path / "shards"), manifest)
            for step in (1, 2, 3):
                tracking.log_metrics({"train/loss": 1.0 / step, "val/miou": 10.0 * step}, step=step)
            tracking.log_image(np.zeros((4, 6, 3), np.uint8), "val/pictures", step=3)
            torch.manual_seed(0)
            model = create_model("lraspp_mobilenetv3", num_classes=3)
            log_and_register(model, "etc-teacher", "lraspp_mobilenetv3", 3, {"val_miou": 30.0, "val_tc": 70.0},
                             {"etc.stage": "teacher"}, RegistryConfig(), (32, 48), description="a card")
    return cfg


@pytest.mark.slow
def test_copy_store_moves_runs_metrics_artifacts_and_models_once(tmp_path, capsys):
    src_cfg = _source_store(tmp_path)
    dst = f"sqlite:///{tmp_path}/dst/mlflow.db"
    (tmp_path / "dst").mkdir()
    argv = ["copy-store", f"mlflow.tracking_uri={src_cfg.tracking_uri}", "--to", dst]
    with pytest.raises(SystemExit) as done:
        cli_main(argv)
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "runs: 2 copied, 0 there before; logged models: 1 copied" in out and "etc-teacher@champion" in out

    src, client = mlflow.MlflowClient(src_cfg.tracking_uri), mlflow.MlflowClient(dst, registry_uri=dst)
    exp = client.get_experiment_by_name("etc-pipeline")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.artifact_location.startswith((tmp_path / "dst" / "mlartifacts").as_uri())  # beside the new store
    runs = {r.data.tags["etc.stage"]: r for r in client.search_runs([exp.experiment_id])}
    parent, teacher = runs["pipeline"], runs["teacher"]
    assert teacher.data.tags["mlflow.parentRunId"] == parent.info.run_id  # nested as it was
    old = src.get_run(teacher.data.tags["etc.copied_from"])
    assert teacher.data.params == old.data.params and teacher.info.status == "FINISHED"
    history = [(m.step, m.value) for m in client.get_metric_history(teacher.info.run_id, "val/miou")]
    assert sorted(history) == [(1, 10.0), (2, 20.0), (3, 30.0)]
    assert teacher.inputs.dataset_inputs[0].dataset.digest == old.inputs.dataset_inputs[0].dataset.digest
    pictures = [a.path for a in client.list_artifacts(teacher.info.run_id, "images")]
    assert pictures and all(p.startswith("images/val~pictures+step+3+") for p in pictures)

    version = client.get_model_version_by_alias("etc-teacher", "champion")
    assert version.run_id == teacher.info.run_id and version.description == "a card"
    assert version.tags["etc.stage"] == "teacher"
    model_id = version.source.removeprefix("models:/")
    assert {m.key: m.value for m in client.get_logged_model(model_id).metrics}["val_miou"] == 30.0

    mlflow.set_tracking_uri(dst)  # the weights come back from the destination store alone
    copied, meta = load_model("models:/etc-teacher@champion")
    mlflow.set_tracking_uri(src_cfg.tracking_uri)
    original, _ = load_model("models:/etc-teacher@champion")
    assert meta["arch"] == "lraspp_mobilenetv3"
    assert all(torch.equal(a, b) for a, b in zip(copied.state_dict().values(), original.state_dict().values()))

    with pytest.raises(SystemExit):  # again: everything is there already
        cli_main(argv)
    assert "runs: 0 copied, 2 there before; logged models: 0 copied; model versions: 0 copied (-), 1 there" \
        in capsys.readouterr().out
    assert len(client.search_runs([exp.experiment_id])) == 2
    assert len(client.search_model_versions("name='etc-teacher'")) == 1


def test_copy_store_from_a_missing_store_is_one_line_and_creates_nothing(tmp_path, capsys):
    argv = ["copy-store", f"mlflow.tracking_uri=sqlite:///{tmp_path}/none.db", "--to", f"sqlite:///{tmp_path}/d.db"]
    with pytest.raises(SystemExit) as done:
        cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and err.startswith("TrackingError: ") and "\n" not in err
    assert "none.db: no MLflow store there" in err
    assert list(tmp_path.iterdir()) == []
