"""What every video dataset hands to the rest of the pipeline: a `Clip`, and a reader that lists and loads them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

IGNORE_INDEX = 255


@dataclass(frozen=True)
class Clip:
    """One video clip.

    frames uint8 [T,H,W,3] RGB; labels uint8 [T,H,W] class ids, 255 = ignore / unlabelled frame;
    flows float32 [T-1,2,H,W] where flows[i] is the pair (i, i+1) in the project convention
    (channel 0 = x, 1 = y, pixels; warp(frames[i+1], flows[i]) ~ frames[i]), or None when the source has no
    flow; valid bool [T-1,H,W] marks pixels of frame i whose correspondence is in frame and not occluded
    in frame i+1 (ground truth only; None when unknown).
    """

    frames: np.ndarray
    labels: np.ndarray
    flows: np.ndarray | None = None
    valid: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def labelled(self) -> list[int]:
        """Indices of frames that carry at least one labelled pixel."""
        return [t for t in range(self.num_frames) if (self.labels[t] != IGNORE_INDEX).any()]


class VideoDataset(Protocol):
    """The reader interface shared by the generated dataset and the Cityscapes/CamVid readers."""

    num_classes: int
    class_names: list[str]

    @property
    def splits(self) -> list[str]:
        """The splits that hold clips (a subset of train, val, test)."""

    def clip_ids(self, split: str) -> list[str]:
        """Clip ids of `split`, in a stable order."""

    def read_clip(self, split: str, clip_id: str) -> Clip:
        """Load one clip; unlabelled frames carry labels of 255."""
