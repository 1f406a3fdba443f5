"""Temporal consistency (TC, docs/conventions.md): mIoU between a prediction and the flow-warped next prediction.

`tc` counts every in-frame pixel (as the paper does); given the generator's validity mask, `tc_noc` leaves out
pixels occluded in the next frame (as Lai et al.'s warping error does).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from etc_core.data.base import IGNORE_INDEX
from etc_core.flow.warp import in_frame_mask, warp
from etc_core.metrics.miou import ConfusionMatrix, as_tensor


def warp_labels(labels: Tensor, flow: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Nearest-neighbour warp of label maps; pixels sampling outside the frame become `ignore_index`.

    labels int [B,H,W], flow float [B,2,H,W] -> int64 [B,H,W]
    """
    warped = warp(labels.unsqueeze(1).float(), flow.float(), mode="nearest").round().long()  # [B,1,H,W]
    warped[~in_frame_mask(flow)] = ignore_index
    return warped.squeeze(1)


class TemporalConsistency:
    """Streaming TC: per-class IoU between pred_t and warp(pred_next, flow), accumulated over all triples."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: torch.device | str = "cpu"):
        self.cm = ConfusionMatrix(num_classes, ignore_index, device)

    def update(self, pred_t: np.ndarray | Tensor, pred_next: np.ndarray | Tensor,
               flow: np.ndarray | Tensor, valid: np.ndarray | Tensor | None = None) -> None:
        """Add one triple or a batch: pred_t, pred_next [H,W] or [B,H,W]; flow [2,H,W] or [B,2,H,W].

        valid: bool, pred_t's shape; pixels where it is False (occluded or out of frame at t+1) do not count.
        """
        device = self.cm.mat.device
        pred_t, pred_next = as_tensor(pred_t, device), as_tensor(pred_next, device)
        flow = flow if isinstance(flow, Tensor) else torch.from_numpy(np.ascontiguousarray(flow))
        flow = flow.to(device=device, dtype=torch.float32)
        if pred_t.ndim == 2:
            pred_t, pred_next, flow = pred_t[None], pred_next[None], flow[None]
        if pred_t.shape != pred_next.shape or flow.shape != (pred_t.shape[0], 2, *pred_t.shape[1:]):
            raise ValueError(f"TC: pred_t {list(pred_t.shape)}, pred_next {list(pred_next.shape)} and flow "
                             f"{list(flow.shape)} must be [B,H,W], [B,H,W], [B,2,H,W]")
        self.update_warped(pred_t, warp_labels(pred_next, flow, self.cm.ignore_index), valid)

    def update_warped(self, pred_t: Tensor, warped_next: Tensor, valid: np.ndarray | Tensor | None = None) -> None:
        """`update` for a caller that has already warped pred_next (warp_labels): int [B,H,W] each."""
        ignore = self.cm.ignore_index
        drop = pred_t == ignore  # pixels ignored in pred_t do not count either
        if valid is not None:
            drop |= ~as_tensor(valid, self.cm.mat.device).bool().reshape(pred_t.shape)
        self.cm.update(pred_t, torch.where(drop, torch.full_like(warped_next, ignore), warped_next))

    def value(self) -> float:
        """TC in percent over classes whose accumulated union is > 0."""
        return self.cm.mean_iou()


def temporal_consistency(triples: Iterable[tuple[np.ndarray | Tensor, np.ndarray | Tensor, np.ndarray | Tensor]],
                         num_classes: int, ignore_index: int = IGNORE_INDEX) -> float:
    """TC in percent of (pred_t [H,W], pred_next [H,W], flow [2,H,W]) triples, flow in the project convention."""
    acc: TemporalConsistency | None = None
    for pred_t, pred_next, flow in triples:
        if acc is None:
            device = pred_t.device if isinstance(pred_t, Tensor) else "cpu"
            acc = TemporalConsistency(num_classes, ignore_index, device)
        acc.update(pred_t, pred_next, flow)
    return acc.value() if acc is not None else float("nan")
