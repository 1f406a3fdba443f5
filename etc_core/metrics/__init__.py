"""Segmentation metrics: mIoU, temporal consistency and flicker, as functions and streaming accumulators."""
from etc_core.metrics.miou import ConfusionMatrix, mean_iou
from etc_core.metrics.scoring import (METRICS, REFERENCES, Flicker, SegScores, interior_mask, reference_predictions,
                                      stride_oracle, val_score)
from etc_core.metrics.tc import TemporalConsistency, temporal_consistency, warp_labels

__all__ = ["METRICS", "REFERENCES", "ConfusionMatrix", "Flicker", "SegScores", "TemporalConsistency",
           "interior_mask", "mean_iou", "reference_predictions", "stride_oracle", "temporal_consistency",
           "val_score", "warp_labels"]
