"""Compare models on one source: mIoU, TC, tc_noc, flicker, mVC (docs/conventions.md) and latency/FPS, in one pass.

Sources: a shard set (labelled pairs with the flow stage's flow), a dataset of any registered kind (every frame of
every clip of a split; the generated data's exact flow unless --flow-model names dis or a ptlflow model), or a video
without labels (TC only, flow from that model). Each model sees the same frames and the same flow, computed once, and is
scored by etc_core.metrics.SegScores, the class training validation uses. Where both frames of the pairs carry
labels the table also carries the two reference rows (`ground truth`, `stride-8 oracle`). mVC needs each clip's
frames in order: SegScores keeps the labelled frames' predictions (uint8) until the end, 2 bytes per pixel and
labelled frame per row (see etc_core/metrics/vc.py, ClipBuffer).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from etc_core.errors import ConfigError, DatasetError
from etc_core.infer import InputError
from etc_core.infer.predict import Predictor
from etc_core.metrics import REFERENCES, SegScores, reference_predictions
from etc_core.metrics.speed import measure_latency
from etc_core.storage.uri import S3Access

if TYPE_CHECKING:
    from etc_core.data.config import DataConfig

log = logging.getLogger(__name__)

# flow_of(t0, img0, img1): flow of the pairs (t0 + i, t0 + i + 1) -> float32 [P,2,H,W], project convention
FlowFn = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Row:
    """One line of the table; metrics in percent (None when the source cannot give them; a reference row has
    no latency)."""

    model: str
    arch: str
    miou: float | None
    tc: float | None
    tc_noc: float | None
    flicker_interior: float | None
    flicker_boundary: float | None
    mvc8: float | None
    mvc16: float | None
    latency_ms: float | None
    fps: float | None
    frames: int
    pairs: int


class _Scores:
    """A model's predictor (None for a reference row) and its SegScores, made once the class count is known."""

    def __init__(self, predictor: Predictor | None, reference: str | None = None):
        self.predictor, self.reference = predictor, reference
        self.scores: SegScores | None = None

    def predict(self, frames: torch.Tensor | np.ndarray, labels: torch.Tensor | None) -> torch.Tensor | None:
        """Class ids [B,H,W] of uint8 frames [B,H,W,3]; a reference row predicts from the labels (None: none)."""
        if self.predictor is not None:
            return self.predictor(frames)
        if labels is None:
            return None
        return reference_predictions(self.reference, torch.as_tensor(labels).to(self.scores.device),
                                     self.scores.num_classes)


def check_sources(shards: str | None, data: DataConfig | None, video: str | None, flow_model: str | None) -> None:
    """Exactly one source, and --flow-model where (and only where) it applies; ConfigError otherwise."""
    if sum(x is not None for x in (shards, data, video)) != 1:
        raise ConfigError("evaluate: give exactly one of --shards URI, --data DIR or --input VIDEO")
    if shards is not None and flow_model is not None:
        raise ConfigError("evaluate --shards: TC uses the shards' own flow; --flow-model applies to --data and --input")
    if video is not None and flow_model is None:
        raise ConfigError("evaluate --input: TC on a video without labels needs --flow-model (dis, or a ptlflow "
                          "model)")


