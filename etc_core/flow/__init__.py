"""Optical flow: the project convention, warping and pictures (flow estimation lands with the flow stage)."""
from etc_core.flow.warp import flow_to_color, in_frame_mask, sample_points, warp

__all__ = ["flow_to_color", "in_frame_mask", "sample_points", "warp"]
