"""The flow stage: estimate flow for every training/validation pair on Ray actors and write WebDataset shards.

Samples (docs/shards.md): train = for each labelled frame t of each train video, the pairs (t, t+k) for every k
in shards.k with 0 <= t+k < T; val and test = every consecutive pair (t, t+1) of each video (TC uses them all,
mIoU those that carry a label; they also carry the next frame's label and, for generated data, the validity
mask, which tc_noc and the flicker rate need). Videos are assigned to shards in a seed-shuffled order, shards hold at most
shards.max_samples_per_shard samples and about shards.max_shard_bytes bytes, so the plan is a pure function of
the config and a rerun (or a resumed, killed run) writes exactly the same shards.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etc_core.config import EtcConfig
from etc_core.data import shards
from etc_core.errors import ConfigError, DatasetError, StorageError
from etc_core.flow.estimate import PairRef, check_ptlflow, make_estimator
from etc_core.storage import uri as storage

log = logging.getLogger(__name__)

Sample = tuple[str, int, int, bool]  # (clip_id, t, k, frame t labelled)


@dataclass(frozen=True)
class FlowStageResult:
    manifest: dict
    pairs_computed: int  # 0 when every shard was already there
    seconds: float  # wall time spent computing and writing
    shards_written: int
    shards_skipped: int

    @property
    def pairs_per_s(self) -> float:
        return self.pairs_computed / self.seconds if self.seconds > 0 else 0.0


def stage_identity(cfg: EtcConfig) -> dict:
    """Everything that changes the shards' content (not where they go or how fast they are made)."""
    # resize only exists for real datasets; leaving it out for synthetic keeps earlier synthetic shards valid
    data = cfg.data.model_dump(mode="json", exclude={"root", *(["resize"] if cfg.data.kind == "synthetic" else [])})
    flow = {"source": cfg.flow.source}
    if cfg.flow.source == "ptlflow":
        flow.update(model=cfg.flow.model, weights=cfg.flow.weights)
    keep = ("k", "max_samples_per_shard", "max_shard_bytes", "seed")
    return {"data": data, "flow": flow, "shards": {k: getattr(cfg.shards, k) for k in keep}}


def config_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


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


