"""The one scoring path: training validation and every evaluation table score predictions through `SegScores`.

Per model and split it accumulates, over frames and consecutive pairs (docs/conventions.md):
  miou                 labelled frames
  tc                   every in-frame pixel of every pair (the paper's TC)
  tc_noc               pixels visible in both frames only (needs the generator's validity mask)
  flicker_interior     among valid pixels whose label does not change along the flow, the percent whose
  flicker_boundary     prediction does (needs labels on both frames), >= 3 px from a label edge / within 3 px
  mvc8, mvc16          VSPW's video consistency over windows of 8 / 16 labelled frames of each clip (vc.py),
                       rebuilt from the pairs (t, t+1) of a shard batch's keys or from a clip's frame batches
A metric a source cannot give is None, never a stand-in. `reference_predictions` gives the two reference rows
every table carries: the ground truth itself and the stride-8 oracle.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from etc_core.data.base import IGNORE_INDEX
from etc_core.metrics.miou import ConfusionMatrix, as_tensor
from etc_core.metrics.tc import TemporalConsistency, warp_labels
from etc_core.metrics.vc import ClipBuffer

EDGE_RADIUS = 3  # a pixel is interior when every pixel within this Chebyshev distance has its label
METRICS = ("miou", "tc", "tc_noc", "flicker_interior", "flicker_boundary", "mvc8", "mvc16")
VC_WINDOWS = (8, 16)  # mVC8 and mVC16, the windows VSPW reports
REFERENCES = ("ground truth", "stride-8 oracle")


def val_score(miou: float, tc: float, tc_weight: float) -> float:
    """(1 - w) * mIoU + w * TC, both in points (higher is better): the sweep's objective val_score and the
    registry's champion rule of the same name (registry.score_tc_weight, sweep.score_tc_weight)."""
    return (1 - tc_weight) * miou + tc_weight * tc


def interior_mask(labels: Tensor, radius: int = EDGE_RADIUS) -> Tensor:
    """int [B,H,W] -> bool [B,H,W]: True where the (2r+1)x(2r+1) window around a pixel holds one label only.

    The frame border is not an edge (the window is clamped to the image)."""
    x = labels.float().unsqueeze(1)
    pad = (radius,) * 4
    hi = F.max_pool2d(F.pad(x, pad, mode="replicate"), 2 * radius + 1, stride=1)
    lo = -F.max_pool2d(F.pad(-x, pad, mode="replicate"), 2 * radius + 1, stride=1)
    return (hi == lo).squeeze(1)


