"""Export a model to TorchScript and ONNX, each checked against the eager model (max abs diff of logits).

Both exports take normalised frames float32 [B,3,H,W] (etc_core.models.normalize) and return logits
[B,K,H,W]. TorchScript is scripted, so any batch and size work. ONNX goes through the dynamo exporter
(torch.export + onnxscript): the legacy tracer cannot export PSP's adaptive pooling at most sizes. The ONNX
graph takes any batch at the export size: adaptive pooling bins are fixed for that size, so resize frames to
it (`etc-pipeline predict --size` does the same).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from etc_core.errors import ConfigError
from etc_core.extras import require
from etc_core.models.preprocess import MEAN_RGB, STD_RGB, normalize

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
MIN_OPSET = 18  # the dynamo exporter's native opset; converting down to 17 fails on ReduceMean


class LogitsOnly(nn.Module):
    """The model with a plain tensor output (SegOutput.aux may be None, which tracing and ONNX cannot carry)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model(frames).logits


@dataclass(frozen=True)
class ExportResult:
    format: str
    path: Path
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def example_frames(size: tuple[int, int], batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Random uint8 frames normalised like real input: float32 [batch,3,H,W]."""
    gen = torch.Generator().manual_seed(seed)
    return normalize(torch.randint(0, 256, (batch, 3, *size), generator=gen, dtype=torch.uint8))


def check_formats(formats: tuple[str, ...], opset: int) -> None:
    """The formats are known, the opset new enough and the ONNX packages installed; ConfigError (or the extras' error)
    otherwise."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"--format {','.join(formats)}: expected torchscript, onnx or both")
    if "onnx" in formats and opset < MIN_OPSET:
        raise ConfigError(f"--opset {opset}: the dynamo ONNX exporter writes opset {MIN_OPSET} or newer "
                          f"(the legacy exporter fails on PSP pooling)")
    if "onnx" in formats:
        for module in ("onnxscript", "onnxruntime"):  # the exporter, the parity check
            require(module, "--format onnx")


def export_model(model: nn.Module, meta: dict, out_dir: str | os.PathLike, formats: tuple[str, ...] = FORMATS,
                 opset: int = MIN_OPSET, size: tuple[int, int] = (96, 160),
                 tolerance: float = 1e-3) -> list[ExportResult]:
    """Write out_dir/model.torchscript.pt and/or out_dir/model.onnx plus etc_model.json; return parity results."""
    check_formats(formats, opset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wrapper = LogitsOnly(model.cpu().float().eval()).eval()
    frames = example_frames(size)  # [2,3,H,W]
    with torch.inference_mode():
        expected = wrapper(frames)  # [2,K,H,W]
    results = []
    if "torchscript" in formats:
        results.append(_torchscript(wrapper, out / "model.torchscript.pt", frames, expected, tolerance))
    if "onnx" in formats:
        results.append(_onnx(wrapper, out / "model.onnx", frames, expected, opset, tolerance))
    card = {"arch": meta["arch"], "num_classes": int(meta["num_classes"]), "source": meta.get("source"),
            "input": {"name": "frames", "layout": "[B,3,H,W] float32 RGB, ImageNet-normalised",
                      "mean_rgb": MEAN_RGB, "std_rgb": STD_RGB, "onnx_size": list(size)},
            "output": {"name": "logits", "layout": "[B,K,H,W] float32"}, "opset": opset if "onnx" in formats else None,
            "parity": {r.format: {"max_abs_diff": r.max_abs_diff, "tolerance": r.tolerance} for r in results}}
    _atomic_text(out / "etc_model.json", json.dumps(card, indent=1))
    return results


def _torchscript(wrapper: nn.Module, path: Path, frames: torch.Tensor, expected: torch.Tensor,
                 tolerance: float) -> ExportResult:
    scripted = torch.jit.script(wrapper)
    tmp = path.with_name(path.name + ".tmp")
    scripted.save(str(tmp))
    os.replace(tmp, path)
    loaded = torch.jit.load(str(path), map_location="cpu")  # check what was written, not what is in memory
    with torch.inference_mode():
        diff = (loaded(frames) - expected).abs().max().item()
    log.info("torchscript %s: max abs diff %.3g", path, diff)
    return ExportResult("torchscript", path, diff, tolerance)


def _onnx(wrapper: nn.Module, path: Path, frames: torch.Tensor, expected: torch.Tensor, opset: int,
          tolerance: float) -> ExportResult:
    import onnxruntime as ort

    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(wrapper, (frames,), dynamo=True, opset_version=opset, input_names=["frames"],
                                output_names=["logits"], dynamic_shapes={"frames": {0: batch}}, verbose=False)
    tmp = path.with_name(path.name + ".tmp")
    program.save(str(tmp))
    os.replace(tmp, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff = 0.0
    for rows in (slice(None), slice(0, 1)):  # the example batch and batch 1: the batch axis is dynamic
        got = torch.from_numpy(session.run(["logits"], {"frames": frames[rows].numpy()})[0])
        diff = max(diff, (got - expected[rows]).abs().max().item())
    log.info("onnx %s (opset %d): max abs diff %.3g", path, opset, diff)
    return ExportResult("onnx", path, diff, tolerance)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
