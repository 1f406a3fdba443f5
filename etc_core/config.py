"""Typed configuration: pydantic models, loaded from one YAML file plus dotted `section.key=value` overrides.

Defaults live in the model classes only; `configs/*.yaml` state what a scenario changes. Every entry point
calls `parse_args`, which turns any config problem into one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from etc_core.data.config import DataConfig
from etc_core.errors import ConfigError
from etc_core.flow.sources import FlowSourceName
from etc_core.losses.etc import LossConfig, list_terms
from etc_core.storage.paths import ENV_RE as _ENV_RE, expand_path as _expand_path, is_relative
from etc_core.storage.uri import S3Access
from etc_core.train.config import StageTrain, TrainConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class RayConfig(_Section):
    """How to reach Ray: `address=None` joins RAY_ADDRESS when set (ray job submit), else starts a local one."""

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)


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
    return value if scheme else _expand_path(value)


# backbone init: none, imagenet (torchvision's weights), or a path / s3:// URI of a torchvision-format backbone
# state dict (docs/method.md); train.head_lr_mult applies whenever the backbone starts from weights
Pretrained = Annotated[str, AfterValidator(_weights_source)]


class TeacherConfig(_Section):
    """The large teacher: trained with CE + the temporal loss (docs/method.md)."""

    arch: Arch = "pspnet50"
    HASH_OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("train",)  # unset: not in the cache key (config_hash)

    pretrained: Pretrained = "none"  # backbone init: none | imagenet | path or s3:// URI of a state dict
    loss: LossConfig = Field(default_factory=LossConfig)
    train: StageTrain = Field(default_factory=dict)  # train.* keys for the teacher only (teacher.train.max_steps=...)


class StudentLossConfig(LossConfig):
    """A student's loss: the teacher's terms plus pixel-wise and pair-wise temporal distillation (docs/method.md)."""

    kd_pixel_weight: float = Field(1.0, ge=0)
    kd_temporal_weight: float = Field(1.0, ge=0)


class StudentConfig(_Section):
    """A compact student; its teacher comes from the MLflow registry (or any models:/ or runs:/ URI)."""

    arch: Arch = "pspnet18"
    pretrained: Pretrained = "none"  # backbone init: none | imagenet | path or s3:// URI of a state dict
    HASH_OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("train",)  # unset: not in the cache key (config_hash)

    loss: StudentLossConfig = Field(default_factory=StudentLossConfig)
    train: StageTrain = Field(default_factory=dict)  # train.* keys for the student only, not its baseline
    teacher_uri: str = "models:/etc-teacher@champion"
    init_from: str | None = None  # fine-tune from: models:/name/3, runs:/<id>, a checkpoint, or `baseline` (full.py:
    # the per-frame baseline that the same pipeline run trained or reused)


class RegistryConfig(_Section):
    """When a newly registered version becomes `champion` (else it is tagged `candidate`)."""

    champion_metric: Literal["val_miou", "val_tc", "val_score"] = "val_miou"
    min_improvement: float = Field(0.0, ge=0)  # in metric points over the current champion
    score_tc_weight: float = Field(0.5, ge=0, le=1)  # val_score = (1 - w) * mIoU + w * TC


DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"


class MlflowConfig(_Section):
    """Where runs, pictures and models go. tracking_uri: None = $MLFLOW_TRACKING_URI, else SQLite under runs/."""

    tracking_uri: str | None = Field(None, validate_default=True)
    experiment: str = "etc-pipeline"
    artifact_root: str = "runs/mlartifacts"  # artifact location of an experiment created on a local store

    @field_validator("tracking_uri")
    @classmethod
    def _resolve_uri(cls, value: str | None) -> str:
        value = value or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
        if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
            return "sqlite:///" + _expand_path(value[len("sqlite:///"):])  # four slashes: absolute
        return _ENV_RE.sub(lambda m: os.environ.get(m.group(1), m.group(0)), value)

    @field_validator("artifact_root")
    @classmethod
    def _absolute_artifacts(cls, value: str) -> str:
        return _expand_path(value)


class FlowConfig(_Section):
    """Where training flow comes from (etc_core/flow/sources.py): a ptlflow model (checked before Ray starts) or the
    dataset's own."""

    source: FlowSourceName = "ground_truth"  # ground_truth: the generated data's exact flow
    model: str = "rapidflow_it1"  # any ptlflow.get_model_names() entry
    weights: str = "none"  # ptlflow checkpoint name (things, sintel, ...), a local checkpoint path, or none = random
    num_actors: int | None = Field(None, ge=1)  # flow-model actors; None: one per gpus_per_actor of the GPUs, else 1
    cpus_per_actor: int = Field(1, ge=1)  # CPUs each flow actor reserves (its torch threads on CPU)
    gpus_per_actor: float = Field(1.0, gt=0, le=1)  # on GPU nodes; 0.5 puts two flow actors on each GPU
    batch_size: int = Field(4, ge=1)  # pairs per flow-model forward pass (what fits in GPU memory)
    half: bool = False  # fp16 autocast for the flow model on CUDA (float32 on CPU)
    max_cpus: int | None = Field(None, ge=1)  # CPUs the stage's Ray Data pipeline may hold at once; None: the cluster's


