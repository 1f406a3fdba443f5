"""How a shard stores a pair's flow: the encodings a reader may meet (docs/shards.md, "Flow encodings").

- `png16` (`{key}.flow.png`): KITTI's 16-bit flow PNG, as the KITTI devkit and ptlflow's `flow_utils.flow_read` read
  it: uint16 [H,W,3] in RGB order = (u, v, valid), u = round(64 * flow_x) + 2**15, v likewise, valid = 1. Steps of
  1/64 px over [-512, 511.984] px, so the decoded flow is within 1/128 px of the flow written. A pair whose flow
  leaves that range is stored as `npy` instead (its member says so): nothing wraps and nothing is clipped.
- `npy` (`{key}.flow.npy`): float16 [2,H,W] as np.save writes it; every shard set written before encodings existed.

Both decode to float32 [2,H,W], channel 0 = x, in pixels (docs/conventions.md). cv2 (OpenCV, a ptlflow
dependency) encodes and decodes the PNG: PIL reads 16-bit RGB PNGs as 8-bit.
"""
from __future__ import annotations

import io

import numpy as np

from etc_core.data.png import decode_png

ENCODINGS = ("png16", "npy")
MEMBERS = {"png16": "flow.png", "npy": "flow.npy"}  # encoding -> the sample's flow member ({key}.flow.<ext>)
SCALE = 64.0  # KITTI: 1/64 px per step
OFFSET = 2**15  # KITTI: uint16 value of zero flow
PNG16_MIN, PNG16_MAX = -OFFSET / SCALE, (2**16 - 1 - OFFSET) / SCALE  # -512, 511.984375 px
PNG_WRITE = {"level": 6, "filter": "UP"}  # zlib level and PNG row filter of the writer (benchmarks/flow_encoding.py)


def png16_fits(flow: np.ndarray) -> bool:
    """Whether every value of flow [2,H,W] lies in KITTI's range once rounded to 1/64 px."""
    q = np.rint(np.asarray(flow, np.float32) * SCALE)
    return bool(q.min() >= -OFFSET and q.max() <= 2**16 - 1 - OFFSET) if q.size else True


def encode_flow(flow: np.ndarray, encoding: str) -> tuple[str, bytes]:
    """(member field, bytes) of flow float [2,H,W] in `encoding`; png16 falls back to npy for a pair out of its range
    (see png16_fits)."""
    if encoding not in MEMBERS:
        raise ValueError(f"flow encoding {encoding!r} unknown (known: {', '.join(ENCODINGS)})")
    if encoding == "png16" and png16_fits(flow):
        return MEMBERS["png16"], _encode_png16(flow)
    buf = io.BytesIO()
    np.save(buf, np.asarray(flow).astype(np.float16), allow_pickle=False)
    return MEMBERS["npy"], buf.getvalue()


def _encode_png16(flow: np.ndarray, level: int = PNG_WRITE["level"], png_filter: str = PNG_WRITE["filter"]) -> bytes:
    """KITTI PNG bytes of flow [2,H,W] in range; level: zlib 0-9, png_filter: NONE, SUB, UP, AVG, PAETH or ALL
    (libpng picks per row)."""
    import cv2

    q = (np.rint(np.asarray(flow, np.float32) * SCALE) + OFFSET).astype(np.uint16)  # [2,H,W]; in range (checked)
    bgr = np.stack([np.ones_like(q[0]), q[1], q[0]], axis=-1)  # cv2 writes BGR: the file holds (u, v, valid) as RGB
    flags = cv2.IMWRITE_PNG_ALL_FILTERS if png_filter == "ALL" else getattr(cv2, f"IMWRITE_PNG_FILTER_{png_filter}")
    ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, level, cv2.IMWRITE_PNG_FILTER, flags])
    if not ok:
        raise ValueError(f"cv2.imencode failed on flow of shape {flow.shape}")
    return data.tobytes()


def flow_member(sample: dict) -> str | None:
    """The flow member a raw sample holds (`flow.png` or `flow.npy`), None when it has none."""
    return next((m for m in MEMBERS.values() if m in sample), None)


def decode_flow(field: str, data: bytes) -> np.ndarray:
    """A flow member's bytes -> float32 [2,H,W]; ValueError when they are not a flow of that member's encoding."""
    if field == MEMBERS["npy"]:
        flow = np.load(io.BytesIO(data), allow_pickle=False)
        if flow.ndim != 3 or flow.shape[0] != 2:
            raise ValueError(f"array of shape {flow.shape}, expected [2,H,W]")
        return flow.astype(np.float32)
    if field != MEMBERS["png16"]:
        raise ValueError(f"unknown flow member {field!r} (known: {', '.join(MEMBERS.values())})")
    bgr = decode_png(data, "unchanged")
    if bgr.dtype != np.uint16 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"{bgr.dtype} image of shape {bgr.shape}, expected a 16-bit 3-channel KITTI flow PNG")
    if not bgr[..., 0].all():  # KITTI's invalid pixels: our flow is dense, and 0 would read as -512 px
        raise ValueError("KITTI flow PNG with invalid pixels (valid channel 0); shards hold dense flow")
    flow = np.empty((2, *bgr.shape[:2]), np.float32)
    np.subtract(bgr[..., 2], OFFSET, out=flow[0], dtype=np.float32)
    np.subtract(bgr[..., 1], OFFSET, out=flow[1], dtype=np.float32)
    flow *= 1 / SCALE  # exact: a power of two
    return flow
