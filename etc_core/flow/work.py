"""What the flow stage does for one planned shard, in whichever process runs it: read and decode its pairs,
estimate their flow, encode them and write the shard atomically.

The Ray Data pipeline of etc_core/flow/stage.py runs these steps in its workers (`read_batch`, `FlowPredictor`
or `estimate_batch`, `write_batch`: one row per shard, the shard travelling between them as one pickled
`ShardPairs`); `write_shards_sequentially` runs the same steps in one process (the benchmark's baseline). Both
write the same bytes.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import time
from dataclasses import dataclass, field

import numpy as np

from etc_core.data import flow_codec, shards
from etc_core.errors import ConfigError, DatasetError
from etc_core.flow.estimate import FlowEstimator, PairRef
from etc_core.flow.sources import FlowSource, create_flow_source
from etc_core.storage import uri as storage

log = logging.getLogger(__name__)

Sample = tuple[str, int, int, bool]  # (clip_id, t, k, frame t labelled)


@dataclass(frozen=True)
class ShardJob:
    """One planned shard: its split, index and samples in order."""

    split: str
    index: int
    samples: list[Sample]


@dataclass
class ShardPairs:
    """The decoded pairs of one shard: img0, img1 uint8 [N,H,W,3] (frames t, t+k), labels[i] uint8 [H,W] of frame t
    or None, extras[i] (label1, valid) for evaluation splits, flow float32 [N,2,H,W] once estimated."""

    job: ShardJob
    img0: np.ndarray
    img1: np.ndarray
    labels: list[np.ndarray | None]
    extras: list[dict]
    flow: np.ndarray | None = None
    actor: int = -1  # pid of the flow actor that estimated it (-1: no actor)
    startup_s: float = 0.0  # that actor's start-up (ptlflow import and model build), paid once per actor
    timings: dict = field(default_factory=dict)  # seconds per step, for the profile

    @property
    def refs(self) -> list[PairRef]:
        return [PairRef(self.job.split, clip_id, t, k) for clip_id, t, k, _ in self.job.samples]


def read_pairs(dataset, job: ShardJob) -> ShardPairs:
    """Decode the frames (and labels) of every pair of `job`, reading each clip once."""
    start = time.perf_counter()
    clips: dict[str, object] = {}
    img0, img1, labels, extras = [], [], [], []
    for clip_id, t, k, labelled in job.samples:
        if clip_id not in clips:
            clips[clip_id] = dataset.read_clip(job.split, clip_id)
        clip = clips[clip_id]
        if not 0 <= t + k < clip.num_frames:
            raise DatasetError(f"{job.split}/{clip_id}: frame {t + k} out of range ({clip.num_frames} frames)")
        extra = {}
        if job.split != "train":  # evaluation pairs: the next frame's label and the validity mask
            if (clip.labels[t + k] != 255).any():
                extra["label1"] = clip.labels[t + k]
            if k == 1 and clip.valid is not None:
                extra["valid"] = clip.valid[t]
        img0.append(clip.frames[t])
        img1.append(clip.frames[t + k])
        labels.append(clip.labels[t] if labelled else None)
        extras.append(extra)
    pairs = ShardPairs(job, np.stack(img0), np.stack(img1), labels, extras)  # [N,H,W,3] each
    pairs.timings["read_s"] = time.perf_counter() - start
    return pairs


def estimate_pairs(estimator: FlowEstimator, pairs: ShardPairs, batch_size: int, what: str) -> None:
    """Fill pairs.flow (float32 [N,2,H,W]) with `batch_size` pairs per estimator call; non-finite flow is refused
    (`what` names the model in the message): garbage flow is never written silently."""
    start = time.perf_counter()
    refs, flows = pairs.refs, []
    for lo in range(0, len(refs), batch_size):
        flow = estimator.estimate(pairs.img0[lo:lo + batch_size], pairs.img1[lo:lo + batch_size],
                                  refs[lo:lo + batch_size])  # [B,2,H,W] float32
        if not np.isfinite(flow).all():
            ref = refs[lo]
            raise ConfigError(f"flow.model: {what} gave non-finite flow for {ref.split}/{ref.clip_id} t={ref.t} "
                              f"k={ref.k}; try other weights or larger frames")
        flows.append(flow.astype(np.float32, copy=False))  # rounded to the shard's encoding when written
    pairs.flow = np.concatenate(flows)
    pairs.timings["flow_s"] = time.perf_counter() - start


def write_pairs(pairs: ShardPairs, uri: str, flow_meta: dict, flow_encoding: str, endpoint_url: str | None = None,
                region: str | None = None) -> int:
    """Encode the pairs (PNG, the flow in flow_encoding, JSON) and write them as the shard of pairs.job under uri,
    atomically, with its sidecar; returns the shard's size in bytes. flow_meta: source, flow_model, flow_weights."""
    start = time.perf_counter()
    job = pairs.job
    samples = []
    for i, (clip_id, t, k, _) in enumerate(job.samples):
        meta = {"video": clip_id, "t": t, "k": k, "split": job.split, **flow_meta}
        samples.append(shards.encode_sample(shards.sample_key(clip_id, t, k), pairs.img0[i], pairs.img1[i],
                                            pairs.flow[i], pairs.labels[i], meta, **pairs.extras[i],
                                            flow_encoding=flow_encoding))
    url = storage.join(uri, shards.shard_name(job.split, job.index))
    kept = sum(flow_codec.MEMBERS["npy"] in s for s in samples) if flow_encoding != "npy" else 0
    if kept:  # KITTI's PNG holds +-512 px: such a pair keeps its float16 flow rather than being clipped
        log.warning("%s: %d of %d pairs have flow beyond +-512 px; stored as flow.npy, not %s", url, kept,
                    len(samples), flow_encoding)
    nbytes = shards.write_shard(samples, url, endpoint_url, region)
    pairs.timings["write_s"] = time.perf_counter() - start
    return nbytes


