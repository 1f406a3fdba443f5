"""Segmentation metrics: mIoU, temporal consistency, flicker and video consistency (mVC), as functions and
streaming accumulators."""
from etc_core.metrics.miou import ConfusionMatrix, mean_iou
from etc_core.metrics.scoring import (METRICS, REFERENCES, VC_WINDOWS, Flicker, SegScores, interior_mask,
                                      reference_predictions, stride_oracle, val_score)
from etc_core.metrics.tc import TemporalConsistency, temporal_consistency, warp_labels
from etc_core.metrics.vc import VideoConsistency

__all__ = ["METRICS", "REFERENCES", "VC_WINDOWS", "ConfusionMatrix", "Flicker", "SegScores", "TemporalConsistency",
           "VideoConsistency", "interior_mask", "mean_iou", "reference_predictions", "stride_oracle",
           "temporal_consistency", "val_score", "warp_labels"]
