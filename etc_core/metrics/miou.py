"""mIoU from a streaming confusion matrix (bincount), on CPU or GPU, numpy or torch inputs."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from etc_core.data.base import IGNORE_INDEX


def as_tensor(x: np.ndarray | Tensor, device: torch.device | str | None = None) -> Tensor:
    """A label map (numpy or tensor) as an int64 tensor on `device` (default: where it already is)."""
    t = x if isinstance(x, Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device=device if device is not None else t.device, dtype=torch.int64)


class ConfusionMatrix:
    """Accumulates a [K, K+1] confusion matrix: rows = reference class, columns = predicted class.

    Reference pixels equal to `ignore_index` are skipped; a prediction outside [0, K) falls into the extra
    column, so it counts against the reference class (a miss) without being any class.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: torch.device | str = "cpu"):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64, device=device)

    def update(self, pred: np.ndarray | Tensor, target: np.ndarray | Tensor) -> None:
        """Add one map or a batch: pred and target of the same shape ([H,W] or [B,H,W]), class ids."""
        pred, target = as_tensor(pred, self.mat.device), as_tensor(target, self.mat.device)
        if pred.shape != target.shape:
            raise ValueError(f"pred {list(pred.shape)} and target {list(target.shape)} differ in shape")
        keep = target != self.ignore_index
        k = self.num_classes
        target, pred = target[keep], pred[keep]
        if target.numel() and (target.min() < 0 or target.max() >= k):
            raise ValueError(f"target holds class id {int(target.max())} outside [0, {k}) and is not ignore "
                             f"({self.ignore_index})")
        pred = torch.where((pred >= 0) & (pred < k), pred, torch.full_like(pred, k))
        self.mat += torch.bincount(target * (k + 1) + pred, minlength=k * (k + 1)).view(k, k + 1)

    def merge(self, other: ConfusionMatrix) -> None:
        self.mat += other.mat.to(self.mat.device)

    def iou(self) -> Tensor:
        """Per-class IoU in [0, 1] (float64 [K]); NaN for classes with zero union."""
        mat = self.mat.double()
        inter = mat.diagonal()
        union = mat.sum(1) + mat[:, : self.num_classes].sum(0) - inter
        return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))

    def mean_iou(self) -> float:
        """Mean IoU in percent over classes whose union is > 0 (NaN if there is none)."""
        iou = self.iou()
        present = ~torch.isnan(iou)
        return float(iou[present].mean() * 100) if present.any() else float("nan")


def mean_iou(pairs: Iterable[tuple[np.ndarray | Tensor, np.ndarray | Tensor]], num_classes: int,
             ignore_index: int = IGNORE_INDEX) -> float:
    """mIoU in percent of (pred [H,W], gt [H,W]) pairs, intersections and unions accumulated over all pairs."""
    cm: ConfusionMatrix | None = None
    for pred, gt in pairs:
        if cm is None:
            device = pred.device if isinstance(pred, Tensor) else "cpu"
            cm = ConfusionMatrix(num_classes, ignore_index, device)
        cm.update(pred, gt)
    return cm.mean_iou() if cm is not None else float("nan")
