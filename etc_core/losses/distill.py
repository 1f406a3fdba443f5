"""Knowledge distillation from a frozen teacher (docs/method.md: pixel-wise KD, pair-wise-frame PF)."""
from __future__ import annotations

import logging
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from etc_core.losses.term import Outputs, Term

log = logging.getLogger(__name__)

PF_MAX_POSITIONS = 4096  # above this many positions per frame, PF average-pools 2x2 first (docs/method.md)


def _to_size(x: Tensor, ref: Tensor) -> Tensor:
    """Bilinear resize of x [B,C,h,w] to ref's spatial size (align_corners=True, as the official code)."""
    if x.shape[2:] == ref.shape[2:]:
        return x
    return F.interpolate(x, size=ref.shape[2:], mode="bilinear", align_corners=True)


def kd_pixel(student_logits: Tensor, teacher_logits: Tensor, tau: float = 1.0) -> Tensor:
    """KL(softmax(T/tau) || softmax(S/tau)), element-wise mean over B*C*H*W (nn.KLDivLoss 'mean'), no tau^2.

    student_logits [B,K,h,w] (resized to the teacher's size if needed), teacher_logits [B,K,H',W'] -> 0-dim
    """
    if student_logits.shape[:2] != teacher_logits.shape[:2]:
        raise ValueError(f"kd_pixel: student {list(student_logits.shape)} and teacher {list(teacher_logits.shape)} "
                         "need the same batch and classes")
    with torch.autocast(student_logits.device.type, enabled=False):
        log_p_student = F.log_softmax(_to_size(student_logits.float(), teacher_logits) / tau, dim=1)
        log_p_teacher = F.log_softmax(teacher_logits.detach().float() / tau, dim=1)
        # written out rather than F.kl_div(reduction="mean"), whose meaning PyTorch plans to change
        return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).mean()


def frame_affinity(feat_t: Tensor, feat_next: Tensor) -> Tensor:
    """Cross-frame cosine similarity A[i, j] = cos(f_t(i), f_{t+k}(j)) in fp32.

    feat_t, feat_next [B,C,h,w] -> [B,N,N], N = h*w
    """
    with torch.autocast(feat_t.device.type, enabled=False):
        rows = F.normalize(feat_t.float().flatten(2), dim=1)  # [B,C,N], unit columns
        cols = F.normalize(feat_next.float().flatten(2), dim=1)  # [B,C,N]
        return rows.transpose(1, 2) @ cols  # [B,N,N]


def kd_temporal(student_feat_t: Tensor, student_feat_next: Tensor, teacher_feat_t: Tensor,
                teacher_feat_next: Tensor) -> Tensor:
    """PF distillation: MSE over B*N*N between student and teacher cross-frame cosine affinities.

    features [B,C,h,w] (C may differ between student and teacher; the student is resized to the teacher's
    h,w); when N = h*w > 4096 both are 2x2 average-pooled first -> 0-dim
    """
    feats = [_to_size(student_feat_t, teacher_feat_t), _to_size(student_feat_next, teacher_feat_t),
             teacher_feat_t.detach(), teacher_feat_next.detach()]
    if teacher_feat_next.shape != teacher_feat_t.shape:
        raise ValueError(f"kd_temporal: teacher frames differ, {list(teacher_feat_t.shape)} vs "
                         f"{list(teacher_feat_next.shape)}")
    if feats[0].shape[0] != feats[2].shape[0]:
        raise ValueError(f"kd_temporal: batch of student {list(student_feat_t.shape)} and teacher "
                         f"{list(teacher_feat_t.shape)} differ")
    if teacher_feat_t.shape[2] * teacher_feat_t.shape[3] > PF_MAX_POSITIONS:
        feats = [F.avg_pool2d(f.float(), kernel_size=2, stride=2) for f in feats]
    affinity_student = frame_affinity(feats[0], feats[1])  # [B,N,N]
    affinity_teacher = frame_affinity(feats[2], feats[3])  # [B,N,N]
    return F.mse_loss(affinity_student, affinity_teacher)


def _kd_pixel(cfg, out: Outputs, batch: Mapping[str, Tensor], class_weight: Optional[Tensor]) -> Tensor:
    """Pixel-wise KD on both frames of the pair, on the 1/8 logits (docs/method.md)."""
    return (kd_pixel(out.out_t.features, out.teacher_t.features, cfg.kd_tau)
            + kd_pixel(out.out_next.features, out.teacher_next.features, cfg.kd_tau))


def _kd_temporal(cfg, out: Outputs, batch: Mapping[str, Tensor], class_weight: Optional[Tensor]) -> Tensor:
    """Pair-wise-frame (PF) distillation between frames t and t+k."""
    return kd_temporal(out.out_t.features, out.out_next.features, out.teacher_t.features, out.teacher_next.features)


KD_PIXEL = Term("kd_pixel", "kd_pixel_weight", "pixel KD", _kd_pixel, next_frame=True, teacher=True, etc=True,
                sweep=(0.1, 10.0))
KD_TEMPORAL = Term("kd_temporal", "kd_temporal_weight", "temporal KD", _kd_temporal, next_frame=True, teacher=True,
                   etc=True, sweep=(0.1, 10.0))
