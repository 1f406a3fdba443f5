"""Checks each entry point runs before any work: one function per entry point, called before init_ray.

Whatever they find is bad input (a config, a dataset tree, a store, a model URI, missing credentials): one line
and exit code 2, before Ray starts and before any MLflow run opens (docs/failure_modes.md, "Exit codes"). A check
that belongs to one entry point goes into its function here; one that needs Ray up goes into
etc_core/cluster_check.py (run right after init_ray, still before any work).

    check_flow(cfg)                      pipelines/precompute_flow.py
    check_training(cfg, stage)           pipelines/train_teacher.py, train_baseline.py, train_student.py
    check_sweep(cfg)                     pipelines/sweep.py
    check_full(cfg, force)               pipelines/full.py
    check_make_dataset(cfg)              etc-pipeline make-dataset
    check_predict / check_evaluate / check_export(cfg, args, ...)   etc-pipeline predict / evaluate / export

The inference commands check their inputs and outputs first, then the MLflow store their models are read from (it
must exist: a read creates no store), and only then load the models (etc_core/cli.py); they write nothing they were
not asked to.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from etc_core.errors import ConfigError, EtcError, StorageError, TrackingError
from etc_core.section import first_difference

if TYPE_CHECKING:  # only named as a type here
    from argparse import Namespace

    from etc_core.config import EtcConfig
    from etc_core.data.config import DataConfig


@contextmanager
def bad_input() -> Iterator[None]:
    """An EtcError raised inside is about the input: its exit code becomes 2 (a LockError keeps its 75)."""
    try:
        yield
    except EtcError as e:
        if e.exit_code == 1:
            e.exit_code = 2
        raise


def check_flow(cfg: EtcConfig, force: bool = False) -> None:
    """Flow stage: dataset tree, flow source (a ptlflow model), shard set made with this config (unless forced),
    stores."""
    with bad_input():
        _dataset(cfg)
        _flow_source(cfg)
        if not force:
            _shards_match(cfg)
        _stores(cfg)


def check_training(cfg: EtcConfig, stage: str) -> None:
    """A training stage: a GPU when it asks for one, shards there, stores usable, the teacher and init_from URIs it
    needs resolvable (`student.init_from: baseline` is found or trained by the stage itself)."""
    from etc_core.train.config import stage_spec

    warm = stage == "student" and cfg.student.init_from == "baseline"
    with bad_input():
        _gpu(cfg, ("baseline", stage) if warm else (stage,))
        _pretrained(cfg, (stage,))
        _stores(cfg, need_shards=True)
        spec = stage_spec(cfg, stage)
        if stage == "student" and spec.loss.needs_teacher:
            _model_uri("student.teacher_uri", cfg.student.teacher_uri, cfg)
        if stage == "student" and cfg.student.init_from and not warm:
            _model_uri("student.init_from", cfg.student.init_from, cfg)


def check_sweep(cfg: EtcConfig) -> None:
    """The sweep: its search space, then what training the student (and its baseline) needs."""
    from etc_core.sweep.space import check_space, may_need_teacher

    with bad_input():
        check_space(cfg)
        _gpu(cfg, ("student", "baseline") if cfg.student.init_from == "baseline" else ("student",))
        _pretrained(cfg, ("student",))
        _stores(cfg, need_shards=True)
        if may_need_teacher(cfg):
            _model_uri("student.teacher_uri", cfg.student.teacher_uri, cfg)
        if cfg.student.init_from not in (None, "baseline"):  # baseline: found or trained before the sweep
            _model_uri("student.init_from", cfg.student.init_from, cfg)


def check_full(cfg: EtcConfig, force: tuple[str, ...] = ()) -> None:
    """The whole pipeline: what the flow stage checks, the sweep's space, the --force stages, a GPU when training
    asks for one, init_from."""
    from etc_core.pipeline import training_stages
    from etc_core.sweep.space import check_space

    with bad_input():
        if "sweep" in force and not cfg.pipeline.sweep:
            raise ConfigError("--force sweep: pipeline.sweep is false, so there is no sweep to redo "
                              "(add pipeline.sweep=true)")
        if "baseline" in force and not (cfg.pipeline.baseline or cfg.student.init_from == "baseline"):
            raise ConfigError("--force baseline: pipeline.baseline is false and student.init_from is not baseline")
        if "control" in force and not cfg.pipeline.control:
            raise ConfigError("--force control: pipeline.control is false, so there is no control to redo "
                              "(add pipeline.control=true)")
        if cfg.pipeline.sweep:
            check_space(cfg)
        _gpu(cfg, training_stages(cfg))
        _pretrained(cfg, ("teacher", "student"))
        _dataset(cfg)
        _flow_source(cfg, timing=True)
        if "flow" not in force:
            _shards_match(cfg)
        _stores(cfg)
        if cfg.student.init_from not in (None, "baseline"):  # a models:/ URI resolves against the store
            _model_uri("student.init_from", cfg.student.init_from, cfg)


def check_make_dataset(cfg: EtcConfig) -> None:
    """make-dataset: data.kind is a generated kind (a real dataset's folder is never written into), and data.root holds
    no dataset of other settings."""
    from etc_core.data.generated import check_existing
    from etc_core.data.registry import dataset_kind

    with bad_input():
        if not dataset_kind(cfg.data.kind).generated:
            raise ConfigError(f"data.kind: {cfg.data.kind} is read in place, not generated; make-dataset writes "
                              f"nothing into {cfg.data.root} (check it: etc-pipeline check-dataset --kind "
                              f"{cfg.data.kind} --root {cfg.data.root})")
        check_existing(cfg.data)


def check_predict(cfg: EtcConfig, args: Namespace) -> None:
    """predict: the run's settings, --input's frames, --out writable, then the store of --model."""
    from etc_core.infer.video import open_frames

    with bad_input():
        _run_settings(args)
        open_frames(args.input)
        _writable("--out", args.out)
        _model_store(cfg, [args.model])


def check_evaluate(cfg: EtcConfig, args: Namespace, data: DataConfig | None, flow_model: str | None,
                   flow_weights: str) -> None:
    """evaluate: one source that reads (--shards' manifest, the --data tree, --input's frames) and its flow, --json
    writable, then the store of the --model URIs."""
    from etc_core.data import shards
    from etc_core.data.registry import open_dataset
    from etc_core.errors import ShardError
    from etc_core.infer.evaluate import check_sources, flow_source
    from etc_core.infer.video import open_frames

    with bad_input():
        _run_settings(args)
        check_sources(args.shards, data, args.input, flow_model)
        if args.shards and shards.read_manifest(args.shards, cfg.s3.endpoint_url, cfg.s3.region) is None:
            raise ShardError(f"{args.shards}/manifest.json: not found (--shards: a flow-stage shard set)")
        if data is not None:
            open_dataset(data).clip_ids(args.split)
        if args.input:
            open_frames(args.input)
        if flow_model is not None:
            flow_source(flow_model, flow_weights, data)
        if args.json:
            _writable("--json", args.json, folder=False)
        _model_store(cfg, args.model)


def check_export(cfg: EtcConfig, args: Namespace, formats: tuple[str, ...]) -> None:
    """export: the formats and opset, --out writable, then the store of --model."""
    from etc_core.infer.export import check_formats

    with bad_input():
        check_formats(formats, args.opset)
        _writable("--out", args.out)
        _model_store(cfg, [args.model])


def _run_settings(args: Namespace) -> None:
    """--device names a usable device, --batch-size and --half fit it."""
    from etc_core.infer.load import pick_device
    from etc_core.infer.predict import check_run

    check_run(args.batch_size, pick_device(args.device), args.half)


def _writable(flag: str, path: str, folder: bool = True) -> None:
    """`path` (a folder, or with folder=False a file) can be written: the nearest folder of it that exists is
    writable. Creates nothing."""
    given = Path(path).expanduser().absolute()
    if given.exists() and given.is_dir() != folder:
        raise StorageError(f"{flag} {path}: " + ("a file, not a folder" if folder else "a folder, not a file"))
    target = given if folder else given.parent
    while not target.exists():
        target = target.parent  # the command makes the folders below it
    if not target.is_dir():
        raise StorageError(f"{flag} {path}: {target} is a file, not a folder")
    if not os.access(target, os.W_OK | os.X_OK):
        raise StorageError(f"{flag} {path}: {target} is not writable")


def _model_store(cfg: EtcConfig, specs: list[str]) -> None:
    """The MLflow store of the models:/ and runs:/ URIs among `specs` is there and answers (bounded retries); a
    checkpoint path needs no store."""
    from etc_core.tracking.mlflow import check_store

    if any(spec.startswith(("models:/", "runs:/")) for spec in specs):
        check_store(cfg.mlflow.tracking_uri)


def _flow_source(cfg: EtcConfig, timing: bool = False) -> None:
    """The flow source can give flow for this dataset (ptlflow: a known model, weights to be had); with `timing`,
    so can the flow model that pipeline.ptlflow_timing_pairs times beside it, if any (etc_core/flow/timing.py)."""
    from etc_core.flow.sources import create_flow_source
    from etc_core.flow.timing import timed_flow

    source = create_flow_source(cfg.flow)
    source.check(cfg.data)
    timed = timed_flow(cfg, source) if timing else None
    if timed is not None:
        create_flow_source(timed).check(cfg.data)


def _gpu(cfg: EtcConfig, stages: tuple[str, ...]) -> None:
    """A stage with train.use_gpu (or its own teacher.train / student.train use_gpu) needs a CUDA GPU that torch can
    use on this machine when this process starts the Ray it trains on; joining a cluster (ray.address, RAY_ADDRESS),
    the cluster check counts the cluster's GPUs once Ray is up (etc_core/cluster_check.py)."""
    from etc_core.train.config import stage_config, stage_spec

    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        return
    asking = [s for s in stages if stage_config(cfg, s).train.use_gpu]
    if not asking:
        return
    import torch

    if torch.cuda.is_available():
        return
    own = stage_spec(cfg, asking[0]).train
    key = f"{asking[0]}.train.use_gpu" if "use_gpu" in own else "train.use_gpu"
    build = (f"a CUDA {torch.version.cuda} build: an NVIDIA GPU and driver {cuda_driver(torch.version.cuda)}"
             if torch.version.cuda else "a CPU-only build")
    raise ConfigError(f"{key}: the {asking[0]} needs a GPU, and torch {torch.__version__} ({build}) finds no CUDA "
                      f"GPU on this machine; see docs/gpu.md, or {key}=false to train on the CPU")


# NVIDIA's minimum Linux driver of a CUDA release that the locked torch is built for (CUDA 13.0 GA: CUDA Toolkit 13.0
# release notes, table "CUDA Toolkit and Corresponding Driver Versions"; docs/gpu.md)
CUDA_DRIVERS = {"13.0": "580.65.06"}


def cuda_driver(cuda: str) -> str:
    """`>= <driver>` for a CUDA version in CUDA_DRIVERS ("13.0"), else `new enough for it`."""
    found = CUDA_DRIVERS.get(cuda)
    return f">= {found}" if found else "new enough for it"


def _pretrained(cfg: EtcConfig, stages: tuple[str, ...]) -> None:
    """The backbone weights that `stages` start from (teacher.pretrained, student.pretrained) can be had (ImageNet: in
    the torch hub cache or reachable) and fit their networks: each network is built once here, before any store is
    touched. PretrainedWeightsError names the URL or the file."""
    from etc_core.models import create_model
    from etc_core.train.config import section_name

    sections = {s: getattr(cfg, section_name(s)) for s in stages}
    for spec in {id(v): v for v in sections.values()}.values():
        if spec.pretrained != "none":
            create_model(spec.arch, num_classes=1, pretrained=spec.pretrained, s3=cfg.s3.access)


def _dataset(cfg: EtcConfig) -> None:
    """A real dataset's tree is complete; a generated one at data.root was made with these settings (or is absent)."""
    from etc_core.data.registry import check_dataset

    check_dataset(cfg.data)


def _shards_match(cfg: EtcConfig) -> None:
    """shards.uri holds no shards of another config (the flow stage would refuse them after the runs opened)."""
    from etc_core.data import shards
    from etc_core.flow.stage import config_hash, stage_identity

    manifest = shards.read_manifest(cfg.shards.uri, cfg.s3.endpoint_url, cfg.s3.region)
    identity = stage_identity(cfg)
    if manifest is None or manifest.get("config_hash") == config_hash(identity):
        return
    key, old, new = first_difference(manifest.get("config", {}), identity)
    raise ConfigError(f"shards.uri: {cfg.shards.uri} holds shards made with {key}={old!r}, this config has "
                      f"{new!r}; choose another shards.uri (and data.root) or delete it, or --force flow")


def _stores(cfg: EtcConfig, need_shards: bool = False) -> None:
    """Credentials present for every s3:// location, then the shard store and MLflow answer (under the store lock:
    two runs must not create a fresh SQLite store's tables at once)."""
    from etc_core import locks
    from etc_core.data import shards
    from etc_core.entry import check_stores
    from etc_core.errors import ShardError

    _credentials(cfg)
    if need_shards and shards.read_manifest(cfg.shards.uri, cfg.s3.endpoint_url, cfg.s3.region) is None:
        # before the lock: a refusal leaves nothing behind, not even the lock file
        raise ShardError(f"{cfg.shards.uri}/manifest.json: not found (run pipelines/precompute_flow.py first)")
    with locks.hold(locks.store_lock(cfg.mlflow.tracking_uri), cfg.pipeline.lock_wait_s):
        check_stores(cfg, need_shards=need_shards)


def _credentials(cfg: EtcConfig) -> None:
    """Some AWS credentials exist when a location is on S3 (whether they are accepted, the store says next)."""
    on_s3 = [(key, value) for key, value in (("shards.uri", cfg.shards.uri), ("train.storage_path", cfg.train.storage_path),
                                            ("data.root", cfg.data.root)) if value.startswith("s3://")]
    if not on_s3:
        return
    import boto3

    if boto3.Session().get_credentials() is None:
        key, value = on_s3[0]
        raise StorageError(f"{key}: {value} is on S3 but no AWS credentials were found (AWS_ACCESS_KEY_ID / "
                           "AWS_SECRET_ACCESS_KEY, ~/.aws/credentials or an instance profile; docs/cluster.md)")


def _model_uri(key: str, uri: str, cfg: EtcConfig) -> None:
    """uri names a model that loads (registry URIs against mlflow.tracking_uri)."""
    from etc_core.infer import InputError
    from etc_core.infer.load import load_any

    try:
        load_any(uri, cfg.mlflow.tracking_uri)
    except (InputError, TrackingError) as e:
        raise ConfigError(f"{key}: {e}") from None
