"""ETC losses: segmentation CE, motion-guided temporal loss, pixel-wise and pair-wise-frame distillation."""
from etc_core.losses.distill import frame_affinity, kd_pixel, kd_temporal
from etc_core.losses.etc import TERMS, EtcLoss, LossConfig, list_terms, term_names
from etc_core.losses.segmentation import cross_entropy, segmentation_loss
from etc_core.losses.temporal import occlusion_mask, temporal_loss
from etc_core.losses.term import Outputs, Term

__all__ = ["EtcLoss", "LossConfig", "Outputs", "TERMS", "Term", "cross_entropy", "frame_affinity", "kd_pixel",
           "kd_temporal", "list_terms", "occlusion_mask", "segmentation_loss", "temporal_loss", "term_names"]