class Flicker:
    """Streaming flicker rate conditioned on the ground truth, split into interior and boundary pixels."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.counts = torch.zeros(2, 2, dtype=torch.int64, device=device)  # [interior, boundary] x [pixels, flips]

    def update(self, pred_t: Tensor, pred_next: Tensor, label_t: Tensor, label_next: Tensor, flow: Tensor,
               valid: Tensor | None = None, warped_pred: Tensor | None = None) -> None:
        """All [B,H,W] (flow [B,2,H,W]); counts pixels where label_t == warp(label_next), valid and in frame.
        warped_pred: warp_labels(pred_next, flow) when the caller has it already."""
        warped_label = warp_labels(label_next, flow)
        stable = (label_t == warped_label) & (label_t != IGNORE_INDEX)  # warp_labels marks out-of-frame as ignore
        if valid is not None:
            stable &= valid.bool()
        flips = (warp_labels(pred_next, flow) if warped_pred is None else warped_pred) != pred_t
        interior = interior_mask(label_t)
        for row, where in enumerate((stable & interior, stable & ~interior)):
            self.counts[row, 0] += int(where.sum())
            self.counts[row, 1] += int((flips & where).sum())

    def value(self) -> tuple[float | None, float | None]:
        """(interior, boundary) flicker in percent; None where no pixel counted."""
        out = []
        for pixels, flips in self.counts.tolist():
            out.append(100.0 * flips / pixels if pixels else None)
        return out[0], out[1]


def _finite(x: float) -> float | None:
    return x if x == x else None  # NaN -> None


class SegScores:
    """mIoU, TC, TC without occlusions and flicker of one model over a split; see the module docstring."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.cm = ConfusionMatrix(num_classes, device=device)
        self.tc = TemporalConsistency(num_classes, device=device)
        self.tc_noc = TemporalConsistency(num_classes, device=device)
        self.flicker = Flicker(device)
        self.clips = ClipBuffer(min(VC_WINDOWS))
        self.frames = self.pairs = 0
        self._seen = {"labels": False, "valid": False, "label_pairs": False}

    @property
    def device(self) -> torch.device:
        return self.cm.mat.device

    def update_frames(self, pred: np.ndarray | Tensor, label: np.ndarray | Tensor, clip: str | None = None,
                      t0: int = 0) -> None:
        """mIoU on predictions [B,H,W] of labelled frames (255 = unlabelled pixels, skipped); given `clip`, the
        frames are t0 .. t0+B-1 of that clip and count for mVC too."""
        label = as_tensor(label, self.device)
        if (label != IGNORE_INDEX).any():
            self._seen["labels"] = True
            self.cm.update(pred, label)
        if clip is not None:
            self.clips.add_frames(clip, t0, as_tensor(pred, self.device), label)
        self.frames += len(label)

    def update_pairs(self, pred_t, pred_next, flow, label_t=None, label_next=None, valid=None) -> None:
        """TC, tc_noc and flicker over pairs: predictions [B,H,W], flow [B,2,H,W] (project convention),
        labels [B,H,W] of both frames (255 where unlabelled) and valid bool [B,H,W], each optional."""
        pred_t, pred_next = as_tensor(pred_t, self.device), as_tensor(pred_next, self.device)
        flow = torch.as_tensor(flow).to(self.device, torch.float32)
        warped = warp_labels(pred_next, flow)  # once, for tc, tc_noc and flicker
        self.tc.update_warped(pred_t, warped)
        self.pairs += len(pred_t)
        if valid is not None:
            valid = as_tensor(valid, self.device).bool()
            self._seen["valid"] = True
            self.tc_noc.update_warped(pred_t, warped, valid)
        if label_t is not None and label_next is not None:
            label_t, label_next = as_tensor(label_t, self.device), as_tensor(label_next, self.device)
            both = ((label_t != IGNORE_INDEX).flatten(1).any(1) & (label_next != IGNORE_INDEX).flatten(1).any(1))
            if both.any():
                self._seen["label_pairs"] = True
                self.flicker.update(pred_t[both], pred_next[both], label_t[both], label_next[both], flow[both],
                                    None if valid is None else valid[both], warped[both])

    def update_batch(self, batch: dict, pred0: Tensor, pred1: Tensor) -> None:
        """A shard loader batch (etc_core.data.shards.collate) and the predictions of its two frames [B,H,W]:
        mIoU on frame t, TC / tc_noc / flicker on the pair (label1 and valid where the batch has them), and the
        frames of its (t, t+1) pairs kept for mVC by the batch's keys."""
        label = batch["label"].to(self.device)
        label1 = batch["label1"].to(self.device) if "label1" in batch else None
        valid = batch["valid"].to(self.device) if "valid" in batch else None
        self.update_frames(pred0, label)
        self.update_pairs(pred0, pred1, batch["flow"], label, label1, valid)
        if "key" in batch:
            self.clips.add_pairs(batch["key"], as_tensor(pred0, self.device), as_tensor(pred1, self.device),
                                 label, label1)

    def result(self) -> dict[str, float | None]:
        """{miou, tc, tc_noc, flicker_interior, flicker_boundary, mvc8, mvc16} in percent (None: not measurable
        here; mvc16 needs clips of more than 16 labelled frames)."""
        interior, boundary = self.flicker.value() if self._seen["label_pairs"] else (None, None)
        mvc = self.clips.consistency(VC_WINDOWS)
        return {"miou": _finite(self.cm.mean_iou()) if self._seen["labels"] else None,
                "tc": _finite(self.tc.value()) if self.pairs else None,
                "tc_noc": _finite(self.tc_noc.value()) if self._seen["valid"] else None,
                "flicker_interior": interior, "flicker_boundary": boundary,
                **{f"mvc{n}": mvc[n] for n in VC_WINDOWS}}


def stride_oracle(labels: Tensor, num_classes: int, stride: int = 8) -> Tensor:
    """A perfect classifier held to an output stride: one-hot labels -> stride x stride area mean -> bilinear
    up -> argmax. int [B,H,W] -> int64 [B,H,W]; pixels whose label is 255 stay 255."""
    labels = labels.long()
    onehot = F.one_hot(labels.clamp(max=num_classes), num_classes + 1)[..., :num_classes]  # 255 -> all zero
    x = onehot.permute(0, 3, 1, 2).float()
    small = F.avg_pool2d(x, stride, stride, ceil_mode=True)
    up = F.interpolate(small, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return torch.where(labels == IGNORE_INDEX, labels, up.argmax(1))


def reference_predictions(name: str, labels: Tensor, num_classes: int) -> Tensor:
    """The prediction of reference row `name` (one of REFERENCES) for labels [B,H,W]."""
    if name == "ground truth":
        return labels.long()
    if name == "stride-8 oracle":
        return stride_oracle(labels, num_classes, 8)
    raise ValueError(f"unknown reference {name!r} (known: {', '.join(REFERENCES)})")
