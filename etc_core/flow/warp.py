"""Backward warping in the project's flow convention, and the flow colour-wheel picture.

Convention (docs/conventions.md): flow[:, 0] is the x (column) and flow[:, 1] the y (row) displacement in pixels,
on the grid of the frame it belongs to; warp(x, flow)(p) = x(p + flow(p)). For a pair (t, t+k) the stored
flow F satisfies warp(frame_{t+k}, F) ~ frame_t, which is ptlflow's flow for the images ordered (t, t+k).
Pixel centres sit at integer coordinates (grid_sample with align_corners=True).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def _check(flow: Tensor, name: str = "flow") -> None:
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"{name} must be [B,2,H,W], got {list(flow.shape)}")


def sample_points(flow: Tensor) -> tuple[Tensor, Tensor]:
    """Where each pixel samples: (x + flow_x, y + flow_y), each [B,H,W] in pixels."""
    _check(flow)
    _, _, height, width = flow.shape
    ys = torch.arange(height, device=flow.device, dtype=flow.dtype).view(1, height, 1)
    xs = torch.arange(width, device=flow.device, dtype=flow.dtype).view(1, 1, width)
    return xs + flow[:, 0], ys + flow[:, 1]


def in_frame_mask(flow: Tensor) -> Tensor:
    """Pixels whose sample point p + flow(p) lies inside the image: bool [B,1,H,W]."""
    px, py = sample_points(flow)
    _, _, height, width = flow.shape
    inside = (px >= 0) & (px <= width - 1) & (py >= 0) & (py <= height - 1)
    return inside.unsqueeze(1)


def warp(x: Tensor, flow: Tensor, mode: str = "bilinear") -> Tensor:
    """Backward-warp x with flow: out(p) = x(p + flow(p)); samples outside the frame are zero.

    x [B,C,H,W] float, flow [B,2,H,W] in pixels (dx, dy), mode "bilinear" or "nearest" -> [B,C,H,W]
    """
    _check(flow)
    if x.ndim != 4 or x.shape[0] != flow.shape[0] or x.shape[2:] != flow.shape[2:]:
        raise ValueError(f"warp: x {list(x.shape)} and flow {list(flow.shape)} must be [B,C,H,W] and [B,2,H,W]")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"warp: mode must be 'bilinear' or 'nearest', got {mode!r}")
    _, _, height, width = flow.shape
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # half precision is too coarse for a grid
    px, py = sample_points(flow.to(dtype))
    grid = torch.stack([2 * px / max(width - 1, 1) - 1, 2 * py / max(height - 1, 1) - 1], dim=-1)  # [B,H,W,2]
    out = F.grid_sample(x.to(dtype), grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out.to(x.dtype)


def _colour_wheel() -> np.ndarray:
    """The Middlebury colour wheel (Baker et al. 2011): [55,3] RGB in [0,255]."""
    segments = [(15, (255, 0, 0), (255, 255, 0)), (6, (255, 255, 0), (0, 255, 0)),
                (4, (0, 255, 0), (0, 255, 255)), (11, (0, 255, 255), (0, 0, 255)),
                (13, (0, 0, 255), (255, 0, 255)), (6, (255, 0, 255), (255, 0, 0))]
    rows = []
    for n, start, end in segments:
        ramp = np.arange(n)[:, None] / n
        rows.append(np.array(start) * (1 - ramp) + np.array(end) * ramp)
    return np.concatenate(rows)


def flow_to_color(flow: np.ndarray | Tensor, max_flow: float | None = None) -> np.ndarray:
    """Colour-code a flow field: hue = direction, saturation = magnitude (white = still).

    flow [2,H,W] (numpy or tensor, project convention) -> uint8 [H,W,3] RGB. `max_flow` fixes the
    magnitude that reaches full saturation (default: the largest magnitude in this field).
    """
    if isinstance(flow, Tensor):
        flow = flow.detach().cpu().numpy()
    flow = np.asarray(flow, np.float64)
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"flow_to_color: flow must be [2,H,W], got {list(flow.shape)}")
    u, v = np.nan_to_num(flow[0]), np.nan_to_num(flow[1])
    rad = np.sqrt(u**2 + v**2)
    scale = max_flow if max_flow is not None else rad.max()
    if scale > 0:
        u, v, rad = u / scale, v / scale, rad / scale
    wheel = _colour_wheel()
    n = len(wheel)
    angle = np.arctan2(-v, -u) / np.pi  # [-1, 1]
    pos = (angle + 1) / 2 * (n - 1)
    k0 = np.floor(pos).astype(int)
    k1 = (k0 + 1) % n
    frac = (pos - k0)[..., None]
    colour = ((1 - frac) * wheel[k0] + frac * wheel[k1]) / 255  # [H,W,3]
    r = np.clip(rad, 0, 1)[..., None]
    colour = 1 - r * (1 - colour)
    colour[rad > 1] *= 0.75  # beyond max_flow: darker
    return np.clip(np.rint(colour * 255), 0, 255).astype(np.uint8)
