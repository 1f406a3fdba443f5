"""flow.source=dis: OpenCV's DIS optical flow (Kroeger et al., "Fast Optical Flow using Dense Inverse Search",
ECCV 2016), on the CPU, with no weights to download. Settings: flow.dis_preset (etc_core/flow/config.py).

cv2's `DISOpticalFlow.calc(gray_t, gray_tk, None)` returns [H,W,2] (x first) with gray_t(y, x) ~ gray_tk(y + f_y,
x + f_x): the project's convention already (etc_core/flow/warp.py, warp(frame_{t+k}, flow) ~ frame_t; checked by
tests/unit/test_dis.py), so only the layout changes. cv2 is imported lazily (in `check` and in the estimator), as
ptlflow is.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from etc_core.errors import ConfigError
from etc_core.flow.sources import FlowSource

if TYPE_CHECKING:
    from etc_core.data.config import DataConfig
    from etc_core.flow.estimate import PairRef

PRESETS = ("ultrafast", "fast", "medium")  # cv2.DISOPTICAL_FLOW_PRESET_<NAME>: coarse to fine, fast to accurate


def _import_cv2():
    try:
        import cv2
    except ImportError as e:
        raise ConfigError(f"flow.source: dis needs OpenCV (pip install opencv-python): {e}") from None
    return cv2


class DisEstimator:
    """One cv2.DISOpticalFlow of `preset`; cv2 runs `threads` threads (None: as many as torch in this process, which
    is one in a Ray task of one CPU: Ray sets OMP_NUM_THREADS there, and cv2 does not read it)."""

    def __init__(self, preset: str = "medium", threads: int | None = None):
        if preset not in PRESETS:
            raise ConfigError(f"flow.dis_preset: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        import torch

        self.cv2 = _import_cv2()
        self.cv2.setNumThreads(threads or torch.get_num_threads())  # process-wide: the task's CPUs, no more
        self.dis = self.cv2.DISOpticalFlow_create(getattr(self.cv2, f"DISOPTICAL_FLOW_PRESET_{preset.upper()}"))

    def estimate(self, img0: np.ndarray, img1: np.ndarray, refs: list[PairRef]) -> np.ndarray:
        """img0, img1 uint8 RGB [B,H,W,3] (frames t, t+k) -> flow float32 [B,2,H,W], project convention."""
        if img0.shape != img1.shape or img0.ndim != 4 or img0.shape[-1] != 3:
            raise ValueError(f"frames must be two [B,H,W,3] arrays of one shape, got {img0.shape} and {img1.shape}")
        gray = lambda img: self.cv2.cvtColor(np.ascontiguousarray(img), self.cv2.COLOR_RGB2GRAY)  # noqa: E731
        flows = [self.dis.calc(gray(a), gray(b), None) for a, b in zip(img0, img1)]  # each [H,W,2], x first
        return np.ascontiguousarray(np.stack(flows).transpose(0, 3, 1, 2), dtype=np.float32)  # [B,2,H,W]


class DisSource(FlowSource):
    """flow.source=dis: DIS flow with flow.dis_preset, made in the read tasks like the ground truth (no model to hold:
    building it takes microseconds), one CPU each, any dataset."""

    def check(self, data: DataConfig | None = None) -> None:
        _import_cv2()

    def identity(self) -> dict:
        return {"dis_preset": self.cfg.dis_preset}

    def meta(self) -> dict:
        return {"flow_model": "dis", "flow_weights": self.cfg.dis_preset}  # no weights: the preset says what made it

    def describe(self) -> str:
        return f"DIS ({self.cfg.dis_preset})"

    def estimator(self, dataset=None) -> DisEstimator:
        return DisEstimator(self.cfg.dis_preset)
