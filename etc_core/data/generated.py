"""The generated dataset on disk: writer (one Ray task per clip when Ray is up) and reader.

Layout (docs/data.md):

    ROOT/dataset.json                          manifest, written last: spec, class names, clip ids per split
    ROOT/{split}/{clip_id}/clip.json           the clip's seed and spec (a clip dir exists only when complete)
    ROOT/{split}/{clip_id}/frames/{t:06d}.png  RGB uint8
    ROOT/{split}/{clip_id}/labels/{t:06d}.png  class ids (mode L), only for labelled frames (val, test: all)
    ROOT/{split}/{clip_id}/flows/{t:06d}.npy   float32 [2,H,W], the pair (t, t+1), project convention
    ROOT/{split}/{clip_id}/valid/{t:06d}.png   255 where flows[t] is in frame and not occluded

Clip ids are `clip_{i:06d}`. Each clip is written into `{clip_id}.tmp/` and renamed when complete, and the
manifest is written last, so a killed writer leaves no half clip and a rerun redoes only what is missing.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from etc_core.data.config import DataConfig
from etc_core.data.base import IGNORE_INDEX, Clip
from etc_core.data.registry import DatasetKind
from etc_core.data.synthetic import Look, Scene, class_names, make_clip, pair_flow
from etc_core.errors import DatasetError
from etc_core.storage.images import open_image

log = logging.getLogger(__name__)

FORMAT = "etc-generated-v2"
SPLITS = ("train", "val", "test")
_SCENE_KEYS = ("object_scale", "thin_objects", "lookalike", "pair_scale", "jitter", "camera_pan", "camera_zoom")
_OMIT_AT_DEFAULT = {"camera_pan": 0.0, "camera_zoom": 0.0}  # added later: absent from the spec of a still camera
_LOOK_KEYS = ("noise", "motion_blur", "illumination", "shot_noise", "read_noise", "jpeg_quality")
_SPEC_KEYS = ("seed", "num_frames", "height", "width", "num_classes", "label_every", "label_offset",
              *_SCENE_KEYS, *_LOOK_KEYS)


def _spec(cfg: DataConfig) -> dict:
    spec = {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(cfg, k)) for k in _SPEC_KEYS)}
    return {k: v for k, v in spec.items() if _OMIT_AT_DEFAULT.get(k, object()) != v}  # datasets written before stay


def _from_spec(cls, keys: tuple[str, ...], spec: dict):
    spec = {**_OMIT_AT_DEFAULT, **spec}
    return cls(**{k: tuple(spec[k]) if isinstance(spec[k], list) else spec[k] for k in keys})


def scene_of(spec: dict) -> Scene:
    return _from_spec(Scene, _SCENE_KEYS, spec)


def look_of(spec: dict) -> Look:
    return _from_spec(Look, _LOOK_KEYS, spec)


def clip_seed(seed: int, split: str, index: int) -> int:
    """The make_clip seed of clip `index` of `split` (train and val never share a clip)."""
    return (seed * 1_000_003 + SPLITS.index(split) * 500_009 + index) % 2**63


def labelled_frames(num_frames: int, label_every: int, label_offset: int, split: str = "train") -> list[int]:
    """Frames that keep their label: in train offset, offset + every, ...; in val and test every frame (the
    flicker metric needs labels on both frames of a pair)."""
    if split != "train":
        return list(range(num_frames))
    return list(range(min(label_offset, num_frames - 1), num_frames, label_every))


def _write_clip(root: str, split: str, index: int, spec: dict) -> str:
    """Generate and atomically write one clip; skip it when a complete copy with the same spec exists."""
    clip_id = f"clip_{index:06d}"
    final = Path(root) / split / clip_id
    meta = {"seed": clip_seed(spec["seed"], split, index), "spec": spec}
    if (final / "clip.json").is_file() and json.loads((final / "clip.json").read_text()) == meta:
        return clip_id
    clip = make_clip(meta["seed"], spec["num_frames"], spec["height"], spec["width"], spec["num_classes"],
                     scene_of(spec), look_of(spec))
    tmp = final.with_name(clip_id + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("frames", "labels", "flows", "valid"):
        (tmp / sub).mkdir(parents=True)
    keep = set(labelled_frames(spec["num_frames"], spec["label_every"], spec["label_offset"], split))
    for t in range(clip.num_frames):
        Image.fromarray(clip.frames[t]).save(tmp / "frames" / f"{t:06d}.png")
        if t in keep:
            Image.fromarray(clip.labels[t], mode="L").save(tmp / "labels" / f"{t:06d}.png")
        if t + 1 < clip.num_frames:
            np.save(tmp / "flows" / f"{t:06d}.npy", clip.flows[t])
            Image.fromarray(clip.valid[t].astype(np.uint8) * 255, mode="L").save(tmp / "valid" / f"{t:06d}.png")
    (tmp / "clip.json").write_text(json.dumps(meta))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return clip_id


def check_existing(cfg: DataConfig) -> bool:
    """True when cfg.root holds a complete generated dataset of this config, False when it holds none; DatasetError
    (naming the first differing key) when it holds one made with other settings."""
    manifest_path = Path(cfg.root) / "dataset.json"
    if not manifest_path.is_file():
        return False
    spec, counts = _spec(cfg), cfg.split_sizes
    try:
        old = json.loads(manifest_path.read_text())
    except ValueError as e:
        raise DatasetError(f"{manifest_path}: not valid JSON ({e})") from None
    if old.get("spec") == spec and {s: len(ids) for s, ids in old.get("splits", {}).items()} == counts:
        return True
    want = {**_OMIT_AT_DEFAULT, **spec, "num_videos": sum(counts.values()), "val_videos": counts["val"], "test_videos": counts["test"]}
    have = {**_OMIT_AT_DEFAULT, **old.get("spec", {}), "num_videos": sum(map(len, old.get("splits", {}).values())),
            "val_videos": len(old.get("splits", {}).get("val", [])),
            "test_videos": len(old.get("splits", {}).get("test", []))}
    key = next(k for k in want if have.get(k) != want[k])
    raise DatasetError(f"{manifest_path}: generated with data.{key}={have.get(key)!r}, config asks for "
                       f"{want[key]!r}; choose another data.root or delete it")


def write_dataset(cfg: DataConfig, progress: bool = True) -> GeneratedDataset:
    """Write cfg.num_videos generated clips (train and val) under cfg.root; return the reader.

    Runs one Ray task per clip when Ray is initialised (see etc_core.ray_utils.init_ray), else in this process.
    An existing dataset with the same spec is reused as is; one with another spec is an error.
    """
    root = Path(cfg.root)
    spec = _spec(cfg)
    counts = cfg.split_sizes
    manifest_path = root / "dataset.json"
    if check_existing(cfg):
        log.info("dataset at %s already complete, reusing it", root)
        return GeneratedDataset(root)
    jobs = [(split, i) for split in SPLITS for i in range(counts[split])]
    bar = tqdm(total=len(jobs), desc="generate clips", unit="clip", disable=not progress)
    ids = _run_jobs(str(root), jobs, spec, bar)
    bar.close()
    manifest = {"format": FORMAT, "spec": spec, "class_names": class_names(cfg.num_classes),
                "labelled_frames": {split: labelled_frames(cfg.num_frames, cfg.label_every, cfg.label_offset, split)
                                    for split in SPLITS},
                "splits": {split: sorted(i for s, i in ids if s == split) for split in SPLITS}}
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, manifest_path)
    return GeneratedDataset(root)


def _run_jobs(root: str, jobs: list[tuple[str, int]], spec: dict, bar) -> list[tuple[str, str]]:
    import ray

    if not ray.is_initialized():
        done = []
        for split, i in jobs:
            done.append((split, _write_clip(root, split, i, spec)))
            bar.update(1)
        return done
    remote = ray.remote(num_cpus=1, max_retries=2)(_write_clip)
    pending = {remote.remote(root, split, i, spec): split for split, i in jobs}
    done = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        split = pending.pop(ready[0])
        done.append((split, ray.get(ready[0])))
        bar.update(1)
    return done


class GeneratedDataset:
    """Reader for the layout above; implements etc_core.data.base.VideoDataset."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        manifest_path = self.root / "dataset.json"
        if not manifest_path.is_file():
            raise DatasetError(f"{manifest_path}: not found (generate the dataset first: etc-pipeline make-dataset)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{manifest_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if manifest.get("format") != FORMAT:
            raise DatasetError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        self.spec: dict = manifest["spec"]
        self.num_classes: int = self.spec["num_classes"]
        self.class_names: list[str] = manifest["class_names"]
        self._labelled: dict[str, list[int]] = manifest["labelled_frames"]
        self._splits: dict[str, list[str]] = manifest["splits"]

    @property
    def splits(self) -> list[str]:
        return [s for s in self._splits if self._splits[s]]

    def labelled_frames(self, split: str) -> list[int]:
        """Indices of the labelled frames of every clip of `split`."""
        return list(self._labelled[split])

    def clip_ids(self, split: str) -> list[str]:
        if split not in self._splits:
            raise DatasetError(f"{self.root}: no split {split!r} (have {', '.join(self._splits)})")
        return list(self._splits[split])

    def read_clip(self, split: str, clip_id: str) -> Clip:
        """Load frames, labels (255 on unlabelled frames), ground-truth flows and valid masks."""
        d = self.root / split / clip_id
        n, h, w = self.spec["num_frames"], self.spec["height"], self.spec["width"]
        frames = np.stack([self._png(d / "frames" / f"{t:06d}.png", (h, w, 3)) for t in range(n)])
        labels = np.full((n, h, w), IGNORE_INDEX, np.uint8)
        for t in self.labelled_frames(split):
            labels[t] = self._png(d / "labels" / f"{t:06d}.png", (h, w))
        flows = np.stack([self._npy(d / "flows" / f"{t:06d}.npy", (2, h, w)) for t in range(n - 1)])
        valid = np.stack([self._png(d / "valid" / f"{t:06d}.png", (h, w)) > 0 for t in range(n - 1)])
        return Clip(frames=frames, labels=labels, flows=flows, valid=valid)

    def pair_flow(self, split: str, clip_id: str, t: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact ground-truth flow of the pair (t, t+k), any k: (float32 [2,H,W], valid bool [H,W])."""
        meta_path = self.root / split / clip_id / "clip.json"
        try:
            seed = json.loads(meta_path.read_text())["seed"]
        except (OSError, ValueError, KeyError) as e:
            raise DatasetError(f"{meta_path}: unreadable ({e})") from None
        s = self.spec
        return pair_flow(seed, s["num_frames"], s["height"], s["width"], s["num_classes"], t, k, scene_of(s))

    @staticmethod
    def _png(path: Path, shape: tuple) -> np.ndarray:
        with open_image(path) as im:
            arr = np.asarray(im)
        if arr.shape != shape:
            raise DatasetError(f"{path}: shape {arr.shape}, expected {shape}")
        return arr

    @staticmethod
    def _npy(path: Path, shape: tuple) -> np.ndarray:
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise DatasetError(f"{path}: missing") from None
        except ValueError as e:
            raise DatasetError(f"{path}: unreadable array ({e})") from None
        if arr.shape != shape:
            raise DatasetError(f"{path}: shape {arr.shape}, expected {shape}")
        return arr.astype(np.float32, copy=False)

    def summary(self) -> str:
        """A few lines describing the dataset (printed by the demo)."""
        s = self.spec
        lines = [f"generated video dataset at {self.root}",
                 f"  {s['num_frames']} frames of {s['height']}x{s['width']} per clip, {self.num_classes} classes: "
                 f"{', '.join(self.class_names)}",
                 f"  labelled frames per train clip: {len(self._labelled['train'])} (every {s['label_every']}, "
                 f"from {s['label_offset']}), every frame in val and test; flow pairs per clip: "
                 f"{s['num_frames'] - 1}"]
        for split in self.splits:
            n = len(self._splits[split])
            lines.append(f"  {split}: {n} clips, {n * s['num_frames']} frames, "
                         f"{n * len(self._labelled[split])} labelled")
        return "\n".join(lines)


def _open(cfg: DataConfig, generate: bool = False) -> GeneratedDataset:
    return write_dataset(cfg) if generate else GeneratedDataset(cfg.root)


# data.kind=synthetic: written from the data.* keys, checked against them before Ray starts, with exact flow
KIND = DatasetKind(open=_open, check=check_existing, generated=True, exact_flow=True)
