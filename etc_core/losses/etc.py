"""The ETC objective: CE_dsn + λ_tc·L_tc + λ_kd·L_kd_pixel + λ_pf·L_kd_temporal (docs/method.md), one loss for
teacher and student training alike; only the weights and whether a teacher is passed differ.

The loss is its list of terms, TERMS: each term (etc_core/losses/term.py) says what it reads and computes its
value; everything here, in the training loop, the per-frame baseline, the sweep space and the model card reads
the names from that list.
"""
from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal, Mapping, Optional

from pydantic import BaseModel, Field, model_validator
from torch import Tensor, nn

from etc_core.losses.distill import KD_PIXEL, KD_TEMPORAL
from etc_core.losses.segmentation import CE
from etc_core.losses.temporal import TC
from etc_core.losses.term import Outputs, Term

log = logging.getLogger(__name__)

TERMS: tuple[Term, ...] = (CE, TC, KD_PIXEL, KD_TEMPORAL)  # a new term: its file, its test, its entry here


def list_terms() -> tuple[Term, ...]:
    """The registered loss terms, in the order they are computed, summed and logged."""
    return TERMS


def term_names() -> tuple[str, ...]:
    """The registered terms' names (the keys of EtcLoss's output besides `total`)."""
    return tuple(term.name for term in list_terms())


class LossConfig(BaseModel, extra="forbid", frozen=True):
    """Weights of the ETC loss terms (teacher-style defaults: CE + TL; a student sets the kd weights, e.g. 1.0)."""

    # a field added from now on goes here too: left at its default, it stays out of every stage's cache key
    # (etc_core/section.py, hash_dump), so existing configs keep their trained stages (docs/architecture.md)
    HASH_OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ()

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
        if not self.terms_on():
            raise ValueError("all loss weights are 0; nothing to train")
        return self

    def terms_on(self) -> tuple[Term, ...]:
        """The registered terms whose weight is > 0 (the ones computed)."""
        return tuple(term for term in list_terms() if getattr(self, term.weight) > 0)

    @property
    def needs_teacher(self) -> bool:
        """True when a distillation term is on."""
        return any(term.teacher for term in self.terms_on())

    def check_teacher(self, present: bool) -> None:
        """The one check (and wording) of a missing teacher: ValueError naming the distillation weights that are on
        when `present` is False (no teacher model, or no teacher outputs for both frames)."""
        if not present and self.needs_teacher:
            weights = "/".join(term.weight for term in self.terms_on() if term.teacher)
            raise ValueError(f"EtcLoss: {weights} > 0 need a teacher (the frozen teacher model's outputs for "
                             "frames t and t+k)")

    @property
    def needs_next_frame(self) -> bool:
        """True when any term uses frame t+k."""
        return any(term.next_frame for term in self.terms_on())

    @property
    def needs_flow(self) -> bool:
        """True when any term reads the pair's flow."""
        return any(term.flow for term in self.terms_on())

    def per_frame(self) -> "LossConfig":
        """This loss with every ETC term switched off: the per-frame baseline's loss (cross-entropy only)."""
        update: dict[str, Any] = {}
        for term in list_terms():
            if term.etc:
                update |= {term.weight: 0.0, **term.off}
        return self.model_copy(update=update)


class StudentLossConfig(LossConfig):
    """A student's loss: the teacher's terms plus pixel-wise and pair-wise temporal distillation (docs/method.md)."""

    kd_pixel_weight: float = Field(1.0, ge=0)
    kd_temporal_weight: float = Field(1.0, ge=0)


class EtcLoss(nn.Module):
    """Combined ETC loss; returns {<each term's name>, total} (ce, tc, kd_pixel, kd_temporal, total) as 0-dim tensors.

    Terms are reported unweighted; total = Σ weight·term. A term whose weight is 0 is not computed and is
    reported as a detached 0, so every run logs the same names. It holds no parameters: the trained network is
    the plain model (zero inference overhead). The network outputs come from etc_core.train.loop.forward_pair,
    the one forward of training (and of the tests).
    """

    def __init__(self, cfg: Optional[LossConfig] = None, class_weight: Optional[Tensor] = None):
        super().__init__()
        self.cfg = cfg or LossConfig()
        self.register_buffer("class_weight", class_weight, persistent=False)  # [K] or None

    def forward(self, out: Outputs, batch: Mapping[str, Tensor], tc_scale: float = 1.0) -> dict[str, Tensor]:
        """Loss terms from the outputs (SegOutput) of the model and the frozen teacher on frames t and t+k.

        batch: img_t, img_next [B,3,H,W] normalised, flow [B,2,H,W] (warp(img_next, flow) ~ img_t),
        label [B,H,W] of frame t (255 = ignore). Outputs no term that is on reads may be None.
        tc_scale multiplies the weight of the ramped term (the ramp of `tc_ramp`, see `tc_scale`).
        """
        cfg = self.cfg
        on = cfg.terms_on()
        missing_next = [term.weight for term in on if term.next_frame and out.out_next is None]
        if missing_next:
            raise ValueError(f"EtcLoss: {'/'.join(missing_next)} > 0 need the output for frame t+k (out_next)")
        cfg.check_teacher(out.teacher_t is not None and out.teacher_next is not None)
        zero = out.out_t.logits.new_zeros(())
        parts = dict.fromkeys(term_names(), zero)
        weights = {}
        for term in on:
            parts[term.name] = term.compute(cfg, out, batch, self.class_weight)
            weights[term.name] = getattr(cfg, term.weight) * tc_scale if term.ramp else getattr(cfg, term.weight)
        parts["total"] = sum(weights[name] * parts[name] for name in weights if weights[name] > 0)
        return parts

    def tc_scale(self, step: int, max_steps: int) -> float:
        """The ramp factor of the tc weight at optimizer step `step` (0-based): linear from 0 to 1 over
        tc_ramp * max_steps steps, then 1."""
        ramp = self.cfg.tc_ramp * max_steps
        return 1.0 if ramp <= 0 else min(1.0, (step + 1) / ramp)
