"""The ETC objective: CE_dsn + λ_tc·L_tc + λ_kd·L_kd_pixel + λ_pf·L_kd_temporal (docs/method.md), one loss for
teacher and student training alike; only the weights and whether a teacher is passed differ.
"""
from __future__ import annotations

import logging
from typing import Callable, Literal, Mapping, Optional

import torch
from pydantic import BaseModel, Field, model_validator
from torch import Tensor, nn

from etc_core.losses.distill import kd_pixel, kd_temporal
from etc_core.losses.segmentation import segmentation_loss
from etc_core.losses.temporal import temporal_loss

log = logging.getLogger(__name__)

TERMS = ("ce", "tc", "kd_pixel", "kd_temporal")


class LossConfig(BaseModel, extra="forbid", frozen=True):
    """Weights of the ETC loss terms (teacher-style defaults: CE + TL; a student sets the kd weights, e.g. 1.0)."""

    ce_weight: float = Field(1.0, ge=0)
    aux_weight: float = Field(0.4, ge=0)  # PSPNet auxiliary head, inside the CE term
    tc_weight: float = Field(0.1, ge=0)  # temporal loss; official flow config st_weight: 0.1
    kd_pixel_weight: float = Field(0.0, ge=0)  # 0 for the teacher; student default 1.0 (docs/method.md)
    kd_temporal_weight: float = Field(0.0, ge=0)  # PF; 0 for the teacher; student default 1.0 (docs/method.md)
    kd_tau: float = Field(1.0, gt=0)
    tc_on: Literal["logits", "probs"] = "logits"
    tc_mask_out_of_frame: bool = True
    tc_ramp: float = Field(0.0, ge=0, le=1)  # the tc weight rises linearly from 0 over this fraction of train.max_steps
    tc_flow: Literal["shards", "zero"] = "shards"  # zero: a control that compares the frames without motion

    @model_validator(mode="after")
    def _something_to_train(self) -> "LossConfig":
        if max(self.ce_weight, self.tc_weight, self.kd_pixel_weight, self.kd_temporal_weight) == 0:
            raise ValueError("all loss weights are 0; nothing to train")
        return self

    @property
    def needs_teacher(self) -> bool:
        """True when a distillation term is on."""
        return self.kd_pixel_weight > 0 or self.kd_temporal_weight > 0

    @property
    def needs_next_frame(self) -> bool:
        """True when any term uses frame t+k."""
        return self.tc_weight > 0 or self.needs_teacher


class EtcLoss(nn.Module):
    """Combined ETC loss; returns {ce, tc, kd_pixel, kd_temporal, total} as 0-dim tensors.

    Terms are reported unweighted; total = Σ weight·term. A term whose weight is 0 is not computed and is
    reported as a detached 0, so every run logs the same five names. It holds no parameters: the trained
    network is the plain model (zero inference overhead).
    """

    def __init__(self, cfg: Optional[LossConfig] = None, class_weight: Optional[Tensor] = None):
        super().__init__()
        self.cfg = cfg or LossConfig()
        self.register_buffer("class_weight", class_weight, persistent=False)  # [K] or None

    def forward(self, out_t, out_next, batch: Mapping[str, Tensor], teacher_out_t=None,
                teacher_out_next=None, tc_scale: float = 1.0) -> dict[str, Tensor]:
        """Loss terms from model outputs (SegOutput) of frames t and t+k, and of the frozen teacher.

        batch: img_t, img_next [B,3,H,W] normalised, flow [B,2,H,W] (warp(img_next, flow) ~ img_t),
        label [B,H,W] of frame t (255 = ignore). out_next / teacher outputs may be None when unused.
        tc_scale multiplies the tc weight (the ramp of `tc_ramp`, see `tc_scale`).
        """
        cfg = self.cfg
        if cfg.needs_next_frame and out_next is None:
            raise ValueError("EtcLoss: tc/kd weights > 0 need the output for frame t+k (out_next)")
        if cfg.needs_teacher and (teacher_out_t is None or teacher_out_next is None):
            raise ValueError("EtcLoss: kd_pixel_weight/kd_temporal_weight > 0 need teacher outputs for both frames")
        zero = out_t.logits.new_zeros(())
        parts = dict.fromkeys(TERMS, zero)
        if cfg.ce_weight > 0:
            parts["ce"] = segmentation_loss(out_t.logits, batch["label"], out_t.aux, cfg.aux_weight,
                                            self.class_weight)
        if cfg.tc_weight > 0:
            flow = batch["flow"] if cfg.tc_flow == "shards" else torch.zeros_like(batch["flow"])
            parts["tc"] = temporal_loss(out_t.logits, out_next.logits, flow, batch["img_t"],
                                        batch["img_next"], on=cfg.tc_on, mask_out_of_frame=cfg.tc_mask_out_of_frame)
        if cfg.kd_pixel_weight > 0:  # both frames of the pair, on the 1/8 logits (docs/method.md)
            parts["kd_pixel"] = (kd_pixel(out_t.features, teacher_out_t.features, cfg.kd_tau)
                                 + kd_pixel(out_next.features, teacher_out_next.features, cfg.kd_tau))
        if cfg.kd_temporal_weight > 0:
            parts["kd_temporal"] = kd_temporal(out_t.features, out_next.features, teacher_out_t.features,
                                               teacher_out_next.features)
        weights = {"ce": cfg.ce_weight, "tc": cfg.tc_weight * tc_scale, "kd_pixel": cfg.kd_pixel_weight,
                   "kd_temporal": cfg.kd_temporal_weight}
        parts["total"] = sum(weights[name] * parts[name] for name in TERMS if weights[name] > 0)
        return parts

    def tc_scale(self, step: int, max_steps: int) -> float:
        """The ramp factor of the tc weight at optimizer step `step` (0-based): linear from 0 to 1 over
        tc_ramp * max_steps steps, then 1."""
        ramp = self.cfg.tc_ramp * max_steps
        return 1.0 if ramp <= 0 else min(1.0, (step + 1) / ramp)

    def run(self, model: Callable, batch: Mapping[str, Tensor],
            teacher: Optional[nn.Module] = None) -> dict[str, Tensor]:
        """One training step's loss: the model on frame t (and t+k if needed), the teacher in eval under no_grad.

        The teacher is only run (and only required) when a kd weight is > 0; frame t+k only when tc or kd is on.
        """
        cfg = self.cfg
        if cfg.needs_teacher and teacher is None:
            raise ValueError("EtcLoss: kd_pixel_weight/kd_temporal_weight > 0 need a teacher model")
        out_t = model(batch["img_t"])
        out_next = model(batch["img_next"]) if cfg.needs_next_frame else None  # two passes, as the official code
        teacher_out_t = teacher_out_next = None
        if cfg.needs_teacher:
            teacher.eval()
            with torch.no_grad():
                teacher_out_t, teacher_out_next = teacher(batch["img_t"]), teacher(batch["img_next"])
        return self(out_t, out_next, batch, teacher_out_t, teacher_out_next)