def evaluate_models(models: list[tuple[str, torch.nn.Module, dict]], *, shards: str | None = None,
                    data: DataConfig | None = None, video: str | None = None, split: str = "val",
                    flow_model: str | None = None, flow_weights: str = "none", device: torch.device,
                    half: bool = False, size: tuple[int, int] | None = None, batch_size: int = 8,
                    s3: S3Access = S3Access(), references: bool = True, progress: str | None = None) -> dict:
    """Score (name, model, meta) triples on exactly one of shards / data / video; return {"source", "rows"}.
    data: a data section (any registered data.kind at data.root); s3: cfg.s3.access, where s3:// shards live;
    references: add the reference rows (not for a video); progress: a progress bar over the shards' batches with
    this title (Ray's own bar inside a Ray task, so the driver's console shows it)."""
    check_sources(shards, data, video, flow_model)
    estimator = flow_source(flow_model, flow_weights, data).estimator() if flow_model is not None else None
    scores = [_Scores(Predictor(model, device, half, size)) for _, model, _ in models]
    refs = [_Scores(None, name) for name in REFERENCES] if video is None and references else []
    if shards is not None:
        source = {"kind": "shards", "uri": shards, "split": split, "flow": "shards"}
        num_classes, shape = _score_shards(scores, refs, models, shards, split, batch_size, s3, progress)
    elif data is not None:
        flow = _flow_label(flow_model, flow_weights) if estimator else "ground_truth"
        source = {"kind": "data", "path": data.root, "dataset": data.kind, "split": split, "flow": flow}
        num_classes, shape = _score_dataset(scores, refs, models, data, split, batch_size, estimator)
    else:
        source = {"kind": "video", "path": video, "flow": _flow_label(flow_model, flow_weights)}
        num_classes, shape = _score_video(scores, models, video, batch_size, estimator)
    rows = []
    for (name, _, meta), s in zip(models, scores):
        example = torch.zeros((1, *shape, 3), dtype=torch.uint8)  # one frame at the source's resolution
        latency = measure_latency(lambda p=s.predictor, x=example: p.logits(x), device)
        rows.append(Row(name, meta["arch"], **s.scores.result(), latency_ms=latency, fps=1000 / latency,
                        frames=s.scores.frames, pairs=s.scores.pairs))
        log.info("%s: mIoU %s TC %s latency %.1f ms", name, rows[-1].miou, rows[-1].tc, latency)
    for r in refs:
        result = r.scores.result()
        if result["flicker_interior"] is not None:  # labels on both frames of the pairs: the row is meaningful
            rows.append(Row(r.reference, "reference", **result, latency_ms=None, fps=None,
                            frames=r.scores.frames, pairs=r.scores.pairs))
    return {"source": {**source, "num_classes": num_classes, "height": shape[0], "width": shape[1],
                       "device": str(device), "half": half, "size": list(size) if size else None},
            "rows": [asdict(r) for r in rows]}


def _init(scores: list[_Scores], refs: list[_Scores], models, num_classes: int | None, device: torch.device) -> None:
    for s, (_, _, meta) in zip(scores, models):
        s.scores = SegScores(max(num_classes or 0, int(meta["num_classes"])), device)
    for r in refs:
        r.scores = SegScores(num_classes, device)


