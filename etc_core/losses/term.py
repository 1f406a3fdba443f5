"""A term of the ETC loss: its name, the LossConfig weight that scales it, what it reads and how it is computed.

The registered terms are `etc_core.losses.etc.TERMS`; EtcLoss, the training loop's logs, the per-frame
baseline, the sweep's default space and the model card read them from there (docs/architecture.md,
"Add a loss term").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Optional

from torch import Tensor


class Outputs(NamedTuple):
    """The network outputs (SegOutput, fp32) the terms read: the trained model's on frames t and t+k and the
    frozen teacher's on both; None where no term that is on reads them."""

    out_t: Any
    out_next: Any = None
    teacher_t: Any = None
    teacher_next: Any = None


# (loss config, outputs, batch, class weight [K] or None) -> 0-dim; the batch holds img_t, img_next [B,3,H,W]
# normalised, flow [B,2,H,W] (warp(img_next, flow) ~ img_t) when a term reads it, label [B,H,W] (255 = ignore)
Compute = Callable[[Any, Outputs, Mapping[str, Tensor], Optional[Tensor]], Tensor]


@dataclass(frozen=True)
class Term:
    """One loss term. It is computed only while its weight is > 0; total = Σ weight · value."""

    name: str  # its key in EtcLoss's output and its metric, train/loss_<name>
    weight: str  # the LossConfig field that scales it
    label: str  # how the model card names it
    compute: Compute
    next_frame: bool = False  # reads the model's output on frame t+k
    teacher: bool = False  # reads the frozen teacher's outputs on both frames
    flow: bool = False  # reads the pair's flow
    etc: bool = False  # an ETC term (temporal or distillation): the per-frame baseline switches it off
    ramp: bool = False  # its weight rises over loss.tc_ramp of training (EtcLoss.tc_scale)
    off: Mapping[str, Any] = field(default_factory=dict)  # more LossConfig fields the baseline sets with weight 0
    sweep: Optional[tuple[float, float]] = None  # (low, high) of its weight in the default sweep.space (loguniform)
