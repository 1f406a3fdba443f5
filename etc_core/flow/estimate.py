"""The two flow sources (etc_core/flow/sources.py) and their estimators: a ptlflow model, or the dataset's exact flow.

Both take a batch of pairs (frames t and t+k, uint8 RGB) and return project-convention flow float32 [B,2,H,W]
(etc_core/flow/warp.py: x first, on frame t's grid, warp(frame_{t+k}, flow) ~ frame_t). ptlflow wants
{"images": [B,2,3,H,W]} float BGR in [0,1] and returns flows [B,1,2,H,W], forward from image 1 to image 2,
x first: for images ordered (t, t+k) that is already our convention, so only the layout changes.
ptlflow is imported lazily (it pulls in lightning and cv2): inside actors, or in `check_ptlflow` (PtlflowSource.check).
"""
from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlparse

import numpy as np
import torch

from etc_core.errors import ConfigError
from etc_core.flow.sources import FlowSource

if TYPE_CHECKING:
    from etc_core.data.config import DataConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairRef:
    """Which pair a batch row is: frames t and t+k of clip `clip_id` in `split`."""

    split: str
    clip_id: str
    t: int
    k: int


class FlowEstimator(Protocol):
    def estimate(self, img0: np.ndarray, img1: np.ndarray, refs: list[PairRef]) -> np.ndarray:
        """img0, img1 uint8 [B,H,W,3] RGB (frames t, t+k) -> flow float32 [B,2,H,W], project convention."""


def to_ptlflow_input(img0: np.ndarray, img1: np.ndarray) -> torch.Tensor:
    """uint8 RGB [B,H,W,3] pairs -> ptlflow's images: float BGR in [0,1], [B,2,3,H,W]."""
    if img0.shape != img1.shape or img0.ndim != 4 or img0.shape[-1] != 3:
        raise ValueError(f"frames must be two [B,H,W,3] arrays of one shape, got {img0.shape} and {img1.shape}")
    pair = torch.from_numpy(np.stack([img0, img1], axis=1))  # [B,2,H,W,3] RGB uint8
    pair = pair.permute(0, 1, 4, 2, 3).float().div_(255.0)  # [B,2,3,H,W]
    return pair[:, :, [2, 1, 0]].contiguous()  # RGB -> BGR


def from_ptlflow_output(flows: torch.Tensor) -> np.ndarray:
    """ptlflow's flows [B,1,2,H,W] (x first, image 1 -> image 2) -> project flow float32 [B,2,H,W]."""
    if flows.ndim != 5 or flows.shape[1] != 1 or flows.shape[2] != 2:
        raise ValueError(f"ptlflow flows must be [B,1,2,H,W], got {list(flows.shape)}")
    return flows[:, 0].detach().float().cpu().numpy()


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=4, cutoff=0.4) or known[:4]
    return ", ".join(close)


def _weights_arg(weights: str) -> str | None:
    return None if weights.lower() == "none" else weights


def check_ptlflow(model: str, weights: str, download_timeout: float = 5.0) -> None:
    """Fail fast with one line (ConfigError) on an unknown model, an unknown checkpoint name or weights that are
    neither cached nor downloadable (offline: use a local checkpoint path, or weights=none)."""
    import ptlflow

    names = sorted(ptlflow.get_model_names())
    if model not in names:
        raise ConfigError(f"flow.model: unknown ptlflow model {model!r} (close: {_suggest(model, names)})")
    ckpt = _weights_arg(weights)
    if ckpt is None or os.path.isfile(ckpt):
        return
    available = getattr(ptlflow.get_model_reference(model), "pretrained_checkpoints", {}) or {}
    if ckpt not in available:
        have = ", ".join(sorted(available)) or "none published"
        raise ConfigError(f"flow.weights: {ckpt!r} is neither a file nor a checkpoint of {model} ({have})")
    url = available[ckpt]
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))
    if os.path.isfile(cached):
        return
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=download_timeout).close()
    except Exception as e:  # noqa: BLE001 - any network failure means the same thing here
        raise ConfigError(f"flow.weights: {model} checkpoint {ckpt!r} is not cached and cannot be downloaded "
                          f"({type(e).__name__}); it needs internet, or set flow.weights to a local checkpoint "
                          f"path (or none)") from None


class PtlflowEstimator:
    """A ptlflow model held in memory (one per actor), on CUDA when this process sees a GPU; `half` runs it under
    fp16 autocast there (flow.half; on CPU it runs in float32)."""

    def __init__(self, model: str, weights: str = "none", device: str | None = None, half: bool = False):
        import ptlflow

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.half = half and self.device.type == "cuda"
        self.model = ptlflow.get_model(model, ckpt_path=_weights_arg(weights)).eval().to(self.device)

    def estimate(self, img0: np.ndarray, img1: np.ndarray, refs: list[PairRef]) -> np.ndarray:
        images = to_ptlflow_input(img0, img1).to(self.device)  # [B,2,3,H,W] BGR [0,1]
        with torch.inference_mode(), torch.autocast(self.device.type, torch.float16, enabled=self.half):
            out = self.model({"images": images})
        return from_ptlflow_output(out["flows"])  # [B,2,H,W] float32


class GroundTruthEstimator:
    """Exact flow from a dataset with `pair_flow(split, clip_id, t, k)` (the generated one), any gap k."""

    def __init__(self, dataset):
        if not callable(getattr(dataset, "pair_flow", None)):
            raise ConfigError(f"flow.source=ground_truth: {type(dataset).__name__} has no ground-truth flow "
                              f"(use flow.source=dis, or ptlflow)")
        self.dataset = dataset

    def estimate(self, img0: np.ndarray, img1: np.ndarray, refs: list[PairRef]) -> np.ndarray:
        flows = [self.dataset.pair_flow(r.split, r.clip_id, r.t, r.k)[0] for r in refs]
        return np.stack(flows).astype(np.float32, copy=False)  # [B,2,H,W]


class PtlflowSource(FlowSource):
    """flow.source=ptlflow: flow.model with flow.weights, one model per actor (etc_core/flow/sources.py)."""

    actors = True

    def check(self, data: DataConfig | None = None) -> None:
        check_ptlflow(self.cfg.model, self.cfg.weights)  # the one place the model and its weights are checked

    def identity(self) -> dict:
        identity = {"model": self.cfg.model, "weights": self.cfg.weights}
        if self.cfg.half:  # only when on: shard sets made in float32 keep their hash
            identity["half"] = True
        return identity

    def meta(self) -> dict:
        return {"flow_model": self.cfg.model, "flow_weights": self.cfg.weights}

    def describe(self) -> str:
        return f"{self.cfg.model} (weights {self.cfg.weights})"

    def estimator(self, dataset=None) -> PtlflowEstimator:
        return PtlflowEstimator(self.cfg.model, self.cfg.weights, half=self.cfg.half)


class GroundTruthSource(FlowSource):
    """flow.source=ground_truth: the dataset's exact flow (the generated data's), computed in the read tasks."""

    exact = True

    def check(self, data: DataConfig | None = None) -> None:
        from etc_core.data.registry import dataset_kind

        if data is not None and not dataset_kind(data.kind).exact_flow:
            raise ConfigError(f"flow.source: ground_truth needs a dataset with exact flow, data.kind={data.kind} has "
                              f"none (use flow.source=dis, or ptlflow)")

    def describe(self) -> str:
        return "ground truth"

    def estimator(self, dataset=None) -> GroundTruthEstimator:
        return GroundTruthEstimator(dataset)
