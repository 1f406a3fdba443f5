"""Segmentation cross-entropy with ignore index 255 and PSPNet's auxiliary ("deep supervision") term."""
from __future__ import annotations

import logging
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from etc_core.data.base import IGNORE_INDEX
from etc_core.losses.term import Outputs, Term

log = logging.getLogger(__name__)


def cross_entropy(logits: Tensor, label: Tensor, class_weight: Optional[Tensor] = None) -> Tensor:
    """Mean CE over labelled pixels (255 ignored); 0, not NaN, when no pixel is labelled.

    logits [B,K,H,W], label [B,H,W] int (255 = ignore), class_weight [K] or None -> 0-dim
    """
    if logits.shape[0] != label.shape[0] or logits.shape[2:] != label.shape[1:]:
        raise ValueError(f"cross_entropy: logits {list(logits.shape)} and label {list(label.shape)} do not match")
    label = label.long()
    per_pixel = F.cross_entropy(logits.float(), label, weight=class_weight, ignore_index=IGNORE_INDEX,
                                reduction="none")  # [B,H,W], 0 at ignored pixels
    valid = label != IGNORE_INDEX
    if class_weight is None:
        denom = valid.sum().to(per_pixel.dtype)
    else:  # weighted mean, as F.cross_entropy(weight=...) with reduction="mean"
        denom = class_weight[label.clamp(max=class_weight.numel() - 1)].mul(valid).sum().to(per_pixel.dtype)
    return per_pixel.sum() / denom.clamp(min=1e-12)  # no labelled pixel: 0 / eps = 0


def segmentation_loss(logits: Tensor, label: Tensor, aux: Optional[Tensor] = None, aux_weight: float = 0.4,
                      class_weight: Optional[Tensor] = None) -> Tensor:
    """CE_dsn of docs/method.md: CE(logits) + aux_weight * CE(aux) when aux is given.

    logits, aux [B,K,H,W] at label size, label [B,H,W] (255 = ignore) -> 0-dim
    """
    loss = cross_entropy(logits, label, class_weight)
    if aux is not None and aux_weight > 0:
        loss = loss + aux_weight * cross_entropy(aux, label, class_weight)
    return loss


def _ce(cfg, out: Outputs, batch: Mapping[str, Tensor], class_weight: Optional[Tensor]) -> Tensor:
    """The CE term of a pair: CE_dsn on frame t, the labelled one."""
    return segmentation_loss(out.out_t.logits, batch["label"], out.out_t.aux, cfg.aux_weight, class_weight)


CE = Term("ce", "ce_weight", "CE", _ce)