class ShardsConfig(_Section):
    """The WebDataset shards the flow stage writes and training reads: a local folder or s3://bucket/prefix."""

    uri: str = "runs/demo/shards"
    k: list[int] = Field(default_factory=lambda: [1])  # frame gaps of training pairs (t, t+k); negative allowed
    max_samples_per_shard: int = Field(64, ge=1)
    max_shard_bytes: int = Field(256 * 2**20, ge=2**16)
    seed: int = 0  # shuffled assignment of videos to shards

    @field_validator("uri")
    @classmethod
    def _absolute_uri(cls, value: str) -> str:
        # webdataset would run `pipe:` URLs through a shell and http/gs/... through external tools: refuse them
        scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]+):", value)
        value = _expand_path(value)
        if (scheme and scheme.group(1) not in ("s3", "file")) or ("://" in value and not value.startswith("s3://")):
            name = (scheme.group(1) if scheme else value.split("://")[0]) + ":"
            raise ValueError(f"must be a local path or s3://bucket/prefix (scheme {name!r} refused)")
        return value.rstrip("/") if value.startswith("s3://") else value

    @field_validator("k")
    @classmethod
    def _nonzero_gaps(cls, value: list[int]) -> list[int]:
        if not value or 0 in value:
            raise ValueError("frame gaps must be a non-empty list of non-zero integers")
        return sorted(set(value), key=value.index)


class S3Config(_Section):
    """S3 client settings; credentials come only from the environment / boto3 chain, never from here."""

    endpoint_url: str | None = Field(None, validate_default=True)  # None: $AWS_ENDPOINT_URL, else real AWS
    region: str | None = None  # None: $AWS_DEFAULT_REGION / boto3's default

    @field_validator("endpoint_url")
    @classmethod
    def _resolve_endpoint(cls, value: str | None) -> str | None:
        # read once where the config is loaded (the driver), then carried by the config to every Ray worker, so
        # boto3 and pyarrow (which ignores $AWS_ENDPOINT_URL) meet the same endpoint on every node
        return value or os.environ.get("AWS_ENDPOINT_URL") or None

    @property
    def access(self) -> S3Access:
        """The S3 access every stage hands to shards, locks, checkpoints and Ray storage (etc_core.storage.uri)."""
        return S3Access(self.endpoint_url, self.region)


class ParamSpace(_Section):
    """One swept config value: `loguniform`/`uniform` in [low, high], or `choice`/`grid` among `values`."""

    type: Literal["loguniform", "uniform", "choice", "grid"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None  # grid: every value is tried (random search only)

    @model_validator(mode="after")
    def _matching_bounds(self) -> "ParamSpace":
        kind, low, high = self.type, self.low, self.high
        if kind in ("loguniform", "uniform"):
            if low is None or high is None or self.values is not None:
                raise ValueError(f"{kind} needs low and high (and no values)")
            if not low < high:
                raise ValueError(f"{kind} needs low < high, got low={low} high={high}")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"loguniform needs low > 0, got {low}")
        elif not self.values or low is not None or high is not None:
            raise ValueError(f"{kind} needs a non-empty values list (and no low/high)")
        return self


