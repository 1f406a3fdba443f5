"""Validation: mIoU on labelled val frames and TC over consecutive val pairs (shard flow), plus a picture grid."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from etc_core.metrics import ConfusionMatrix, TemporalConsistency, warp_labels
from etc_core.tracking.pictures import colorize, grid
from etc_core.train.augment import normalize


@torch.no_grad()
def predict_pair(model: nn.Module, img0: torch.Tensor, img1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax predictions of both frames: uint8 RGB [B,3,H,W] each -> int64 [B,H,W] each (one batched forward)."""
    logits = model(normalize(torch.cat([img0, img1]))).logits  # [2B,K,H,W]
    pred = logits.argmax(1)
    return pred[: len(img0)], pred[len(img0):]


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, device: torch.device,
             pictures: int = 0) -> tuple[dict[str, float], np.ndarray | None]:
    """Return ({"val_miou", "val_tc", "val_pairs"}, picture grid uint8 or None) over one pass of `loader`."""
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, device=device)
    tc = TemporalConsistency(num_classes, device=device)
    rows: list[list[np.ndarray]] = []
    pairs = 0
    for batch in loader:
        img0, img1 = batch["img0"].to(device), batch["img1"].to(device)
        flow, label = batch["flow"].to(device).float(), batch["label"].to(device)
        pred0, pred1 = predict_pair(model, img0, img1)
        cm.update(pred0, label)
        tc.update(pred0, pred1, flow)
        pairs += len(img0)
        for i in range(min(pictures - len(rows), len(img0))):
            rows.append(_picture_row(img0[i], label[i], pred0[i], pred1[i], flow[i], num_classes))
    model.train(was_training)
    metrics = {"val_miou": cm.mean_iou(), "val_tc": tc.value(), "val_pairs": float(pairs)}
    return metrics, grid(rows) if rows else None


def _picture_row(img, label, pred0, pred1, flow, num_classes: int) -> list[np.ndarray]:
    """frame t | label t | prediction t | prediction t+1 warped to t | disagreement (white = differ)."""
    warped = warp_labels(pred1[None], flow[None])[0]
    differ = (warped != pred0) & (warped != 255)
    to_np = lambda t: t.cpu().numpy()  # noqa: E731
    return [to_np(img.permute(1, 2, 0)).astype(np.uint8), colorize(to_np(label), num_classes),
            colorize(to_np(pred0), num_classes), colorize(to_np(warped), num_classes),
            np.repeat(to_np(differ)[..., None].astype(np.uint8) * 255, 3, axis=2)]