def _score_shards(scores, refs, models, uri: str, split: str, batch_size: int,
                  s3: S3Access, progress: str | None = None) -> tuple[int, tuple[int, int]]:
    """Labelled pairs (img0, img1, flow, label, label1, valid) of a shard set: mIoU on img0, the rest on the pair."""
    from etc_core.data import shards as shard_io

    manifest = shard_io.read_manifest(uri, *s3)
    if manifest is None:
        raise InputError(f"{uri}: no shard set there (manifest.json not found)")
    device = scores[0].predictor.device
    _init(scores, refs, models, int(manifest["num_classes"]), device)
    shape = None
    batches = shard_io.make_loader(uri, split, batch_size, shuffle=False, s3=s3)
    if progress:
        samples = int(manifest.get("splits", {}).get(split, {}).get("samples", 0))
        batches = _bar(batches, progress, -(-samples // batch_size) or None)
    for batch in batches:
        img0, img1 = batch["img0"].permute(0, 2, 3, 1), batch["img1"].permute(0, 2, 3, 1)  # [B,H,W,3] uint8
        shape = tuple(img0.shape[1:3])
        for s in scores:
            pred = s.predict(torch.cat([img0, img1]), None)  # [2B,H,W]
            s.scores.update_batch(batch, pred[: len(img0)], pred[len(img0):])
        for r in refs:
            if "label1" in batch:
                r.scores.update_batch(batch, r.predict(None, batch["label"]), r.predict(None, batch["label1"]))
    if shape is None:
        raise InputError(f"{uri}: split {split!r} holds no samples")
    return int(manifest["num_classes"]), shape


def _bar(iterable, desc: str, total: int | None):
    """A progress bar over batches: Ray's inside a Ray task or actor (it draws in the driver's console), else tqdm."""
    import ray

    if ray.is_initialized() and ray.get_runtime_context().get_task_id() is not None:
        from ray.experimental.tqdm_ray import tqdm as ray_tqdm  # Ray's documented bar for remote code

        return ray_tqdm(iterable, desc=desc, total=total, unit="batch")
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="batch")


def _score_dataset(scores, refs, models, data: DataConfig, split: str, batch_size: int,
                   estimator) -> tuple[int, tuple]:
    """Every clip of a dataset split: mIoU on labelled frames, the rest over all consecutive pairs."""
    from etc_core.data.registry import open_dataset
    from etc_core.flow.estimate import PairRef

    try:
        ds = open_dataset(data)
        clip_ids = ds.clip_ids(split)
    except DatasetError as e:
        raise InputError(str(e)) from None
    _init(scores, refs, models, ds.num_classes, scores[0].predictor.device)
    shape = None
    for clip_id in clip_ids:
        clip = ds.read_clip(split, clip_id)
        shape = clip.frames.shape[1:3]
        if estimator is None and clip.flows is None:
            raise InputError(f"evaluate --data {data.root}: {data.kind} clips carry no exact flow; give --flow-model "
                             f"(dis, or a ptlflow model) for TC")
        if estimator is None:
            flow_of = lambda t0, img0, img1, c=clip: c.flows[t0:t0 + len(img0)]  # noqa: E731
        else:
            flow_of = lambda t0, img0, img1, c=clip_id: estimator.estimate(  # noqa: E731
                img0, img1, [PairRef(split, c, t0 + i, 1) for i in range(len(img0))])
        batches = (clip.frames[i:i + batch_size] for i in range(0, clip.num_frames, batch_size))
        _score_stream(scores + refs, batches, flow_of, labels=clip.labels, valid=clip.valid, clip=clip_id)
    if shape is None:
        raise InputError(f"{data.root}: split {split!r} holds no clips")
    return ds.num_classes, (int(shape[0]), int(shape[1]))


def _score_video(scores, models, spec: str, batch_size: int, estimator) -> tuple[int, tuple]:
    """An unlabelled video, frames dir or glob: TC only."""
    from etc_core.flow.estimate import PairRef
    from etc_core.infer.video import open_frames

    source = open_frames(spec)
    _init(scores, [], models, None, scores[0].predictor.device)
    shape: list = []

    def batches() -> Iterator[np.ndarray]:
        for frames in source.batches(batch_size):
            shape[:] = frames.shape[1:3]
            yield frames

    flow_of = lambda t0, img0, img1: estimator.estimate(  # noqa: E731
        img0, img1, [PairRef("video", spec, t0 + i, 1) for i in range(len(img0))])
    _score_stream(scores, batches(), flow_of, labels=None, valid=None)
    return max(int(m[2]["num_classes"]) for m in models), tuple(shape)


def _score_stream(scores: list[_Scores], batches: Iterator[np.ndarray], flow_of: FlowFn,
                  labels: np.ndarray | None, valid: np.ndarray | None, clip: str | None = None) -> None:
    """Predict frame batches uint8 [B,H,W,3] with every model; pairs are consecutive frames, across batch borders.

    labels uint8 [T,H,W] (255 = unlabelled) and valid bool [T-1,H,W] of the whole clip, when the source has them;
    clip: its id, for mVC.
    """
    prev_frame: np.ndarray | None = None  # the last frame of the previous batch, and each model's prediction of it
    prev_preds: list[torch.Tensor | None] = [None] * len(scores)
    t = 0
    for frames in batches:
        seq = frames if prev_frame is None else np.concatenate([prev_frame[None], frames])  # [P+1,H,W,3]
        first = t - (len(seq) - len(frames))  # frame index of seq[0]
        flow = None
        if len(seq) > 1:
            flow = torch.as_tensor(np.asarray(flow_of(first, seq[:-1], seq[1:])))  # [P,2,H,W]
        seq_labels = None if labels is None else torch.as_tensor(labels[first:first + len(seq)])
        frame_labels = None if labels is None else seq_labels[len(seq) - len(frames):]  # labels of `frames`
        for i, s in enumerate(scores):
            preds = s.predict(frames, frame_labels)
            if preds is None:
                continue
            if labels is not None:
                s.scores.update_frames(preds, frame_labels, clip, t)
            else:
                s.scores.frames += len(frames)
            seq_preds = preds if prev_preds[i] is None else torch.cat([prev_preds[i][None], preds])  # [P+1,H,W]
            if flow is not None:
                s.scores.update_pairs(seq_preds[:-1], seq_preds[1:], flow,
                                      None if seq_labels is None else seq_labels[:-1],
                                      None if seq_labels is None else seq_labels[1:],
                                      None if valid is None else torch.as_tensor(valid[first:first + len(flow)]))
            prev_preds[i] = preds[-1]
        prev_frame = frames[-1]
        t += len(frames)


def _flow_label(model: str, weights: str) -> str:
    """How the table names the flow of --flow-model: dis:<preset> or ptlflow:<model>."""
    return f"dis:{weights}" if model == "dis" else f"ptlflow:{model}"


def flow_source(model: str, weights: str, data: DataConfig | None):
    """The flow source of --flow-model, checked (the flow-source registry's entry): dis (OpenCV's DIS, `weights` its
    preset: the CLI passes flow.dis_preset) or ptlflow model `model` with `weights`."""
    from etc_core.flow.config import FlowConfig
    from etc_core.flow.dis import PRESETS
    from etc_core.flow.sources import create_flow_source

    if model == "dis" and weights not in PRESETS:
        raise ConfigError(f"flow.dis_preset: unknown preset {weights!r} (known: {', '.join(PRESETS)})")
    flow = (FlowConfig(source="dis", dis_preset=weights) if model == "dis" else
            FlowConfig(source="ptlflow", model=model, weights=weights))
    source = create_flow_source(flow)
    source.check(data)
    return source


COLUMNS = (("mIoU", "miou"), ("TC", "tc"), ("TC-noc", "tc_noc"), ("flick-int", "flicker_interior"),
           ("flick-bnd", "flicker_boundary"), ("mVC8", "mvc8"), ("mVC16", "mvc16"))


def format_table(result: dict) -> str:
    """The rows as a fixed-width table under a one-line description of the source (flicker in percent); the mVC16
    column only when some row has it (clips of more than 16 labelled frames)."""
    src = result["source"]
    where = src.get("uri") or src.get("path")
    head = (f"{src['kind']} {where}" + (f" [{src['split']}]" if "split" in src else "") +
            f", flow {src['flow']}, {src['height']}x{src['width']}, device {src['device']}")
    width = max([len("model")] + [len(r["model"]) for r in result["rows"]])
    columns = [(title, key) for title, key in COLUMNS
               if key != "mvc16" or any(r.get(key) is not None for r in result["rows"])]
    cols = (f"{'model':<{width}}  {'arch':<18}" + "".join(f" {title:>9}" for title, _ in columns) +
            f" {'latency ms':>10} {'FPS':>8} {'frames':>7}")
    fmt = lambda v, spec=".2f": "-" if v is None else format(v, spec)  # noqa: E731
    lines = [head, cols, "-" * len(cols)]
    for r in result["rows"]:
        lines.append(f"{r['model']:<{width}}  {r['arch']:<18}" + "".join(f" {fmt(r.get(key)):>9}" for _, key in columns)
                     + f" {fmt(r['latency_ms']):>10} {fmt(r['fps'], '.1f'):>8} {r['frames']:>7}")
    return "\n".join(lines)


def write_json(result: dict, path: str) -> None:
    """Write evaluate_models' result as JSON (NaN-free: missing numbers are null) via a temporary file."""
    import json
    import os

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)
