"""Driver side of a training stage: MLflow run, teacher from the registry, TorchTrainer, then register the best.

    result = run_training(cfg, "teacher")   # or "student"
"""
from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

from etc_core.data import shards
from etc_core.errors import ConfigError, EtcError, ShardError
from etc_core.section import config_hash, digest as _digest, flatten
from etc_core.tracking import mlflow as tracking
from etc_core.tracking.registry import Registered, load_weights, log_and_register
from etc_core.train.checkpoint import load_checkpoint
from etc_core.train.config import section_name, stage_config, stage_spec
from etc_core.train.loop import train_loop_per_worker

if TYPE_CHECKING:  # only named as a type here
    from etc_core.config import EtcConfig

log = logging.getLogger(__name__)


class TrainingError(EtcError):
    """Ray Train gave up (retries exhausted) or produced no checkpoint."""


def registered_name(cfg: EtcConfig, stage: str) -> str:
    """`etc-teacher`, `etc-student-<arch>`, `etc-baseline-<arch>` (the same student per frame, from its own init) or
    `etc-control-<arch>` (the student's equal-step twin without the ETC terms)."""
    return "etc-teacher" if stage == "teacher" else f"etc-{stage}-{cfg.student.arch}"


def stage_hash(cfg: EtcConfig, stage: str) -> str:
    """Hash of everything that determines this stage's model: data, shards, the stage's training (train with its
    teacher.train / student.train overrides) and the stage's section, and the backbone weights' content when it
    starts from a file (models._builder.weights_identity); another stage's settings leave it alone."""
    from etc_core.models._builder import weights_identity

    cfg = stage_config(cfg, stage)
    spec = stage_spec(cfg, stage)
    digest = config_hash(cfg.data, cfg.shards, cfg.train, spec)
    init = getattr(spec, "init_from", None)  # a whole network to start from: the backbone file is not read
    weights = weights_identity(spec.arch, spec.pretrained, cfg.s3.access) if init is None else None
    return digest if weights is None else _digest([digest, weights], 12)  # random init: the keys of before


def read_manifest(cfg: EtcConfig) -> dict:
    """The shards manifest at cfg.shards.uri (num_classes, frame size); ShardError when the flow stage has not run."""
    manifest = shards.read_manifest(cfg.shards.uri, *cfg.s3.access)
    if manifest is None:
        raise ShardError(f"{cfg.shards.uri}/manifest.json: not found (run pipelines/precompute_flow.py first)")
    return manifest


def resolve_teacher(cfg: EtcConfig, stage: str, needed: bool) -> tuple[dict, dict] | None:
    """The frozen teacher's (meta, state dict) from cfg.student.teacher_uri when `needed`, else None.

    Call tracking.setup(cfg.mlflow) first: models:/ URIs resolve against the configured registry.
    """
    if not needed:
        return None
    if stage != "student":
        raise ConfigError(f"{stage}.loss: distillation weights need a teacher; only the student has one")
    return load_weights(cfg.student.teacher_uri)


def read_pretrained(cfg: EtcConfig, stage: str, init) -> "BackboneState | None":
    """The stage's backbone weights (teacher.pretrained / student.pretrained: ImageNet through torchvision, or a
    path / s3:// URI), read once, by the driver: the workers get them through Ray's object store and never download
    or open a weights file (a GPU node may have no cache, no egress and no copy of the path). None from random
    init, and when `init` (student.init_from's weights) replaces the whole network."""
    from etc_core.models._builder import backbone_weights

    spec = stage_spec(cfg, stage)
    return None if init is not None else backbone_weights(spec.arch, spec.pretrained, cfg.s3.access)


def pretrained_tags(weights) -> dict[str, str]:
    """The run's record of its backbone weights (a BackboneState, or None): `etc.pretrained_sha256` (of the file,
    or of torchvision's cached ImageNet file) and `etc.pretrained_source` (its URI or URL); {} from random init."""
    if weights is None:
        return {}
    return {"etc.pretrained_sha256": weights.sha256, "etc.pretrained_source": weights.source}


