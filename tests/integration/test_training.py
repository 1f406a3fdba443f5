"""Training on a real local Ray (2 CPUs) with a real SQLite MLflow: teacher, student, registry, resume.

A Ray Train worker killed mid-epoch: tests/reliability/test_faults.py.
"""
from __future__ import annotations

import hashlib
import os
import signal

import mlflow
import numpy as np
import pytest
import torch

from etc_core.config import load_config
from etc_core.models import normalize
from etc_core.tracking.registry import load_model, logged_model_id
from etc_core.train.run import run_training
from tests.conftest import registered_checkpoints, run_dirs, run_python, wait_for

pytestmark = pytest.mark.integration

FAST = ["train.batch_size=2", "train.val_batch_size=4", "train.crop=[32,48]", "train.scale=[0.8,1.25]",
        "train.pictures=2", "train.log_every=1", "teacher.arch=pspnet18_slim", "student.arch=lraspp_mobilenetv3"]


@pytest.mark.slow
def test_teacher_then_student_train_log_register_and_load(tiny_shards, tmp_path):
    cfg = load_config(None, [*tiny_shards, *run_dirs(tmp_path), *FAST, "train.max_steps=12",
                             "train.steps_per_epoch=6", "train.workers=2"])
    teacher = run_training(cfg, "teacher")
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    run = client.get_run(teacher["run_id"])
    assert run.data.tags["etc.stage"] == "teacher" and run.data.params["teacher.arch"] == "pspnet18_slim"
    losses = [m.value for m in client.get_metric_history(teacher["run_id"], "train/loss_total")]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # the loss drops
    assert [m.step for m in client.get_metric_history(teacher["run_id"], "val/miou")] == [6, 12]
    pictures = sorted(a.path.split("+timestamp+")[0] for a in client.list_artifacts(teacher["run_id"], "images")
                      if a.path.endswith(".png"))  # log_image(key, step): the UI's step slider
    assert pictures == ["images/val~pictures+step+12", "images/val~pictures+step+6"]
    champion = client.get_model_version_by_alias("etc-teacher", "champion")
    assert str(champion.version) == teacher["registered"].version and champion.tags["etc.config_hash"]
    logged = client.get_logged_model(logged_model_id(champion))  # the chosen checkpoint's metrics are its model's
    on_model = {m.key: m for m in logged.metrics}
    assert on_model["val_miou"].value == pytest.approx(teacher["val_miou"]) and on_model["fps"].value > 0
    # the speed is the rank-0 Train worker's, timed once on the device it trained on, not a second process's
    timed = min(client.get_metric_history(teacher["run_id"], "fps"), key=lambda m: m.timestamp)  # then the model's
    assert timed.step == 6 and on_model["fps"].value == pytest.approx(timed.value)
    (shards_input,) = run.inputs.dataset_inputs  # the shards are the run's input dataset, linked to the metrics
    assert shards_input.dataset.source and on_model["val_miou"].dataset_digest == shards_input.dataset.digest
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40
    assert "pspnet18_slim" in champion.description and "val mIoU" in champion.description

    student_cfg = load_config(None, [*tiny_shards, *run_dirs(tmp_path), *FAST, "train.max_steps=4",
                                     "train.steps_per_epoch=2", "train.workers=1"])
    student = run_training(student_cfg, "student")  # teacher from models:/etc-teacher@champion
    s_run = client.get_run(student["run_id"])
    kd = [m.value for m in client.get_metric_history(student["run_id"], "train/loss_kd_pixel")]
    assert kd and all(v > 0 for v in kd)  # distillation from the registered teacher was on
    assert s_run.data.params["student.teacher_uri"] == "models:/etc-teacher@champion"
    name = "etc-student-lraspp_mobilenetv3"
    uri = f"models:/{name}@champion"
    assert f"models:/etc-teacher/{teacher['registered'].version}" in \
        client.get_model_version_by_alias(name, "champion").description  # the card names the teacher version
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 48, 3), dtype=np.uint8)
    served = mlflow.pyfunc.load_model(uri)
    logits = served.predict(frames, params={"logits": True})
    assert logits.shape == (2, 6, 32, 48)  # data.num_classes defaults to 6
    assert served.predict(frames).shape == (2, 32, 48)
    rebuilt, meta = load_model(uri)  # weights-only path
    assert meta["arch"] == "lraspp_mobilenetv3"
    with torch.inference_mode():
        want = rebuilt(normalize(torch.from_numpy(frames).permute(0, 3, 1, 2))).logits
    torch.testing.assert_close(torch.from_numpy(logits), want)

    # a rerun of the same config registers nothing new (a worse version's candidate alias: test_infer; the rule's
    # min_improvement: test_champion_rule)
    again = run_training(student_cfg, "student")
    assert again["registered"].version == student["registered"].version