def flow_meta(cfg, source: FlowSource | None = None) -> dict:
    """What every sample's meta.json says about its flow (cfg: EtcConfig): source, flow_model, flow_weights.
    source: cfg.flow's (made here when not given)."""
    return {"source": cfg.flow.source, **(source or create_flow_source(cfg.flow)).meta()}


def write_shards_sequentially(cfg, dataset, jobs: list[ShardJob], estimator: FlowEstimator) -> dict:
    """The plain loop: read, estimate, encode and write every job's shard in this process, in order; returns
    {(split, index): bytes}. The same steps and bytes as the stage's Ray Data pipeline."""
    sizes, source = {}, create_flow_source(cfg.flow)
    for job in jobs:
        pairs = read_pairs(dataset, job)
        estimate_pairs(estimator, pairs, cfg.flow.batch_size, source.describe())
        sizes[(job.split, job.index)] = write_pairs(pairs, cfg.shards.uri, flow_meta(cfg, source),
                                                    cfg.shards.flow_encoding, cfg.s3.endpoint_url, cfg.s3.region)
    return sizes


def steady_rate(done_at: list[tuple[float, int]]) -> float:
    """Pairs/s after the first shard was written (start-up and pipeline fill left out), from (seconds since the
    start, pairs) of each shard in the order they were written."""
    if len(done_at) < 2 or done_at[-1][0] <= done_at[0][0]:
        return 0.0
    return sum(n for _, n in done_at[1:]) / (done_at[-1][0] - done_at[0][0])


# ------------------------------------------------------------------------------ Ray Data steps (one row per shard)

def _jobs(batch: dict) -> list[ShardJob]:
    return [ShardJob(str(split), int(index), [tuple(s) for s in json.loads(samples)])
            for split, index, samples in zip(batch["split"], batch["index"], batch["samples"])]


def _pack(items: list[ShardPairs]) -> dict:
    payload = np.empty(len(items), dtype=object)
    payload[:] = [pickle.dumps(p, protocol=pickle.HIGHEST_PROTOCOL) for p in items]
    return {"payload": payload}


def _unpack(batch: dict) -> list[ShardPairs]:
    return [pickle.loads(p) for p in batch["payload"]]


def job_rows(jobs: list[ShardJob]) -> list[dict]:
    """The stage's input rows: one per shard to write (samples as JSON, plain columns for Arrow)."""
    return [{"split": j.split, "index": j.index, "samples": json.dumps(j.samples)} for j in jobs]


def read_batch(batch: dict, dataset) -> dict:
    """Ray Data step 1 (tasks): job rows -> decoded pairs."""
    return _pack([read_pairs(dataset, job) for job in _jobs(batch)])


def estimate_batch(batch: dict, source: FlowSource, dataset, batch_size: int) -> dict:
    """Ray Data step 2 for a flow source without actors (tasks), e.g. ground_truth: the dataset's exact flow."""
    items = _unpack(batch)
    estimator = source.estimator(dataset)
    for pairs in items:
        estimate_pairs(estimator, pairs, batch_size, source.describe())
    return _pack(items)


class FlowPredictor:
    """Ray Data step 2 for a flow source with actors (an actor pool), e.g. ptlflow: one model per actor, built once."""

    def __init__(self, source: FlowSource, batch_size: int):
        import logging

        start = time.perf_counter()
        logging.getLogger("ptlflow").setLevel(logging.WARNING)
        self.estimator = source.estimator()  # ptlflow: imports it, builds the model
        self.startup_s = time.perf_counter() - start
        self.batch_size, self.what = batch_size, source.describe()

    def __call__(self, batch: dict) -> dict:
        items = _unpack(batch)
        for pairs in items:
            estimate_pairs(self.estimator, pairs, self.batch_size, self.what)
            pairs.actor, pairs.startup_s = os.getpid(), self.startup_s
        return _pack(items)


def write_batch(batch: dict, uri: str, meta: dict, flow_encoding: str, endpoint_url: str | None,
                region: str | None) -> dict:
    """Ray Data step 3 (tasks): encode and write each shard; returns the small rows the driver collects."""
    rows = {name: [] for name in ("split", "index", "samples", "bytes", "actor", "startup_s", "read_s", "flow_s",
                                  "write_s")}
    for pairs in _unpack(batch):
        nbytes = write_pairs(pairs, uri, meta, flow_encoding, endpoint_url, region)
        values = {"split": pairs.job.split, "index": pairs.job.index, "samples": len(pairs.job.samples),
                  "bytes": nbytes, "actor": pairs.actor, "startup_s": pairs.startup_s,
                  **{k: pairs.timings.get(k, 0.0) for k in ("read_s", "flow_s", "write_s")}}
        for name, value in values.items():
            rows[name].append(value)
    return {name: np.asarray(values) for name, values in rows.items()}