def resolve_init(cfg: EtcConfig, stage: str, num_classes: int) -> tuple[dict, dict] | None:
    """(meta, state dict) of student.init_from for the student and its control (None when unset or another stage):
    the model to fine-tune from. Call tracking.setup(cfg.mlflow) first; ConfigError when it does not fit."""
    spec = stage_spec(cfg, stage)
    uri = getattr(spec, "init_from", None)  # the teacher has none; the baseline starts from its own init
    if not uri:
        return None
    if uri == "baseline":
        raise ConfigError("student.init_from: `baseline` is resolved by the entry points (etc_core/stages.py, "
                          "with_baseline); here give its URI (models:/etc-baseline-<arch>/<version>)")
    from etc_core.infer import InputError
    from etc_core.infer.load import load_any

    try:
        model, meta = load_any(uri, cfg.mlflow.tracking_uri)
    except InputError as e:
        raise ConfigError(f"student.init_from: {e}") from None
    if meta["arch"] != spec.arch or int(meta["num_classes"]) != num_classes:
        raise ConfigError(f"student.init_from: {uri} is a {meta['arch']} with {meta['num_classes']} classes; the "
                          f"student is a {spec.arch} with {num_classes}")
    return {"arch": meta["arch"], "num_classes": int(meta["num_classes"]), "source": uri}, model.state_dict()