def _train_cmd(tiny_shards, tmp_path, ray_address: str, *extra: str) -> list[str]:
    return ["pipelines/train_teacher.py", *tiny_shards, *run_dirs(tmp_path), *FAST, f"ray.address={ray_address}",
            "train.workers=1", *extra]


@pytest.mark.slow
def test_killed_driver_resumes_from_checkpoint_step(tiny_shards, tmp_path, ray_local):
    import subprocess
    import sys

    from tests.conftest import REPO

    address = ray_local.get_runtime_context().gcs_address
    cmd = _train_cmd(tiny_shards, tmp_path, address, "train.max_steps=12", "train.steps_per_epoch=3")
    proc = subprocess.Popen([sys.executable, *cmd], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        wait_for(lambda: registered_checkpoints(tmp_path), 180, "a first checkpoint", poll_s=0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rerun = run_python(*cmd, timeout=400)  # the same config: the same Ray Train run name and storage
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from checkpoint at step" in rerun.stderr
    resumed_at = int(rerun.stderr.split("resumed from checkpoint at step ")[1].split()[0])
    assert resumed_at >= 3
    console = rerun.stdout + rerun.stderr  # our epoch lines, not Ray Train's per-report and set-up chatter
    assert "teacher epoch" in console and "teacher done" in console
    assert not [n for n in ("Reporting training result", "TrainingReport(", "Moving model to device",
                            "Checkpoint successfully created") if n in console], console[-3000:]
    again = run_python(*cmd, timeout=200)  # finished and registered: reused, nothing trained
    assert again.returncode == 0 and "etc-teacher version 1 was trained from this config before; reused" in \
        again.stdout, again.stderr[-3000:]
    assert "teacher epoch" not in again.stderr  # --force (a fresh run, a new version): test_faults


@pytest.mark.slow
def test_missing_teacher_alias_is_one_clear_line(tiny_shards, tmp_path):
    proc = run_python("pipelines/train_student.py", *tiny_shards, *run_dirs(tmp_path), *FAST,
                      "student.teacher_uri=models:/etc-teacher@nope", timeout=200)
    assert proc.returncode == 2  # bad input, found before Ray starts (the CLI's --model gives the same code)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ConfigError: student.teacher_uri: models:/etc-teacher@nope"), proc.stderr[-2000:]
    assert "started a local Ray" not in proc.stderr


@pytest.mark.slow
def test_workers_get_the_backbone_from_the_driver_never_from_its_file(tiny_shards, moto_s3, tmp_path, monkeypatch):
    """teacher.pretrained=s3://...: the driver reads the weights once and hands them over through Ray's object store.
    The file is deleted from S3 right after that read, before any worker starts: training still works (no worker
    opens it), and the run records the file's sha256 in its tags and its stage key (issue 32)."""
    import io

    import torchvision.models as tvm

    from etc_core.storage import uri as storage
    from etc_core.train import run as train_run

    storage.s3_client(moto_s3).create_bucket(Bucket="etc-weights")
    buf = io.BytesIO()
    torch.save(tvm.resnet18(weights=None).state_dict(), buf)
    storage.put_bytes(buf.getvalue(), "s3://etc-weights/r18.pth", moto_s3)
    cfg = load_config(None, [*tiny_shards, *run_dirs(tmp_path), *FAST, "teacher.arch=pspnet18",
                             "teacher.pretrained=s3://etc-weights/r18.pth", f"s3.endpoint_url={moto_s3}",
                             "train.max_steps=2", "train.steps_per_epoch=2", "train.workers=1", "train.pictures=0"])
    digest = train_run.stage_hash(cfg, "teacher")  # holds the file's sha256 (read once per process, kept)
    read = train_run.read_pretrained

    def read_then_delete(*args):
        weights = read(*args)
        storage.remove("s3://etc-weights/r18.pth", moto_s3)
        return weights

    monkeypatch.setattr(train_run, "read_pretrained", read_then_delete)
    summary = train_run.run_training(cfg, "teacher")
    assert not storage.exists("s3://etc-weights/r18.pth", moto_s3)
    tags = mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(summary["run_id"]).data.tags
    assert tags["etc.config_hash"] == digest and tags["etc.pretrained_source"] == "s3://etc-weights/r18.pth"
    assert tags["etc.pretrained_sha256"] == hashlib.sha256(buf.getvalue()).hexdigest()
