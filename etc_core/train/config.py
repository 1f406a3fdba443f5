"""The `train` config section, the per-stage `teacher.train` / `student.train` overrides on top of it, and the
`teacher` and `student` sections (what each training stage trains: etc_core/train/run.py)."""
from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator

from etc_core.losses.etc import LossConfig, StudentLossConfig
from etc_core.section import Section
from etc_core.storage.paths import expand_path

if TYPE_CHECKING:  # etc_core.config imports this module
    from etc_core.config import EtcConfig


class TrainConfig(Section):
    """What teacher and student training share: Ray Train scaling, optimiser, schedule, augmentation, checkpoints."""

    max_steps: int = Field(300, ge=1)  # optimizer steps in all
    steps_per_epoch: int = Field(50, ge=1)  # validation, checkpoint and MLflow cadence
    workers: int = Field(1, ge=0)  # Ray Train workers; 0 = Ray's local mode (the loop runs in the driver)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    loader_workers: int = Field(0, ge=0)  # DataLoader processes per Ray Train worker
    batch_size: int = Field(8, ge=1)  # per worker
    val_batch_size: int = Field(8, ge=1)
    crop: tuple[int, int] | None = None  # (height, width); None = the whole frame
    scale: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0)  # backbone; heads get lr * head_lr_mult (docs/method.md)
    head_lr_mult: float = Field(10.0, gt=0)  # only when the backbone starts from weights (student.pretrained ...)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    poly_power: float = Field(0.9, ge=0)
    amp: bool = True  # mixed precision, on GPU only
    grad_clip: float | None = Field(None, gt=0)
    seed: int = 0
    log_every: int = Field(10, ge=1)
    num_to_keep: int = Field(2, ge=1)  # best checkpoints kept, by val mIoU
    max_failures: int = Field(2, ge=-1)  # worker-group restarts from the last checkpoint (-1 = forever)
    storage_path: str = "runs/ray_results"  # local path or s3://bucket/prefix
    pictures: int = Field(4, ge=0)  # val pairs drawn in the per-epoch picture grid
    placement_strategy: Literal["PACK", "SPREAD"] = "PACK"  # Ray Train workers: as few nodes as fit, or spread

    HASH_OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("placement_strategy",)  # where workers run, not what

    @field_validator("storage_path")
    @classmethod
    def _absolute_storage(cls, value: str) -> str:
        return expand_path(value)


def _train_override(value: dict[str, Any]) -> dict[str, Any]:
    """Check a per-stage override of `train` keys: known keys, valid values; returns them validated."""
    known = sorted(TrainConfig.model_fields)
    for key in value:
        if key not in TrainConfig.model_fields:
            close = difflib.get_close_matches(key, known, n=1)
            raise ValueError(f"unknown train key {key!r}" + (f" (did you mean {close[0]}?)" if close else ""))
    try:
        checked = TrainConfig.model_validate(value)
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}, got {err.get('input')!r}") from None
    return {key: getattr(checked, key) for key in value}


STAGES = ("teacher", "student", "baseline", "control")

# `teacher.train` / `student.train`: train.* keys that differ for that stage only (e.g. student.train.max_steps=100).
# Empty (the default), it is left out of the stage's cache key, so configs without it keep their hashes.
StageTrain = Annotated[dict[str, Any], AfterValidator(_train_override)]


def _registered_arch(value: str) -> str:
    from etc_core.models import is_model, list_models

    if not is_model(value):
        close = difflib.get_close_matches(value, list_models(), n=1)
        raise ValueError(f"unknown model {value!r}" + (f" (did you mean {close[0]}?)" if close else
                                                        f" (known: {', '.join(list_models())})"))
    return value


Arch = Annotated[str, AfterValidator(_registered_arch)]  # a name in etc_core.models' registry


def _weights_source(value: str) -> str:
    if value in ("none", "imagenet"):
        return value
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]+)://", value)
    if scheme and scheme.group(1) != "s3":
        raise ValueError(f"must be none, imagenet, a local path or s3://bucket/key (scheme {scheme.group(1)!r} "
                         f"refused)")
    return value if scheme else expand_path(value)