def make_trainer(cfg: EtcConfig, stage: str, num_classes: int, teacher, run_id: str | None, name: str,
                 storage_path: str | None = None, callbacks: list | None = None, init=None,
                 score_tc_weight: float | None = None, backbone=None, size: tuple[int, int] | None = None):
    """A TorchTrainer running the shared loop for `stage` with cfg.train's scaling; checkpoints kept by val mIoU.

    teacher, init: ObjectRefs of (meta, state dict) or None (the frozen teacher; the weights to start from);
    backbone: an ObjectRef of the BackboneState read_pretrained gave, or None (random init, or init given);
    run_id: the MLflow run rank 0 logs to live (None: none); score_tc_weight: every report also carries
    val_score with this TC weight (a sweep's objective; None: no val_score); size: the frame size (H, W) at which rank 0
    times the model for its card (example_shape of the manifest the caller read; None: not timed).
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from etc_core.train.backend import OneNodeTorchConfig

    from etc_core.storage.uri import storage_location

    t = cfg.train
    path, filesystem = storage_location(storage_path or t.storage_path, cfg.s3.access)  # s3: at s3.endpoint_url
    return TorchTrainer(
        train_loop_per_worker, torch_config=OneNodeTorchConfig(),
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "stage": stage, "num_classes": num_classes,
                           "run_id": run_id, "teacher": teacher, "init": init, "score_tc_weight": score_tc_weight,
                           "backbone": backbone, "size": size},
        scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker,
                                                           **({"GPU": 1} if t.use_gpu else {})},
                                     placement_strategy=t.placement_strategy),
        run_config=RunConfig(
            name=name, storage_path=path, storage_filesystem=filesystem, callbacks=callbacks,
            checkpoint_config=CheckpointConfig(num_to_keep=t.num_to_keep, checkpoint_score_attribute="val_miou",
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=t.max_failures),
            logging_config=LoggingConfig(log_level="WARNING")))  # ray.train's INFO lines: its log files only


def run_training(cfg: EtcConfig, stage: str, parent_run_id: str | None = None, force: bool = False) -> dict:
    """Train `stage` (teacher | student | baseline | control) on cfg.shards.uri with Ray Train; log, register; summarise.

    The Ray Train run is named from the config hash, so rerunning an interrupted config resumes it; `force`
    starts a fresh run (and registers a new version) even when this config was trained before.
    """
    import ray

    cfg = stage_config(cfg, stage)  # train.* with this stage's own overrides
    spec = stage_spec(cfg, stage)
    manifest = read_manifest(cfg)
    num_classes = int(manifest["num_classes"])
    tracking.setup(cfg.mlflow, cfg.s3.access)  # before resolving models:/ URIs
    teacher = resolve_teacher(cfg, stage, spec.loss.needs_teacher)
    teacher_ref = ray.put(teacher) if teacher is not None else None
    init = resolve_init(cfg, stage, num_classes)
    init_ref = ray.put(init) if init is not None else None
    backbone = read_pretrained(cfg, stage, init)
    backbone_ref = ray.put(backbone) if backbone is not None else None
    digest = stage_hash(cfg, stage)
    with tracking.stage_run(cfg.mlflow, stage, run_name=f"{stage}-{spec.arch}", parent_run_id=parent_run_id,
                            params={**flatten(cfg.model_copy(update={section_name(stage): spec})),  # what it trains
                                    "pretrained": spec.pretrained},
                            tags={"etc.config_hash": digest, "etc.arch": spec.arch, **pretrained_tags(backbone)}
                            ) as run:  # its system/* metrics come from the rank-0 Train worker (train/loop.py)
        tracking.log_shards_input(cfg.shards.uri, manifest)
        trainer = make_trainer(cfg, stage, num_classes, teacher_ref, run.info.run_id,
                               name=f"{stage}-{spec.arch}-{digest}" + (time.strftime("-%Y%m%d-%H%M%S") if force else ""),
                               init=init_ref, backbone=backbone_ref, size=example_shape(manifest))
        try:
            result = trainer.fit()
        except Exception as e:  # ControllerError / WorkerGroupError: one line, the root cause first
            raise TrainingError(f"{stage} training failed: {_root_cause(e)}") from None
        ckpt, metrics = _best(result)
        with ckpt.as_directory() as d:
            state = load_checkpoint(d)
        best = best_metrics(metrics)
        tracking.log_metrics({f"best/{k}": v for k, v in best.items()}, step=int(state["step"]))
        registered = register_state(cfg, stage, state, best, num_classes, run.info.run_id, manifest,
                                    dedupe=not force, fps=metrics.get("fps"))
    summary = {"stage": stage, "arch": spec.arch, "run_id": run.info.run_id, "step": int(state["step"]),
               "val_miou": best.get("val_miou"), "val_tc": best.get("val_tc"), "registered": registered,
               "storage": result.path}
    log.info("%s done: step %d, val mIoU %.2f, TC %.2f, %s version %s (%s)", stage, summary["step"],
             best.get("val_miou", float("nan")), best.get("val_tc", float("nan")), registered.name,
             registered.version, registered.alias)
    return summary


def best_metrics(metrics: dict) -> dict[str, float]:
    """The finite train_*/val_* entries of a reported metrics dict, as floats."""
    return {k: float(v) for k, v in metrics.items() if k.startswith(("val_", "train_")) and _finite(v)}


def register_state(cfg: EtcConfig, stage: str, state: dict, metrics: dict[str, float], num_classes: int,
                   run_id: str, manifest: dict, dedupe: bool = True, fps: float | None = None) -> Registered:
    """Rebuild the model from a checkpoint's state and register it into the active MLflow run (once per config),
    with its FPS, its metrics on its LoggedModel and a model card as the version's description.

    fps: the frames/s the rank-0 Train worker timed on its device (train/loop.py); None: timed now, as a Ray task
    on a GPU node when there is one."""
    from etc_core.models import from_weights
    from etc_core.tracking.registry import resolve_version
    from etc_core.ray_utils import on_worker
    from etc_core.train.card import measure_fps, model_card

    spec = stage_spec(cfg, stage)
    model = from_weights(spec.arch, num_classes, state["model"])
    found = find_registered(cfg, stage) if dedupe else None
    if found is not None:
        log.info("%s version %s already holds this config; not registering again", found.name, found.version)
        return found
    size = example_shape(manifest)
    metrics = {**metrics, "fps": fps if _finite(fps) else on_worker(measure_fps, model, size)}
    teacher = resolve_version(cfg.student.teacher_uri) if spec.loss.needs_teacher else None
    tags = {"etc.config_hash": stage_hash(cfg, stage), "etc.stage": stage, "etc.arch": spec.arch,
            "etc.run_id": run_id, "etc.shards": cfg.shards.uri, **({"etc.teacher": teacher} if teacher else {})}
    name = registered_name(cfg, stage)
    card = model_card(cfg, stage, spec, name, metrics, manifest, size, num_classes, run_id, teacher)
    return log_and_register(model, name, spec.arch, num_classes, metrics, tags, cfg.registry, size,
                            description=card, dataset=tracking.shards_dataset(cfg.shards.uri, manifest))


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


def find_registered(cfg: EtcConfig, stage: str) -> Registered | None:
    """The newest registered version trained from this stage's exact config (tag etc.config_hash), if any."""
    import mlflow

    tracking.setup(cfg.mlflow, cfg.s3.access)
    name = registered_name(cfg, stage)
    versions = mlflow.MlflowClient().search_model_versions(
        f"name='{name}' and tag.`etc.config_hash`='{stage_hash(cfg, stage)}'")
    if not versions:
        return None
    mv = max(versions, key=lambda v: int(v.version))
    aliases = list(getattr(mv, "aliases", []) or [])
    return Registered(name, str(mv.version), aliases[0] if aliases else "", f"models:/{name}/{mv.version}")


def example_shape(manifest: dict) -> tuple[int, int]:
    """(height, width) of the frames the shards were made from (for the registered model's input example)."""
    data = manifest.get("config", {}).get("data", {})
    return int(data.get("height", 64)), int(data.get("width", 64))


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"
