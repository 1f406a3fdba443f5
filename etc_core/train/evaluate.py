"""Validation during training: the one scoring path (etc_core.metrics.SegScores) over a split's shards, plus a
picture grid. The evaluation table (etc_core.infer.evaluate) scores through the same class."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from etc_core.metrics import SegScores, warp_labels
from etc_core.tracking.pictures import colorize, grid
from etc_core.models.preprocess import normalize

PICTURE_COLUMNS = ("frame", "label", "prediction", "next prediction warped", "disagreement")


@torch.no_grad()
def predict_pair(model: nn.Module, img0: torch.Tensor, img1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax predictions of both frames: uint8 RGB [B,3,H,W] each -> int64 [B,H,W] each (one batched forward)."""
    logits = model(normalize(torch.cat([img0, img1]))).logits  # [2B,K,H,W]
    pred = logits.argmax(1)
    return pred[: len(img0)], pred[len(img0):]


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, device: torch.device,
             pictures: int = 0) -> tuple[dict[str, float], np.ndarray | None]:
    """Return ({"val_miou", "val_tc", "val_tc_noc", "val_flicker_interior", "val_flicker_boundary", "val_mvc8",
    "val_mvc16", "val_pairs"}, picture grid uint8 or None) over one pass of `loader`; a metric the shards cannot
    give is NaN."""
    was_training = model.training
    model.eval()
    scores = SegScores(num_classes, device)
    rows: list[list[np.ndarray]] = []
    for batch in loader:
        img0, img1 = batch["img0"].to(device), batch["img1"].to(device)
        pred0, pred1 = predict_pair(model, img0, img1)
        scores.update_batch(batch, pred0, pred1)
        for i in range(min(pictures - len(rows), len(img0))):
            rows.append(_picture_row(img0[i], batch["label"][i], pred0[i], pred1[i], batch["flow"][i].to(device),
                                     num_classes))
    model.train(was_training)
    metrics = {f"val_{k}": float("nan") if v is None else v for k, v in scores.result().items()}
    metrics["val_pairs"] = float(scores.pairs)
    return metrics, grid(rows, titles=list(PICTURE_COLUMNS)) if rows else None


def _picture_row(img, label, pred0, pred1, flow, num_classes: int) -> list[np.ndarray]:
    """frame t | label t | prediction t | prediction t+1 warped to t | disagreement (white = differ)."""
    warped = warp_labels(pred1[None], flow[None].float())[0]
    differ = (warped != pred0) & (warped != 255)
    to_np = lambda t: t.cpu().numpy()  # noqa: E731
    return [to_np(img.permute(1, 2, 0)).astype(np.uint8), colorize(to_np(label), num_classes),
            colorize(to_np(pred0), num_classes), colorize(to_np(warped), num_classes),
            np.repeat(to_np(differ)[..., None].astype(np.uint8) * 255, 3, axis=2)]
