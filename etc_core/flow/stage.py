"""The flow stage: estimate flow for every training/validation pair and write WebDataset shards, on Ray Data.

The driver only plans and commits: it lists the shards (a pure function of the config), skips those already
complete (their sidecars, not their bodies), runs one Ray Data pipeline with a row per missing shard, and writes
the manifest last. Reading and decoding clips, the flow model (an actor pool) and encoding and the atomic write
of each shard all run in Ray workers (etc_core/flow/work.py), with Ray Data's backpressure and progress.

Samples (docs/shards.md): train = for each labelled frame t of each train video, the pairs (t, t+k) for every k
in shards.k with 0 <= t+k < T; val and test = every consecutive pair (t, t+1) of each video (TC uses them all,
mIoU those that carry a label; they also carry the next frame's label and, for generated data, the validity
mask, which tc_noc and the flicker rate need). Videos are assigned to shards in a seed-shuffled order, shards
hold at most shards.max_samples_per_shard samples and about shards.max_shard_bytes bytes, so the plan is a pure
function of the config and a rerun (or a resumed, killed run) writes exactly the same shards.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from etc_core.data import shards
from etc_core.errors import ConfigError, EtcError, StorageError
from etc_core.flow import work
from etc_core.flow.sources import FlowSource, create_flow_source
from etc_core.flow.work import Sample, ShardJob
from etc_core.section import digest as _digest, first_difference, hash_dump
from etc_core.storage import uri as storage

if TYPE_CHECKING:  # only named as a type here
    from etc_core.config import EtcConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlowStageResult:
    manifest: dict
    pairs_computed: int  # 0 when every shard was already there
    seconds: float  # wall time spent computing and writing
    shards_written: int
    shards_skipped: int
    startup_s: float = 0.0  # the slowest flow actor's start-up (ptlflow import, model build), paid once per actor
    steady_pairs_per_s: float = 0.0  # after the first shard was written: start-up and pipeline fill left out
    driver_cpu_s: float = 0.0  # CPU time of this (the driver's) process while the shards were computed
    profile: dict = field(default_factory=dict)  # seconds summed over shards: read_s, flow_s, write_s (in workers)

    @property
    def pairs_per_s(self) -> float:
        return self.pairs_computed / self.seconds if self.seconds > 0 else 0.0

    def metrics(self) -> dict[str, float]:
        """What the flow stage's MLflow run logs: flow/{split}_shards and _samples, then the work and its speed."""
        counts = {f"flow/{split}_{what}": (len(v["shards"]) if what == "shards" else v["samples"])
                  for split, v in self.manifest["splits"].items() for what in ("shards", "samples")}
        return {**counts, "flow/pairs_computed": self.pairs_computed, "flow/pairs_per_s": self.pairs_per_s,
                "flow/shards_written": self.shards_written, "flow/steady_pairs_per_s": self.steady_pairs_per_s,
                "flow/startup_s": self.startup_s, "flow/shards_skipped": self.shards_skipped}


def stage_identity(cfg: EtcConfig, source: FlowSource | None = None) -> dict:
    """Everything that changes the shards' content (not where they go or how fast they are made); source: cfg.flow's
    (made here when not given)."""
    from etc_core.data.registry import dataset_kind

    # resize only exists for real datasets; leaving it out for generated ones keeps earlier synthetic shards valid
    generated = dataset_kind(cfg.data.kind).generated
    data = {k: v for k, v in hash_dump(cfg.data).items()  # keys added later count only when set (section.py)
            if k not in ("root", *(["resize"] if generated else []))}
    flow = {"source": cfg.flow.source, **(source or create_flow_source(cfg.flow)).identity()}
    keep = ("k", "max_samples_per_shard", "max_shard_bytes", "seed")
    return {"data": data, "flow": flow, "shards": {k: getattr(cfg.shards, k) for k in keep}}


