"""Plumbing shared by the readers of real videos (Cityscapes, CamVid, a folder of your own): an index of clips, image
reading with one-line errors.

Each reader validates its tree once, builds an index of `ClipIndex` entries (paths as templates, so the reader
pickles small to Ray actors) and hands reading over to `IndexedDataset`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from etc_core.data.base import IGNORE_INDEX, Clip
from etc_core.errors import DatasetError
from etc_core.storage.images import open_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipIndex:
    """Where one clip's files are: frames frame_fmt.format(first + t) for t < num_frames, relative to the root."""

    sequence: str  # what check-dataset counts as a sequence (a Cityscapes snippet, a CamVid video, a folder clip)
    frame_fmt: str
    first: int
    num_frames: int
    labels: tuple[tuple[int, str], ...]  # (index of a labelled frame inside the clip, its label image), in order
    size: tuple[int, int]  # native (H,W) of the frames


def image_header(path: Path) -> tuple[tuple[int, int], str]:
    """((height, width), PIL mode) from the file header, without decoding the pixels."""
    with open_image(path, decode=False) as im:
        return (im.height, im.width), im.mode


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    return image_header(path)[0]


ID_MODES = ("L", "P", "I", "I;16")  # PIL modes of a single-channel id image


def _open(path: Path, native: tuple[int, int] | None) -> Image.Image:
    im = open_image(path)
    if native is not None and (im.height, im.width) != tuple(native):
        raise DatasetError(f"{path}: size {im.height}x{im.width}, expected {native[0]}x{native[1]}")
    return im


def read_rgb(path: Path, native: tuple[int, int] | None = None, out: tuple[int, int] | None = None) -> np.ndarray:
    """An RGB frame as uint8 [H,W,3]; checks its (H,W) against native, resizes (bilinear) to out when given."""
    im = _open(path, native).convert("RGB")
    if out is not None and (im.height, im.width) != tuple(out):
        im = im.resize((out[1], out[0]), Image.BILINEAR)
    return np.asarray(im)


def read_ids(path: Path, out: tuple[int, int] | None = None) -> np.ndarray:
    """A single-channel id image as uint8 [H,W], resized (nearest) to out when given."""
    im = _open(path, None)
    if im.mode not in ID_MODES:
        raise DatasetError(f"{path}: mode {im.mode}, expected a single-channel id image")
    if out is not None and (im.height, im.width) != tuple(out):
        im = im.resize((out[1], out[0]), Image.NEAREST)
    ids = np.asarray(im)
    if ids.max(initial=0) > 255:
        raise DatasetError(f"{path}: id {int(ids.max())} does not fit in 8 bits")
    return ids.astype(np.uint8, copy=False)


def scaled(size: tuple[int, int], resize: float) -> tuple[int, int]:
    """The (H,W) a frame of native `size` has after data.resize."""
    return max(1, round(size[0] * resize)), max(1, round(size[1] * resize))


class IndexedDataset:
    """A VideoDataset over an index {split: {clip_id: ClipIndex}}; labels go through `lut` (-1 = invalid id)."""

    kind = "?"
    label_ids = "see docs/data.md"  # the ids a label image may hold, for the error on another one
    num_classes: int
    class_names: list[str]

    def __init__(self, root: Path, index: dict[str, dict[str, ClipIndex]], lut: np.ndarray, resize: float = 1.0):
        self.root = root
        self.resize = resize
        self._index = index
        self._lut = lut  # int16 [256]

    @property
    def splits(self) -> list[str]:
        return list(self._index)

    def _entry(self, split: str, clip_id: str) -> ClipIndex:
        if split not in self._index:
            raise DatasetError(f"{self.root}: no split {split!r} (have {', '.join(self._index)})")
        if clip_id not in self._index[split]:
            raise DatasetError(f"{self.root}: no clip {clip_id!r} in split {split!r}")
        return self._index[split][clip_id]

    def clip_ids(self, split: str) -> list[str]:
        if split not in self._index:
            raise DatasetError(f"{self.root}: no split {split!r} (have {', '.join(self._index)})")
        return list(self._index[split])

    def clip_layout(self, split: str, clip_id: str) -> tuple[int, int, int, list[int]]:
        """(T, H, W, labelled frame indices) of a clip, without reading its images (used by the flow stage)."""
        entry = self._entry(split, clip_id)
        height, width = scaled(entry.size, self.resize)
        return entry.num_frames, height, width, [t for t, _ in entry.labels]

    def frame_path(self, split: str, clip_id: str, t: int) -> Path:
        entry = self._entry(split, clip_id)
        return self.root / entry.frame_fmt.format(entry.first + t)

    def read_clip(self, split: str, clip_id: str) -> Clip:
        """Load the clip's frames and labels (mapped to train ids; 255 elsewhere), resized by data.resize."""
        entry = self._entry(split, clip_id)
        out = scaled(entry.size, self.resize)
        frames = np.stack([read_rgb(self.root / entry.frame_fmt.format(entry.first + t), entry.size, out)
                           for t in range(entry.num_frames)])  # [T,H,W,3]
        labels = np.full((entry.num_frames, *out), IGNORE_INDEX, np.uint8)  # [T,H,W]
        for t, label in entry.labels:
            ids = read_ids(self.root / label, out)
            mapped = self._lut[ids]
            if (mapped < 0).any():
                bad = int(ids[mapped < 0].min())
                raise DatasetError(f"{self.root / label}: id {bad} is not a {self.kind} label id ({self.label_ids})")
            labels[t] = mapped.astype(np.uint8)
        return Clip(frames=frames, labels=labels)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per split: sequences, clips, frames (in clips) and labelled frames."""
        out = {}
        for split, clips in self._index.items():
            out[split] = {"sequences": len({c.sequence for c in clips.values()}), "clips": len(clips),
                          "frames": sum(c.num_frames for c in clips.values()),
                          "labelled": sum(len(c.labels) for c in clips.values())}
        return out

    def summary(self) -> str:
        """One line per split (printed by check-dataset)."""
        lines = [f"{self.kind} at {self.root}: {self.num_classes} classes"]
        for split, c in self.counts().items():
            lines.append(f"{split}: {c['sequences']} sequences, {c['frames']} frames, {c['labelled']} labelled frames "
                         f"({c['clips']} clips)")
        return "\n".join(lines)


def require_dir(path: Path, hint: str) -> Path:
    """path, or a DatasetError naming it."""
    if not path.is_dir():
        raise DatasetError(f"{path}: directory not found ({hint})")
    return path


def png_names(directory: Path, suffixes: tuple[str, ...] = (".png",)) -> list[str]:
    """Sorted names of the files in directory ending in one of suffixes, in any case (other files are ignored); []
    when it does not exist."""
    if not directory.is_dir():
        return []
    return sorted(e.name for e in _scandir(directory) if e.name.lower().endswith(suffixes))


def _scandir(directory: Path):
    import os

    with os.scandir(directory) as it:
        return [e for e in it if e.is_file()]
