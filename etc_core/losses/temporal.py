"""Motion-guided temporal loss (ETC, docs/method.md): occlusion-masked L2 between the
prediction of frame t and the prediction of frame t+k warped into t with the flow F (warp(I_{t+k}, F) ~ I_t).
"""
from __future__ import annotations

import logging
from typing import Literal, Mapping, Optional

import torch
from torch import Tensor

from etc_core.flow.warp import in_frame_mask, sample_points, warp
from etc_core.losses.term import Outputs, Term

log = logging.getLogger(__name__)


def _border_flow(flow: Tensor) -> Tensor:
    """Flow whose sample points are clamped into the image, so zero-padded warping replicates the border.

    This is the official Resample2d border handling (each bilinear corner index clamped). flow [B,2,H,W]
    """
    px, py = sample_points(flow)
    _, _, height, width = flow.shape
    return torch.stack([px.clamp(0, width - 1) - (px - flow[:, 0]), py.clamp(0, height - 1) - (py - flow[:, 1])], 1)


def _check(name: str, flow: Tensor, **tensors: Tensor) -> None:
    for key, value in tensors.items():
        if value.ndim != 4 or value.shape[0] != flow.shape[0] or value.shape[2:] != flow.shape[2:]:
            raise ValueError(f"{name}: {key} {list(value.shape)} must be [B,C,H,W] on the grid of flow "
                             f"{list(flow.shape)}")


@torch.no_grad()
def occlusion_mask(image_t: Tensor, image_next: Tensor, flow: Tensor, mask_out_of_frame: bool = True) -> Tensor:
    """Soft occlusion mask O = exp(-|sum_c (I_t - warp(I_{t+k}, F))_c|), 0 where p+F(p) leaves the frame.

    image_t, image_next [B,3,H,W] (the ImageNet-normalised network inputs), flow [B,2,H,W] -> [B,1,H,W], no grad
    """
    _check("occlusion_mask", flow, image_t=image_t, image_next=image_next)
    flow = flow.float()
    warped = warp(image_next.float(), _border_flow(flow))  # Î_{t+k->t}
    # code form: signed sum over the colour channels, then abs (docs/method.md)
    mask = torch.exp(-(image_t.float() - warped).sum(1, keepdim=True).abs())  # [B,1,H,W]
    if mask_out_of_frame:  # project choice: no correspondence, no constraint
        mask = mask * in_frame_mask(flow)
    return mask


def temporal_loss(logits_t: Tensor, logits_next: Tensor, flow: Tensor, image_t: Tensor, image_next: Tensor, *,
                  on: Literal["logits", "probs"] = "logits", mask_out_of_frame: bool = True) -> Tensor:
    """mean over B*C*H*W of (O * (z_t - warp(z_{t+k}, F)))^2; gradient into both frames, none into O or F.

    logits_t, logits_next [B,K,H,W] at input size, flow [B,2,H,W] (t's grid, into t+k), images [B,3,H,W]
    normalised; `on="probs"` compares softmax probabilities instead of logits (docs/method.md) -> 0-dim
    """
    if on not in ("logits", "probs"):
        raise ValueError(f"temporal_loss: on must be 'logits' or 'probs', got {on!r}")
    _check("temporal_loss", flow, logits_t=logits_t, logits_next=logits_next)
    flow = flow.detach().float()
    mask = occlusion_mask(image_t, image_next, flow, mask_out_of_frame)  # [B,1,H,W]
    pred_t, pred_next = logits_t.float(), logits_next.float()
    if on == "probs":
        pred_t, pred_next = pred_t.softmax(1), pred_next.softmax(1)  # [B,K,H,W]
    warped = warp(pred_next, _border_flow(flow))  # ẑ_{t+k->t}, differentiable in pred_next
    # mask on both sides before squaring, as nn.MSELoss(z_t * O, ẑ * O) in the official code: weight O^2
    return ((mask * (pred_t - warped)) ** 2).mean()


def _tc(cfg, out: Outputs, batch: Mapping[str, Tensor], class_weight: Optional[Tensor]) -> Tensor:
    """The temporal term of a pair, with the shards' flow or (tc_flow: zero, a control) none."""
    flow = batch["flow"] if cfg.tc_flow == "shards" else torch.zeros_like(batch["flow"])
    return temporal_loss(out.out_t.logits, out.out_next.logits, flow, batch["img_t"], batch["img_next"],
                         on=cfg.tc_on, mask_out_of_frame=cfg.tc_mask_out_of_frame)


TC = Term("tc", "tc_weight", "temporal (TC)", _tc, next_frame=True, flow=True, etc=True, ramp=True,
          off={"tc_ramp": 0.0}, sweep=(0.01, 1.0))