# backbone init: none, imagenet (torchvision's weights), or a path / s3:// URI of a torchvision-format backbone
# state dict (docs/method.md); train.head_lr_mult applies whenever the backbone starts from weights
Pretrained = Annotated[str, AfterValidator(_weights_source)]


class TeacherConfig(Section):
    """The large teacher: trained with CE + the temporal loss (docs/method.md)."""

    arch: Arch = "pspnet50"
    HASH_OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("train",)  # unset: not in the cache key (config_hash)

    pretrained: Pretrained = "none"  # backbone init: none | imagenet | path or s3:// URI of a state dict
    loss: LossConfig = Field(default_factory=LossConfig)
    train: StageTrain = Field(default_factory=dict)  # train.* keys for the teacher only (teacher.train.max_steps=...)


class StudentConfig(Section):
    """A compact student; its teacher comes from the MLflow registry (or any models:/ or runs:/ URI)."""

    arch: Arch = "pspnet18"
    pretrained: Pretrained = "none"  # backbone init: none | imagenet | path or s3:// URI of a state dict
    HASH_OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("train",)  # unset: not in the cache key (config_hash)

    loss: StudentLossConfig = Field(default_factory=StudentLossConfig)
    train: StageTrain = Field(default_factory=dict)  # train.* keys for the student only, not its baseline
    teacher_uri: str = "models:/etc-teacher@champion"
    init_from: str | None = None  # fine-tune from: models:/name/3, runs:/<id>, a checkpoint, or `baseline`: the
    # per-frame baseline registered from the same config, trained first when there is none (full.py,
    # train_student.py and sweep.py alike)


def merged_train(train: TrainConfig, override: dict[str, Any]) -> TrainConfig:
    """`train` with a stage's overrides applied (the section that stage trains with)."""
    return train.model_copy(update=override) if override else train


def section_name(stage: str) -> str:
    """The config section whose `train` overrides, `pretrained` and arch a stage uses: `teacher`, else `student`."""
    return "teacher" if stage == "teacher" else "student"


def stage_spec(cfg: EtcConfig, stage: str):
    """The config section a stage trains: `teacher`, `student`, `baseline` (the student trained per frame with
    cross-entropy only: the "without ETC" row every comparison needs) or `control` (the student's twin without the
    ETC terms: the same init_from, the same student.train and so the same steps, cross-entropy only; student minus
    control is the comparison that isolates the method, docs/method.md)."""
    if stage == "teacher":
        return cfg.teacher
    if stage in ("control", "baseline"):  # every ETC term's weight 0 (and the tc ramp with it); they read no teacher
        no_teacher = type(cfg.student).model_fields["teacher_uri"].default
        control = cfg.student.model_copy(update={"loss": cfg.student.loss.per_frame(), "teacher_uri": no_teacher})
        # the baseline: from the student's own init, never from student.init_from, without student.train
        return control if stage == "control" else control.model_copy(update={"init_from": None, "train": {}})
    if stage != "student":
        raise ValueError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
    return cfg.student


def stage_config(cfg: EtcConfig, stage: str) -> EtcConfig:
    """cfg as `stage` trains with it: `train` with the stage's own overrides (teacher.train / student.train; the
    baseline has none) applied, and those overrides emptied (so applying it twice changes nothing)."""
    override = stage_spec(cfg, stage).train
    if not override:
        return cfg
    section = section_name(stage)
    return cfg.model_copy(update={"train": merged_train(cfg.train, override),
                                  section: getattr(cfg, section).model_copy(update={"train": {}})})


def worker_resources(train: TrainConfig) -> dict[str, float]:
    """What a stage's Ray Train workers ask of the cluster together: {"CPU": n, "GPU": m}."""
    return {"CPU": train.workers * train.cpus_per_worker, "GPU": float(train.workers if train.use_gpu else 0)}


def trial_resources(cfg: EtcConfig) -> dict[str, float]:
    """What one sweep trial holds: its driver (sweep.cpus_per_trial) plus its student's Ray Train workers."""
    need = worker_resources(stage_config(cfg, "student").train)
    return need | {"CPU": cfg.sweep.cpus_per_trial + need["CPU"]}
