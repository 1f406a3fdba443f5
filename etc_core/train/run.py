"""Driver side of a training stage: MLflow run, teacher from the registry, TorchTrainer, then register the best.

    result = run_training(cfg, "teacher")   # or "student"
"""
from __future__ import annotations

import logging
import math

from etc_core.config import EtcConfig, config_hash, flatten
from etc_core.data import shards
from etc_core.errors import ConfigError, EtcError, ShardError
from etc_core.tracking import mlflow as tracking
from etc_core.tracking.registry import Registered, load_weights, log_and_register
from etc_core.train.checkpoint import load_checkpoint
from etc_core.train.loop import stage_spec, train_loop_per_worker

log = logging.getLogger(__name__)


class TrainingError(EtcError):
    """Ray Train gave up (retries exhausted) or produced no checkpoint."""


def registered_name(cfg: EtcConfig, stage: str) -> str:
    """`etc-teacher` or `etc-student-<arch>`."""
    return "etc-teacher" if stage == "teacher" else f"etc-student-{cfg.student.arch}"


def stage_hash(cfg: EtcConfig, stage: str) -> str:
    """Hash of everything that determines this stage's model (data, shards, training, the stage's section)."""
    return config_hash(cfg.data, cfg.shards, cfg.train, stage_spec(cfg, stage))


def run_training(cfg: EtcConfig, stage: str, parent_run_id: str | None = None) -> dict:
    """Train `stage` ("teacher" | "student") on cfg.shards.uri with Ray Train; log, register; return a summary."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    spec, t = stage_spec(cfg, stage), cfg.train
    manifest = shards.read_manifest(cfg.shards.uri, cfg.s3.endpoint_url, cfg.s3.region)
    if manifest is None:
        raise ShardError(f"{cfg.shards.uri}/manifest.json: not found (run pipelines/precompute_flow.py first)")
    num_classes = int(manifest["num_classes"])
    tracking.setup(cfg.mlflow)  # before resolving models:/ URIs
    teacher = None
    if spec.loss.needs_teacher:
        if stage != "student":
            raise ConfigError(f"{stage}.loss: distillation weights need a teacher; only the student has one")
        teacher = ray.put(load_weights(cfg.student.teacher_uri))
    digest = stage_hash(cfg, stage)
    name = registered_name(cfg, stage)
    with tracking.stage_run(cfg.mlflow, stage, run_name=f"{stage}-{spec.arch}", parent_run_id=parent_run_id,
                            params=flatten(cfg), tags={"etc.config_hash": digest, "etc.arch": spec.arch}) as run:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"cfg": cfg.model_dump(mode="json"), "stage": stage, "num_classes": num_classes,
                               "run_id": run.info.run_id, "teacher": teacher},
            scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=t.use_gpu,
                                         resources_per_worker={"CPU": t.cpus_per_worker,
                                                               **({"GPU": 1} if t.use_gpu else {})}),
            run_config=RunConfig(
                name=f"{stage}-{spec.arch}-{digest}", storage_path=t.storage_path,
                checkpoint_config=CheckpointConfig(num_to_keep=t.num_to_keep, checkpoint_score_attribute="val_miou",
                                                   checkpoint_score_order="max"),
                failure_config=FailureConfig(max_failures=t.max_failures)))
        try:
            result = trainer.fit()
        except Exception as e:  # ControllerError / WorkerGroupError: one line, the root cause first
            raise TrainingError(f"{stage} training failed: {_root_cause(e)}") from None
        ckpt, metrics = _best(result)
        with ckpt.as_directory() as d:
            state = load_checkpoint(d)
        from etc_core.models import create_model

        model = create_model(spec.arch, num_classes=num_classes)
        model.load_state_dict(state["model"])
        best = {k: float(v) for k, v in metrics.items() if k.startswith(("val_", "train_")) and _finite(v)}
        tracking.log_metrics({f"best/{k}": v for k, v in best.items()}, step=int(state["step"]))
        registered = _register_once(model, cfg, stage, name, num_classes, best, digest, run.info.run_id,
                                    _example_shape(manifest))
    summary = {"stage": stage, "arch": spec.arch, "run_id": run.info.run_id, "step": int(state["step"]),
               "val_miou": best.get("val_miou"), "val_tc": best.get("val_tc"), "registered": registered,
               "storage": result.path}
    log.info("%s done: step %d, val mIoU %.2f, TC %.2f, %s version %s (%s)", stage, summary["step"],
             best.get("val_miou", float("nan")), best.get("val_tc", float("nan")), registered.name,
             registered.version, registered.alias)
    return summary


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _best(result):
    """(checkpoint, metrics) with the best val mIoU among the kept checkpoints, else the latest."""
    candidates = [(c, m) for c, m in (result.best_checkpoints or []) if _finite(m.get("val_miou"))]
    if candidates:
        return max(candidates, key=lambda cm: cm[1]["val_miou"])
    if result.checkpoint is None:
        raise TrainingError(f"training at {result.path} produced no checkpoint")
    return result.checkpoint, dict(result.metrics or {})


def _register_once(model, cfg: EtcConfig, stage: str, name: str, num_classes: int, metrics: dict, digest: str,
                   run_id: str, example_hw: tuple[int, int]) -> Registered:
    """Register unless a version from the same config hash and Ray run already exists (a rerun after a crash)."""
    import mlflow

    client = mlflow.MlflowClient()
    for mv in client.search_model_versions(f"name='{name}' and tag.`etc.config_hash`='{digest}'"):
        log.info("%s version %s already holds this config (%s); not registering again", name, mv.version, digest)
        aliases = list(getattr(mv, "aliases", []) or [])
        return Registered(name, str(mv.version), aliases[0] if aliases else "", f"models:/{name}/{mv.version}")
    tags = {"etc.config_hash": digest, "etc.stage": stage, "etc.arch": stage_spec(cfg, stage).arch,
            "etc.run_id": run_id, "etc.shards": cfg.shards.uri}
    return log_and_register(model, name, stage_spec(cfg, stage).arch, num_classes, metrics, tags, cfg.registry,
                            example_hw)


def _example_shape(manifest: dict) -> tuple[int, int]:
    data = manifest.get("config", {}).get("data", {})
    return int(data.get("height", 64)), int(data.get("width", 64))


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"
