"""Segmentation metrics: mIoU and temporal consistency, as functions and streaming accumulators."""
from etc_core.metrics.miou import ConfusionMatrix, mean_iou
from etc_core.metrics.tc import TemporalConsistency, temporal_consistency, warp_labels

__all__ = ["ConfusionMatrix", "TemporalConsistency", "mean_iou", "temporal_consistency", "warp_labels"]