def _claim(uri: str, identity: dict, cfg: EtcConfig) -> dict | None:
    """Refuse a shard URI written with another config; return its manifest when complete for this one."""
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
            old, new = _flat(other.get("config", {})), _flat(identity)
            key = next((k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)), "?")
            raise ConfigError(f"shards.uri: {uri} holds shards made with {key}={old.get(key)!r}, this config has "
                              f"{new.get(key)!r}; choose another shards.uri or delete it")
    if stamp is None:
        try:
            storage.put_bytes(json.dumps({"config_hash": digest, "config": identity}, sort_keys=True).encode(),
                              stamp_path, ep, region)
        except storage.UriError as e:
            raise ConfigError(f"shards.uri: {e}") from None
    return manifest


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _manifest_complete(manifest: dict, uri: str, cfg: EtcConfig) -> bool:
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            if storage.size(storage.join(uri, shard["path"]), cfg.s3.endpoint_url, cfg.s3.region) != shard["bytes"]:
                return False
    return True


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("etc-pipeline", "webdataset", "torch", "ptlflow", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _remove_leftovers(uri: str, cfg: EtcConfig) -> None:
    """What a killed run leaves and no reader ever trusts: local `shard-*.tar.tmp.<pid>` files, unfinished S3
    multipart uploads (invisible to listings, yet kept and billed). Only called while holding the prefix lock."""
    if not storage.is_s3(uri):
        for tmp in Path(uri).glob("*/shard-*.tar.tmp.*"):
            tmp.unlink(missing_ok=True)
        return
    try:
        aborted = storage.abort_multipart_uploads(uri, cfg.s3.endpoint_url, cfg.s3.region)
    except storage.UriError as e:
        raise StorageError(str(e)) from None
    if aborted:
        log.info("aborted %d unfinished multipart upload(s) under %s left by an earlier run", aborted, uri)


def run_flow_stage(cfg: EtcConfig, dataset=None, progress: bool = True, force: bool = False) -> FlowStageResult:
    """Write the shards and manifest for cfg at cfg.shards.uri (skipping complete shards; `force` deletes the shard
    set first); Ray must be up. Holds the prefix's lock (etc_core.locks) throughout: a second run waits for it."""
    from etc_core import locks

    uri, ep, region = cfg.shards.uri, cfg.s3.endpoint_url, cfg.s3.region
    if cfg.flow.source == "ptlflow":
        check_ptlflow(cfg.flow.model, cfg.flow.weights)
    if dataset is None:
        from etc_core.data.registry import open_dataset

        dataset = open_dataset(cfg.data)
    with locks.hold(locks.shards_lock(uri), cfg.pipeline.lock_wait_s, ep, region):
        if force:
            shards.remove_shards(uri, ep, region)
        return _write_shards(cfg, dataset, progress)


def _write_shards(cfg: EtcConfig, dataset, progress: bool) -> FlowStageResult:
    uri, ep, region = cfg.shards.uri, cfg.s3.endpoint_url, cfg.s3.region
    identity = stage_identity(cfg)
    manifest = _claim(uri, identity, cfg)
    if manifest is not None and _manifest_complete(manifest, uri, cfg):
        log.info("shards at %s are complete for this config; nothing to do", uri)
        return FlowStageResult(manifest, 0, 0.0, 0, sum(len(s["shards"]) for s in manifest["splits"].values()))
    _remove_leftovers(uri, cfg)
    plan = plan_shards(dataset, cfg)
    todo, sizes = [], {}
    for split, shard_list in plan.items():
        for index, samples in enumerate(shard_list):
            url = storage.join(uri, shards.shard_name(split, index))
            if shards.count_samples(url, ep, region) == len(samples):
                sizes[(split, index)] = storage.size(url, ep, region)
            else:
                todo.append((split, index, samples))
    skipped = len(sizes)
    log.info("flow stage: %d shards to write, %d already complete, at %s", len(todo), skipped, uri)
    start = time.perf_counter()
    pairs = sum(len(s) for _, _, s in todo)
    if todo:
        sizes.update(_compute_shards(cfg, dataset, todo, progress))
    seconds = time.perf_counter() - start
    manifest = {"format": shards.FORMAT, "config_hash": config_hash(identity), "config": identity,
                "num_classes": dataset.num_classes, "class_names": list(dataset.class_names),
                "versions": _versions(), "splits": {}}
    for split, shard_list in plan.items():
        entries = [{"path": shards.shard_name(split, i), "samples": len(s), "bytes": sizes[(split, i)]}
                   for i, s in enumerate(shard_list)]
        manifest["splits"][split] = {"samples": sum(e["samples"] for e in entries), "shards": entries}
    shards.write_manifest(uri, manifest, ep, region)  # last: readers trust only complete manifests
    return FlowStageResult(manifest, pairs, seconds, len(todo), skipped)


def _num_actors(cfg: EtcConfig) -> tuple[int, int]:
    """(actors, GPUs per actor): flow.num_actors or one per GPU, else one CPU actor."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    return (cfg.flow.num_actors or max(gpus, 1)), (1 if gpus else 0)


def _batches(dataset, todo, batch_size: int):
    """Yield (shard position, split, batch of (sample, img0, img1, label, extra)) reading one clip at a time;
    extra holds label1 (the label of t+k) and valid (the pair's validity mask) where the dataset has them."""
    cached: tuple[str, str, object] | None = None
    for position, (split, _, samples) in enumerate(todo):
        for start in range(0, len(samples), batch_size):
            batch = []
            for clip_id, t, k, labelled in samples[start:start + batch_size]:
                if cached is None or cached[:2] != (split, clip_id):
                    cached = (split, clip_id, dataset.read_clip(split, clip_id))
                clip = cached[2]
                if not 0 <= t + k < clip.num_frames:
                    raise DatasetError(f"{split}/{clip_id}: frame {t + k} out of range ({clip.num_frames} frames)")
                extra = {}
                if split != "train":  # evaluation pairs: the next frame's label and the validity mask
                    if (clip.labels[t + k] != 255).any():
                        extra["label1"] = clip.labels[t + k]
                    if k == 1 and clip.valid is not None:
                        extra["valid"] = clip.valid[t]
                batch.append(((clip_id, t, k), clip.frames[t], clip.frames[t + k],
                              clip.labels[t] if labelled else None, extra))
            yield position, split, batch


def _compute_shards(cfg: EtcConfig, dataset, todo: list, progress: bool) -> dict:
    """Run the pairs of `todo` shards through a pool of flow actors; write each shard as soon as it is whole."""
    import ray
    from ray.util import ActorPool
    from tqdm.auto import tqdm

    num_actors, gpus = _num_actors(cfg)
    actor_cls = ray.remote(_FlowActor).options(num_cpus=cfg.flow.cpus_per_actor, num_gpus=gpus,
                                                max_restarts=1, max_task_retries=1)
    actors = [actor_cls.remote(cfg.flow.source, cfg.flow.model, cfg.flow.weights, dataset) for _ in range(num_actors)]
    log.info("flow stage: %d actor(s) (%s, %d CPU, %d GPU each)", num_actors,
             cfg.flow.model if cfg.flow.source == "ptlflow" else "ground truth", cfg.flow.cpus_per_actor, gpus)
    pool = ActorPool(actors)
    window = 2 * num_actors  # bounded in-flight batches keep driver memory bounded
    waiting: deque = deque()
    buffers: dict[int, list[dict]] = {}
    sizes = {}
    meta_base = {"source": cfg.flow.source, "flow_model": cfg.flow.model if cfg.flow.source == "ptlflow" else None,
                 "flow_weights": cfg.flow.weights if cfg.flow.source == "ptlflow" else None}
    bar = tqdm(total=sum(len(s) for _, _, s in todo), desc="flow pairs", unit="pair", disable=not progress)

    def collect() -> None:
        position, split, batch = waiting.popleft()
        flows = pool.get_next()  # ordered: matches the oldest submitted batch
        if not np.isfinite(flows).all():  # never write garbage flow silently (e.g. random weights on tiny frames)
            (clip_id, t, k), *_ = batch[0]
            raise ConfigError(f"flow.model: {cfg.flow.model} (weights {cfg.flow.weights}) gave non-finite flow "
                              f"for {split}/{clip_id} t={t} k={k}; try other weights or larger frames")
        for ((clip_id, t, k), img0, img1, label, extra), flow in zip(batch, flows):
            meta = {"video": clip_id, "t": t, "k": k, "split": split, **meta_base}
            buffers.setdefault(position, []).append(
                shards.encode_sample(shards.sample_key(clip_id, t, k), img0, img1, flow, label, meta, **extra))
        bar.update(len(batch))
        split_, index, samples = todo[position]
        if len(buffers[position]) == len(samples):
            url = storage.join(cfg.shards.uri, shards.shard_name(split_, index))
            sizes[(split_, index)] = shards.write_shard(buffers.pop(position), url, cfg.s3.endpoint_url, cfg.s3.region)

    try:
        for position, split, batch in _batches(dataset, todo, cfg.flow.batch_size):
            while len(waiting) >= window:
                collect()
            refs = [PairRef(split, clip_id, t, k) for (clip_id, t, k), *_ in batch]
            img0 = np.stack([b[1] for b in batch])  # [B,H,W,3]
            img1 = np.stack([b[2] for b in batch])
            pool.submit(lambda actor, args: actor.estimate.remote(*args), (img0, img1, refs))
            waiting.append((position, split, batch))
        while waiting:
            collect()
    finally:
        bar.close()
        for actor in actors:
            ray.kill(actor)
    return sizes


class _FlowActor:
    """Holds one flow estimator (a ptlflow model or the ground truth) and turns batches of pairs into flow."""

    def __init__(self, source: str, model: str, weights: str, dataset):
        import logging as _logging

        _logging.getLogger("ptlflow").setLevel(_logging.WARNING)
        self.estimator = make_estimator(source, model, weights, dataset)

    def estimate(self, img0: np.ndarray, img1: np.ndarray, refs: list[PairRef]) -> np.ndarray:
        """img0, img1 uint8 [B,H,W,3] RGB -> flow float32 [B,2,H,W] (project convention)."""
        return self.estimator.estimate(img0, img1, refs)


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