def _default_space() -> dict[str, ParamSpace]:
    """The weight of every loss term with a sweep range (etc_core.losses.etc.TERMS), then the learning rate."""
    space = {f"student.loss.{term.weight}": ParamSpace(type="loguniform", low=term.sweep[0], high=term.sweep[1])
             for term in list_terms() if term.sweep}
    return space | {"train.lr": ParamSpace(type="loguniform", low=0.001, high=0.1)}


class SweepConfig(_Section):
    """A Ray Tune sweep over student training (pipelines/sweep.py); space keys are dotted train.*/student.* paths.

    The frame gap k is not swept here: shards hold a fixed set of gaps (shards.k), so comparing gaps means
    comparing shard sets made by separate flow-stage runs.
    """

    num_samples: int = Field(8, ge=1)  # trials in all (a grid entry multiplies them)
    metric: Literal["val_miou", "val_tc", "val_score"] = "val_miou"  # maximised; every trial reports all three
    score_tc_weight: float = Field(0.5, ge=0, le=1)  # val_score = (1 - w) * mIoU + w * TC
    space: dict[str, ParamSpace] = Field(default_factory=_default_space)
    search: Literal["optuna", "random"] = "optuna"
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)  # epochs (reports) before ASHA may stop a trial
    reduction_factor: float = Field(2.0, gt=1)
    cpus_per_trial: float = Field(1.0, ge=0)  # the trial's driver; its Ray Train workers ask train.cpus_per_worker
    max_concurrent_trials: int | None = Field(None, ge=1)  # None: as many as the cluster's CPUs hold
    seed: int = 0  # of the search algorithm
    register_best: bool = False  # register the best trial's best checkpoint as etc-student-<arch>


class PipelineConfig(_Section):
    """What pipelines/full.py runs after the flow shards and the teacher."""

    baseline: bool = True  # also train the student per frame (CE only): the "without ETC" row of the table
    sweep: bool = False  # run the loss-weight sweep (pipelines/sweep.py) before the student
    ptlflow_timing_pairs: int = Field(8, ge=0)  # time flow.model (random init) on this many pairs; 0 = skip
    eval_batch_size: int = Field(8, ge=1)
    lock_wait_s: float = Field(3600, ge=0)  # s to wait for another run's lock on shards.uri / SQLite store; 0 = refuse


