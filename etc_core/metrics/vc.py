"""Video consistency (mVC, VSPW; docs/conventions.md): how often a prediction stays put where the labels do.

For a window of n frames starting at i: among pixels whose label is the same in all n frames, the fraction whose
prediction is the same in all n frames too. mVC_n is the mean of that fraction over every window of every clip,
with VSPW's windows (`for i in range(T - n)` in TC_cal.py of github.com/sssdddwww2/CVPR2021_VSPW_Implement, so a
clip of exactly n frames gives none). Unlike VSPW, pixels labelled 255 do not count and a window holding a frame
without any labelled pixel is skipped; a window whose denominator is 0 is skipped too (VSPW's nanmean does that).

`ClipBuffer` rebuilds clips from the pairs of a shard set or from frame batches, for `SegScores`.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from etc_core.data.base import IGNORE_INDEX

CHUNK_PIXELS = 1 << 24  # window starts compared at once: bounds the boolean temporaries to ~16 M pixels each


def _tensor(x: np.ndarray | Tensor, device: torch.device | str | None = None) -> Tensor:
    """Class ids as a tensor of their own integer dtype (no int64 copy of a whole clip)."""
    t = x if isinstance(x, Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device) if device is not None else t


class VideoConsistency:
    """Streaming mVC over clips: `update(preds, labels)` per clip, `compute()` -> percent or None."""

    def __init__(self, window: int, ignore_index: int = IGNORE_INDEX):
        if window < 2:
            raise ValueError(f"VideoConsistency: window must be >= 2, got {window}")
        self.window, self.ignore_index = window, ignore_index
        self.total = 0.0  # sum over counted windows of the per-window fraction
        self.windows = 0

    def update(self, preds: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> None:
        """One clip: predicted and true class ids, int [T,H,W] each (numpy or torch); VSPW's windows
        i in range(T - window)."""
        preds = _tensor(preds)
        labels = _tensor(labels, preds.device)
        if preds.ndim != 3 or preds.shape != labels.shape:
            raise ValueError(f"VideoConsistency: preds {list(preds.shape)} and labels {list(labels.shape)} must "
                             f"both be one clip [T,H,W]")
        self.update_windows(preds, labels, len(preds) - self.window)

    def update_windows(self, preds: Tensor, labels: Tensor, stop: int) -> None:
        """The windows starting at 0 .. stop-1 of frames [N,H,W] (those that fit in the N frames): `update` for a
        caller that holds part of a clip (ClipBuffer)."""
        n = self.window
        stop = min(stop, len(preds) - n + 1)
        if stop <= 0:
            return
        labelled = (labels != self.ignore_index).flatten(1).any(1)  # [N]
        whole = labelled.unfold(0, n, 1)[:stop].all(1)  # [stop]: every frame of the window has labels
        step = max(1, CHUNK_PIXELS // labels[0].numel())
        for a in range(0, stop, step):
            b = min(a + step, stop)
            label_common = labels[a:b] != self.ignore_index  # [b-a,H,W]
            pred_common = torch.ones_like(label_common)
            for j in range(1, n):
                label_common &= labels[a:b] == labels[a + j:b + j]
                pred_common &= preds[a:b] == preds[a + j:b + j]
            den = label_common.flatten(1).sum(1)  # [b-a]
            num = (label_common & pred_common).flatten(1).sum(1)
            keep = whole[a:b] & (den > 0)
            self.total += float((num[keep].double() / den[keep].double()).sum())
            self.windows += int(keep.sum())

    def compute(self) -> float | None:
        """mVC in percent: 100 x the mean fraction over every counted window; None when none was counted."""
        return 100.0 * self.total / self.windows if self.windows else None


def _labelled(labels: Tensor) -> list[bool]:
    """int [B,H,W] -> per frame: has it a labelled pixel (one device sync per batch)."""
    return (labels != IGNORE_INDEX).flatten(1).any(1).tolist()


def pair_of_key(key: str) -> tuple[str, int, int]:
    """A shard sample's key `{video}_{t:06d}_{k}` (docs/shards.md) -> (video, t, k)."""
    video, t, k = key.rsplit("_", 2)
    return video, int(t), int(k)


