"""Per-frame prediction on a video: batched forward, masks as palette PNGs, optional colour overlay.

Each frame goes through the network alone (ETC's point: a per-frame student, no extra cost at test time);
batching only groups frames for throughput.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from etc_core.errors import ConfigError
from etc_core.infer.video import DEFAULT_FPS, VideoWriter, open_frames, overlay, write_mask, write_png
from etc_core.tracking.pictures import palette
from etc_core.models.preprocess import normalize

log = logging.getLogger(__name__)

OVERLAYS = ("video", "png", "none")


def parse_size(text: str | None) -> tuple[int, int] | None:
    """`HxW` (e.g. 512x1024) -> (H, W); None stays None; ConfigError otherwise."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 8 or int(m.group(2)) < 8:
        raise ConfigError(f"--size {text!r}: expected HxW with both at least 8, e.g. 512x1024")
    return int(m.group(1)), int(m.group(2))


def check_run(batch_size: int, device: torch.device, half: bool) -> None:
    """--batch-size and --half can be used on this device; ConfigError otherwise."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
    if half and device.type != "cuda":
        raise ConfigError("--half: half precision needs a CUDA device (this run uses the CPU)")


class Predictor:
    """Frames in, class ids out, on one device; optionally resized for the network and in half precision."""

    def __init__(self, model: nn.Module, device: torch.device, half: bool = False,
                 size: tuple[int, int] | None = None):
        check_run(1, device, half)
        self.device = device
        self.half = half
        self.size = size
        self.model = model.to(device).eval()
        if half:
            self.model.half()
        self.seconds = 0.0  # time spent in forward passes (synchronised on CUDA)
        self.frames = 0

    @torch.inference_mode()
    def logits(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB [B,H,W,3] -> float32 logits [B,K,H,W] at the input resolution."""
        images = torch.as_tensor(frames).to(self.device).permute(0, 3, 1, 2)  # [B,3,H,W] uint8
        height, width = images.shape[-2:]
        inputs = normalize(images)  # [B,3,H,W] float
        if self.size is not None and tuple(self.size) != (height, width):
            inputs = F.interpolate(inputs, size=self.size, mode="bilinear", align_corners=False)
        if self.half:
            inputs = inputs.half()
        start = time.perf_counter()
        logits = self.model(inputs).logits.float()  # [B,K,h,w]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - start
        self.frames += len(images)
        if logits.shape[-2:] != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return logits

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB [B,H,W,3] -> class ids int64 [B,H,W] on the predictor's device."""
        return self.logits(frames).argmax(1)


@dataclass(frozen=True)
class PredictResult:
    num_frames: int
    seconds: float  # wall time: decoding, forward passes and writing
    model_seconds: float  # forward passes only
    masks_dir: Path
    overlay: Path | None

    @property
    def fps(self) -> float:
        return self.num_frames / max(self.seconds, 1e-9)

    @property
    def model_fps(self) -> float:
        return self.num_frames / max(self.model_seconds, 1e-9)


def run_predict(predictor: Predictor, num_classes: int, input_spec: str, out_dir: str | Path,
                batch_size: int = 8, overlay_kind: str = "video", progress: bool = True) -> PredictResult:
    """Predict every frame of `input_spec`; write out_dir/masks/{i:06d}.png and the overlay; return timings."""
    if overlay_kind not in OVERLAYS:
        raise ConfigError(f"--overlay {overlay_kind!r}: expected one of {', '.join(OVERLAYS)}")
    check_run(batch_size, predictor.device, predictor.half)
    source = open_frames(input_spec)  # raises InputError before anything is written
    out = Path(out_dir)
    masks_dir = out / "masks"
    masks_dir.mkdir(parents=True, exist_ok=True)
    pal = palette(num_classes)
    overlay_path: Path | None = None
    writer = None
    if overlay_kind == "video":
        overlay_path = out / "overlay.mp4"
        writer = VideoWriter(overlay_path, source.fps or DEFAULT_FPS)
    elif overlay_kind == "png":
        overlay_path = out / "overlay"
        overlay_path.mkdir(exist_ok=True)
    # disable=None: a bar on a terminal only, so logs and CI output stay clean
    bar = tqdm(total=source.num_frames, desc="predict", unit="frame", disable=None if progress else True)
    index = 0
    start = time.perf_counter()
    try:
        for frames in source.batches(batch_size):  # uint8 [B,H,W,3]
            masks = predictor(frames).to(torch.uint8).cpu().numpy()  # [B,H,W]
            for frame, mask in zip(frames, masks):
                write_mask(masks_dir / f"{index:06d}.png", mask, pal)
                if overlay_kind != "none":
                    blended = overlay(frame, pal[mask])
                    if writer is not None:
                        writer.write(blended)
                    else:
                        write_png(overlay_path / f"{index:06d}.png", blended)
                index += 1
            bar.update(len(frames))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
    if writer is not None:
        writer.close()
    seconds = time.perf_counter() - start
    log.info("predicted %d frames of %s into %s", index, input_spec, masks_dir)
    return PredictResult(index, seconds, predictor.seconds, masks_dir, overlay_path)