class EtcConfig(_Section):
    """The whole configuration; each stage reads its own section."""

    data: DataConfig = Field(default_factory=DataConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    shards: ShardsConfig = Field(default_factory=ShardsConfig)
    s3: S3Config = Field(default_factory=S3Config)
    train: TrainConfig = Field(default_factory=TrainConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    # (key, value as written) of the paths given relative: resolved against where the command started, they
    # name another folder on another node (etc_core/cluster_check.py). Not a field: not hashed, not dumped.
    _relative: tuple[tuple[str, str], ...] = PrivateAttr(default=())


def _set_dotted(tree: dict, dotted: str, value: Any, item: str) -> None:
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item}: {'.'.join(keys[: i + 1])} is a value, not a section")
        node = child
    node[keys[-1]] = value


def _describe(err: dict, model: type[BaseModel]) -> tuple[str, str]:
    """Return (dotted key, one-line reason) for the first pydantic error."""
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        section: type[BaseModel] | None = model
        for part in loc[:-1]:
            field = section.model_fields.get(part) if section else None
            section = field.annotation if field and isinstance(field.annotation, type) else None
        known = sorted(section.model_fields) if section else []
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(known)})" if known else ""
        return key, f"unknown key{hint}"
    msg = err["msg"]
    if "input" in err and not isinstance(err["input"], dict):
        msg += f", got {err['input']!r}"
    return key, msg


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> EtcConfig:
    """Load `path` (YAML; None = all defaults) and apply `section.key=value` overrides; raise ConfigError."""
    tree: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{source}:{where} invalid YAML: {getattr(e, 'problem', e)}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections")
    from_override: dict[str, str] = {}
    for item in overrides:
        dotted, sep, raw = item.partition("=")
        if not sep or not dotted or any(not k for k in dotted.split(".")):
            raise ConfigError(f"override {item!r}: expected section.key=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, dotted, value, item)
        from_override[dotted] = item
    try:
        cfg = EtcConfig.model_validate(tree)
    except ValidationError as e:
        key, reason = _describe(e.errors()[0], EtcConfig)
        where = f"override {from_override[key]}" if key in from_override else source
        raise ConfigError(f"{where}: {key}: {reason}") from None
    cfg._relative = _relative_paths(tree)
    return cfg


PATH_KEYS = ("data.root", "shards.uri", "train.storage_path", "mlflow.artifact_root")


def node_local_store(tracking_uri: str) -> bool:
    """An MLflow store on this machine's disk (sqlite:, file: or a bare path), not a server every node reaches."""
    return tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri


def _relative_paths(tree: dict) -> tuple[tuple[str, str], ...]:
    """(key, value as written) of every local path in the config tree (or its default) that is relative."""
    uri = (tree.get("mlflow") or {}).get("tracking_uri") if isinstance(tree.get("mlflow"), dict) else None
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    server = not node_local_store(uri)  # artifacts go where the server keeps them
    found = []
    for key in PATH_KEYS:
        if server and key == "mlflow.artifact_root":
            continue
        section, name = key.split(".")
        given = tree.get(section) if isinstance(tree.get(section), dict) else {}
        default = EtcConfig.model_fields[section].annotation.model_fields[name].default
        found.append((key, str(given.get(name, default))))
    for stage in ("teacher", "student"):
        given = (tree.get(stage) or {}).get("train") if isinstance(tree.get(stage), dict) else None
        if isinstance(given, dict) and "storage_path" in given:
            found.append((f"{stage}.train.storage_path", str(given["storage_path"])))
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        found.append(("mlflow.tracking_uri", uri))
    return tuple((key, value) for key, value in found if key == "mlflow.tracking_uri" or is_relative(value))


def config_hash(*sections: BaseModel) -> str:
    """A short stable hash of config sections (12 hex chars), for caching stage outputs and naming runs.

    A section's HASH_OMIT_AT_DEFAULT fields count only when they differ from their default, so a field added
    later leaves the hashes of existing configs (and the stages cached under them) as they were."""
    import hashlib
    import json

    payload = json.dumps([type(s).__name__ for s in sections] + [_hash_dump(s) for s in sections], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _hash_dump(section: BaseModel) -> dict:
    """section.model_dump without its HASH_OMIT_AT_DEFAULT fields while they hold their defaults: a key added later,
    left unset, leaves the hashes (and so the cached stages) of existing configs as they were."""
    dump = section.model_dump(mode="json")
    for name in getattr(section, "HASH_OMIT_AT_DEFAULT", ()):
        if getattr(section, name) == type(section).model_fields[name].get_default(call_default_factory=True):
            dump.pop(name, None)
    return dump


def flatten(cfg: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Flatten a config to {"section.key": value} (for MLflow params and hashing)."""
    out: dict[str, Any] = {}
    for key, value in cfg.model_dump().items():
        _flatten_into(out, f"{prefix}{key}", value)
    return out


def _flatten_into(out: dict, key: str, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten_into(out, f"{key}.{k}", v)
    else:
        out[key] = value


def parse_args(description: str, argv: list[str] | None = None,
               add_arguments=None) -> tuple[EtcConfig, argparse.Namespace]:
    """Parse `--config PATH [section.key=value ...]`; on a config error print one line and exit 2."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="dotted overrides")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"ConfigError: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return cfg, args