class ClipBuffer:
    """Each clip's per-frame predictions and labels (uint8, on their device), gathered in any order; `consistency`
    then scores whole clips with VideoConsistency.

    Only frames with a labelled pixel are kept, and a run of them too short for the smallest window is dropped
    once unlabelled frames (or the clip's start) close it on both sides: Cityscapes-like clips, labelled on one
    frame in 30, keep almost nothing. Fully labelled clips keep 2 bytes per pixel and frame, per model.
    """

    def __init__(self, min_window: int):
        self.min_window = min_window
        self.frames: dict[str, dict[int, tuple[Tensor, Tensor, bool]]] = {}  # video -> t -> (pred, label, primary)
        self.unlabelled: dict[str, set[int]] = {}
        self.num_frames: dict[str, int] = {}

    def add(self, video: str, t: int, pred: Tensor, label: Tensor | None, primary: bool = True,
            labelled: bool | None = None) -> None:
        """Frame t of `video`: pred and label int [H,W] (label None or all 255: unlabelled; `labelled` says which
        when the caller knows). A frame seen twice keeps its primary copy (img0 of pair (t, t+1)); a secondary one
        (img1 of pair (t-1, t)) stands in until then, and an unlabelled secondary tells nothing (training pairs
        carry no label of img1)."""
        self.num_frames[video] = max(self.num_frames.get(video, 0), t + 1)
        frames = self.frames.setdefault(video, {})
        if labelled is None:
            labelled = label is not None and bool((label != IGNORE_INDEX).any())
        if not labelled:
            if primary:
                self.unlabelled.setdefault(video, set()).add(t)
                frames.pop(t, None)
                self._drop_short_runs(video, t)
            return
        if primary or t not in frames:
            frames[t] = (pred.to(torch.uint8), label.to(torch.uint8), primary)

    def add_frames(self, video: str, t0: int, preds: Tensor, labels: Tensor) -> None:
        """Frames t0 .. t0+B-1 of `video`: preds and labels int [B,H,W]."""
        for i, labelled in enumerate(_labelled(labels)):
            self.add(video, t0 + i, preds[i], labels[i], labelled=labelled)

    def add_pairs(self, keys: list[str], pred0: Tensor, pred1: Tensor, label0: Tensor,
                  label1: Tensor | None) -> None:
        """A shard batch: frame t from img0 of each pair (t, t+1), frame t+1 from its img1; other k are skipped.
        All int [B,H,W]; label1 None when the batch has none."""
        labelled0 = _labelled(label0)
        labelled1 = _labelled(label1) if label1 is not None else [False] * len(keys)
        for i, key in enumerate(keys):
            video, t, k = pair_of_key(key)
            if k == 1:
                self.add(video, t, pred0[i], label0[i], labelled=labelled0[i])
                self.add(video, t + 1, pred1[i], None if label1 is None else label1[i], primary=False,
                         labelled=labelled1[i])

    def _closed(self, video: str, t: int) -> bool:
        return t < 0 or t in self.unlabelled.get(video, ())

    def _drop_short_runs(self, video: str, t: int) -> None:
        """Frame t is unlabelled: drop the runs of kept frames beside it that are closed and too short."""
        frames = self.frames[video]
        for step in (-1, 1):
            run = []
            u = t + step
            while u in frames:
                run.append(u)
                u += step
            if run and len(run) < self.min_window and self._closed(video, u):
                for u in run:
                    del frames[u]

    def consistency(self, windows: tuple[int, ...]) -> dict[int, float | None]:
        """{window: mVC in percent or None} over every clip gathered so far (the buffer is kept)."""
        scores = {n: VideoConsistency(n) for n in windows}
        for video, frames in self.frames.items():
            num_frames, ts = self.num_frames[video], sorted(frames)
            runs, start = [], 0
            for i in range(1, len(ts) + 1):
                if i == len(ts) or ts[i] != ts[i - 1] + 1:
                    runs.append(ts[start:i])
                    start = i
            for run in runs:
                if len(run) < self.min_window:
                    continue
                preds = torch.stack([frames[t][0] for t in run])  # [N,H,W] uint8
                labels = torch.stack([frames[t][1] for t in run])
                for n, vc in scores.items():  # VSPW's starts i < T - n, those of this run in its own frames
                    vc.update_windows(preds, labels, num_frames - n - run[0])
        return {n: vc.compute() for n, vc in scores.items()}