def config_hash(identity: dict) -> str:
    """The shard set's hash (the manifest's `config_hash`): etc_core.section.digest of its identity, 16 hex chars."""
    return _digest(identity, 16)


def _clip_layout(dataset, split: str, clip_id: str) -> tuple[int, int, int, list[int]]:
    """(T, H, W, labelled frames) of a clip: from the dataset's clip_layout or spec when it has one, else by reading."""
    if callable(getattr(dataset, "clip_layout", None)):  # Cityscapes/CamVid: from their index, no image decoding
        return dataset.clip_layout(split, clip_id)
    spec, labelled = getattr(dataset, "spec", None), getattr(dataset, "labelled_frames", None)
    if spec is not None and callable(labelled):
        return spec["num_frames"], spec["height"], spec["width"], list(labelled(split))
    clip = dataset.read_clip(split, clip_id)
    return clip.num_frames, clip.frames.shape[1], clip.frames.shape[2], clip.labelled


def plan_shards(dataset, cfg: EtcConfig) -> dict[str, list[list[Sample]]]:
    """The samples of every shard of every split, in order: a pure function of the config and dataset."""
    plan = {}
    for split in shards.SPLITS:
        clip_ids = list(dataset.clip_ids(split)) if split in dataset.splits else []
        random.Random(f"{cfg.shards.seed}/{split}").shuffle(clip_ids)  # deterministic video -> shard assignment
        samples: list[Sample] = []
        height = width = 1
        for clip_id in clip_ids:
            num_frames, height, width, labelled = _clip_layout(dataset, split, clip_id)
            labelled_set = set(labelled)
            if split == "train":
                samples += [(clip_id, t, k, True) for t in labelled for k in cfg.shards.k if 0 <= t + k < num_frames]
            else:
                samples += [(clip_id, t, 1, t in labelled_set) for t in range(num_frames - 1)]
        # upper bound of a sample's size: raw frames, float16 flow, label, tar headers
        sample_bytes = int(height * width * (3 + 3 + 4 + 1 + 1 + 1) * 1.01) + 8 * 1024
        per_shard = max(1, min(cfg.shards.max_samples_per_shard, cfg.shards.max_shard_bytes // sample_bytes))
        plan[split] = [samples[i:i + per_shard] for i in range(0, len(samples), per_shard)]
    return plan


def _claim(uri: str, identity: dict, cfg: EtcConfig) -> tuple[dict | None, str]:
    """Refuse a shard URI written with another config; return its manifest (None before one is written) and the flow
    encoding its shards are written in: the set's own when it was started before (its manifest's or stage.json's;
    neither says one in sets older than the key: npy), else shards.flow_encoding. The encoding is not in the hash
    (how flow is stored, not which flow), and one set never mixes two."""
    ep, region = cfg.s3.endpoint_url, cfg.s3.region
    digest = config_hash(identity)
    manifest = shards.read_manifest(uri, ep, region)
    stamp_path = storage.join(uri, "stage.json")
    try:
        stamp = None
        if storage.exists(stamp_path, ep, region):
            stamp = json.loads(storage.read_bytes(stamp_path, ep, region))
    except (storage.UriError, ValueError):
        stamp = None
    for other in (manifest, stamp):
        if other is not None and other.get("config_hash") != digest:
            key, old, new = first_difference(other.get("config", {}), identity)
            raise ConfigError(f"shards.uri: {uri} holds shards made with {key}={old!r}, this config has "
                              f"{new!r}; choose another shards.uri or delete it")
    if stamp is None:
        encoding = cfg.shards.flow_encoding
        try:
            storage.put_bytes(json.dumps({"config_hash": digest, "config": identity, "flow_encoding": encoding},
                                         sort_keys=True).encode(), stamp_path, ep, region)
        except storage.UriError as e:
            raise ConfigError(f"shards.uri: {e}") from None
    else:
        encoding = shards.flow_encoding(manifest if manifest is not None else stamp)
        if encoding != cfg.shards.flow_encoding:
            log.info("shards at %s store flow as %s and keep doing so (shards.flow_encoding=%s is for new sets: "
                     "delete this one, or run pipelines/full.py --force flow, to rewrite it)", uri, encoding,
                     cfg.shards.flow_encoding)
    return manifest, encoding


def _manifest_complete(manifest: dict, uri: str, cfg: EtcConfig) -> bool:
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            if storage.size(storage.join(uri, shard["path"]), cfg.s3.endpoint_url, cfg.s3.region) != shard["bytes"]:
                return False
    return True


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("etc-pipeline", "webdataset", "torch", "ptlflow", "opencv-python", "numpy"):  # opencv: DIS flow
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _remove_leftovers(uri: str, cfg: EtcConfig) -> None:
    """What a killed run leaves and no reader ever trusts: local `shard-*.tmp.<pid>` files (shards and sidecars),
    unfinished S3 multipart uploads (invisible to listings, yet kept and billed). Only called while holding the
    prefix lock."""
    if not storage.is_s3(uri):
        for tmp in Path(uri).glob("*/shard-*.tmp.*"):
            tmp.unlink(missing_ok=True)
        return
    try:
        aborted = storage.abort_multipart_uploads(uri, cfg.s3.endpoint_url, cfg.s3.region)
    except storage.UriError as e:
        raise StorageError(str(e)) from None
    if aborted:
        log.info("aborted %d unfinished multipart upload(s) under %s left by an earlier run", aborted, uri)


def run_flow_stage(cfg: EtcConfig, dataset=None, progress: bool = True, force: bool = False,
                   verify: bool = False, source: FlowSource | None = None) -> FlowStageResult:
    """Write the shards and manifest for cfg at cfg.shards.uri (skipping complete shards; `force` deletes the shard
    set first; `verify` reads every existing shard in full instead of trusting its sidecar); Ray must be up. Holds
    the prefix's lock (etc_core.locks) throughout: a second run waits for it. The flow source (a ptlflow model and
    its weights) is checked by the entry points' pre-flight (etc_core/preflight.py), before Ray starts; source:
    cfg.flow's (made here once when not given). The MLflow run and its metrics: etc_core/stages.py, flow_stage."""
    from etc_core import locks

    uri, ep, region = cfg.shards.uri, cfg.s3.endpoint_url, cfg.s3.region
    source = source or create_flow_source(cfg.flow)
    if source.actors:
        _flow_resources(cfg)  # actors that cannot all start: refused before anything is written
    if dataset is None:
        from etc_core.data.registry import open_dataset

        dataset = open_dataset(cfg.data)
    with locks.hold(locks.shards_lock(uri), cfg.pipeline.lock_wait_s, ep, region):
        if force:
            shards.remove_shards(uri, ep, region)
        return _write_shards(cfg, dataset, source, progress, verify)


def _finished_bytes(url: str, samples: int, cfg: EtcConfig, verify: bool) -> int | None:
    """Size of the shard at url when it is complete with `samples` samples, else None. Reads its sidecar and one
    stat/HEAD; with `verify` the whole shard instead."""
    ep, region = cfg.s3.endpoint_url, cfg.s3.region
    if verify:
        return storage.size(url, ep, region) if shards.count_samples(url, ep, region) == samples else None
    info = shards.finished_shard(url, ep, region)
    return info["bytes"] if info is not None and info["samples"] == samples else None


def _write_shards(cfg: EtcConfig, dataset, source: FlowSource, progress: bool, verify: bool) -> FlowStageResult:
    uri, ep, region = cfg.shards.uri, cfg.s3.endpoint_url, cfg.s3.region
    identity = stage_identity(cfg, source)
    manifest, encoding = _claim(uri, identity, cfg)
    if manifest is not None and not verify and _manifest_complete(manifest, uri, cfg):
        log.info("shards at %s are complete for this config; nothing to do", uri)
        return FlowStageResult(manifest, 0, 0.0, 0, sum(len(s["shards"]) for s in manifest["splits"].values()))
    _remove_leftovers(uri, cfg)
    plan = plan_shards(dataset, cfg)
    todo, sizes = [], {}
    for split, shard_list in plan.items():
        for index, samples in enumerate(shard_list):
            done = _finished_bytes(storage.join(uri, shards.shard_name(split, index)), len(samples), cfg, verify)
            if done is None:
                todo.append(ShardJob(split, index, samples))
            else:
                sizes[(split, index)] = done
    skipped = len(sizes)
    log.info("flow stage: %d shards to write, %d already complete, at %s", len(todo), skipped, uri)
    start, cpu_start = time.perf_counter(), time.process_time()
    run = _compute_shards(cfg, dataset, source, todo, encoding, progress) if todo else {"sizes": {}}
    sizes.update(run.pop("sizes"))
    seconds = time.perf_counter() - start
    manifest = {"format": shards.FORMAT, "config_hash": config_hash(identity), "config": identity,
                "num_classes": dataset.num_classes, "class_names": list(dataset.class_names),
                "flow_encoding": encoding, "versions": _versions(), "splits": {}}
    for split, shard_list in plan.items():
        entries = [{"path": shards.shard_name(split, i), "samples": len(s), "bytes": sizes[(split, i)]}
                   for i, s in enumerate(shard_list)]
        manifest["splits"][split] = {"samples": sum(e["samples"] for e in entries), "shards": entries}
    shards.write_manifest(uri, manifest, ep, region)  # last: readers trust only complete manifests
    return FlowStageResult(manifest, sum(len(j.samples) for j in todo), seconds, len(todo), skipped,
                           driver_cpu_s=time.process_time() - cpu_start, **run)


def _flow_resources(cfg: EtcConfig) -> tuple[int, float]:
    """(flow actors, GPUs per actor) for a flow source with actors (ptlflow): flow.num_actors, or one per
    flow.gpus_per_actor of the cluster's GPUs, else one CPU actor. ConfigError when they cannot all start and leave a
    CPU for the stage's read and write tasks (the pipeline would wait for ever)."""
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0), int(resources.get("CPU", 0))
    per_actor = cfg.flow.gpus_per_actor if gpus else 0.0
    actors = cfg.flow.num_actors or (max(int(gpus / per_actor), 1) if gpus else 1)
    if gpus and actors * per_actor > gpus + 1e-9:
        raise ConfigError(f"flow.num_actors: {actors} actors x flow.gpus_per_actor {per_actor} need more than the "
                          f"cluster's {gpus:g} GPUs")
    limit = min(cpus, cfg.flow.max_cpus or cpus)
    if actors * cfg.flow.cpus_per_actor >= limit:
        raise ConfigError(f"flow.num_actors: {actors} flow actor(s) x flow.cpus_per_actor {cfg.flow.cpus_per_actor} "
                          f"leave none of the {limit} CPUs the stage may use (the cluster's, flow.max_cpus) for "
                          f"reading and writing shards; use fewer actors or give Ray more CPUs (ray.num_cpus)")
    return actors, per_actor


def _pipeline(cfg: EtcConfig, dataset, source: FlowSource, todo: list[ShardJob], encoding: str):
    """The Ray Data dataset that writes the shards of `todo`: one row per shard through read (tasks), flow (an
    actor pool of flow models, or tasks for the ground truth), encode and write (tasks); rows out are small."""
    import ray
    from ray.data import ActorPoolStrategy

    ds = ray.data.from_items(work.job_rows(todo), override_num_blocks=len(todo))
    ds = ds.map_batches(work.read_batch, batch_size=1, fn_kwargs={"dataset": dataset})
    if source.actors:
        actors, gpus = _flow_resources(cfg)
        log.info("flow stage: %d flow actor(s) of %s: %d CPU, %g GPU each, %d pairs per forward pass%s", actors,
                 source.describe(), cfg.flow.cpus_per_actor, gpus, cfg.flow.batch_size,
                 ", fp16 autocast" if cfg.flow.half and gpus else "")
        ds = ds.map_batches(work.FlowPredictor, batch_size=1, num_cpus=cfg.flow.cpus_per_actor, num_gpus=gpus,
                            compute=ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=2),
                            fn_constructor_kwargs={"source": source, "batch_size": cfg.flow.batch_size})
    else:
        ds = ds.map_batches(work.estimate_batch, batch_size=1,
                            fn_kwargs={"source": source, "dataset": dataset, "batch_size": cfg.flow.batch_size})
    return ds.map_batches(work.write_batch, batch_size=1,
                          fn_kwargs={"uri": cfg.shards.uri, "meta": work.flow_meta(cfg, source),
                                     "flow_encoding": encoding, "endpoint_url": cfg.s3.endpoint_url,
                                     "region": cfg.s3.region})


def _compute_shards(cfg: EtcConfig, dataset, source: FlowSource, todo: list[ShardJob], encoding: str,
                    progress: bool) -> dict:
    """Run the Ray Data pipeline over `todo` (flow stored in `encoding`); the driver only collects one small row per
    written shard. Returns
    {"sizes": {(split, index): bytes}, "startup_s", "steady_pairs_per_s", "profile"}."""
    import ray
    from ray.data import DataContext, ExecutionResources

    ctx = DataContext.get_current().copy()
    ctx.enable_progress_bars = progress  # Ray Data's bar per operator
    ctx.raise_original_map_exception = True  # a worker's DatasetError / ConfigError reaches us as itself
    if cfg.flow.max_cpus:
        ctx.execution_options.resource_limits = ExecutionResources(cpu=cfg.flow.max_cpus)
    sizes, startup, done_at, profile = {}, {}, [], {"read_s": 0.0, "flow_s": 0.0, "write_s": 0.0}
    start = time.perf_counter()
    try:
        with DataContext.current(ctx):
            for row in _pipeline(cfg, dataset, source, todo, encoding).iter_rows():
                sizes[(str(row["split"]), int(row["index"]))] = int(row["bytes"])
                done_at.append((time.perf_counter() - start, int(row["samples"])))
                for key in profile:
                    profile[key] += float(row[key])
                actor = int(row["actor"])
                if actor >= 0 and actor not in startup:
                    startup[actor] = float(row["startup_s"])
                    log.info("flow actor pid %d: %s imported and built in %.1f s (once per actor)", actor,
                             source.describe(), startup[actor])
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, EtcError):
            raise e.cause from None
        raise
    return {"sizes": sizes, "startup_s": max(startup.values(), default=0.0),
            "steady_pairs_per_s": work.steady_rate(done_at), "profile": profile}


def pair_picture(img0: np.ndarray, img1: np.ndarray, flow: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """One row for MLflow: frame t | frame t+k | flow colour | t+k warped to t | valid mask (in frame, not occluded).

    img0, img1 uint8 [H,W,3], flow [2,H,W], valid bool [H,W] or None -> uint8 [H,5W,3]
    """
    import torch

    from etc_core.flow.warp import flow_to_color, in_frame_mask, warp

    flow_t = torch.from_numpy(np.asarray(flow, np.float32))[None]  # [1,2,H,W]
    src = torch.from_numpy(np.array(img1)).permute(2, 0, 1)[None].float()  # [1,3,H,W]
    warped = warp(src, flow_t)[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
    mask = in_frame_mask(flow_t)[0, 0].numpy()
    if valid is not None:
        mask &= valid
    mask_rgb = np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
    return np.concatenate([img0, img1, flow_to_color(flow), warped, mask_rgb], axis=1)
