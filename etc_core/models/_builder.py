"""Shared model plumbing: the typed output, ImageNet weight loading with a one-line offline error, freezing."""
from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from typing import List, NamedTuple, Optional
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from etc_core.errors import EtcError

log = logging.getLogger(__name__)


class SegOutput(NamedTuple):
    """What every model returns: logits [B,K,H,W] at input size, features [B,K,h,w] (1/8 logits), aux or None."""

    logits: Tensor
    features: Tensor
    aux: Optional[Tensor] = None


class PretrainedWeightsError(EtcError, RuntimeError):
    """ImageNet weights for `pretrained=True` are missing or cannot be downloaded."""


def upsample_to(x: Tensor, size: List[int]) -> Tensor:
    """Bilinear resize of x [B,C,h,w] to size (H, W), align_corners=False -> [B,C,H,W]."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU, 'same' padding."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def _check_online(model_name: str, url: str, cached: str) -> None:
    """Fail fast (5 s socket timeout) when the weights host is unreachable, instead of hanging in urlopen."""
    host = urlparse(url).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as err:
        raise PretrainedWeightsError(
            f"{model_name}: cannot reach {host} to download ImageNet weights {url} ({err}); pretrained=True needs "
            f"internet or a cached copy at {cached}") from None


def imagenet_state_dict(model_name: str, weights) -> dict[str, Tensor]:
    """State dict of torchvision `weights` (a WeightsEnum member) from the torch hub cache or the internet."""
    url = weights.url
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))
    if not os.path.exists(cached):
        _check_online(model_name, url, cached)
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except OSError as err:  # URLError, HTTPError, connection reset, ...
        raise PretrainedWeightsError(
            f"{model_name}: cannot download ImageNet weights {url} ({err}); pretrained=True needs internet or a "
            f"cached copy at {cached}") from None
    log.info("%s: loaded ImageNet weights %s", model_name, weights)
    return state


class PairedDropout2d(nn.Module):
    """Dropout2d whose channel mask can be shared by the two frames of a temporal pair (docs/method.md).

    Inside `paired_dropout(model)` the batch is [frames t; frames t+k] and samples i and i + B/2 get the same
    mask, so the temporal loss compares two frames seen by the same sub-network: on an identical pair with zero
    flow it is exactly 0 (independent masks would make it 0.147 * mean(z^2) for p = 0.1). Elsewhere it is plain
    Dropout2d."""

    def __init__(self, p: float = 0.1):
        super().__init__()
        self.p = p
        self.paired = False

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if not self.paired:
            return F.dropout2d(x, self.p, True)
        n = x.shape[0] // 2
        keep = (torch.rand(n, x.shape[1], 1, 1, device=x.device) >= self.p).to(x.dtype) / (1 - self.p)
        return x * torch.cat([keep, keep])

    def extra_repr(self) -> str:
        return f"p={self.p}"


@contextmanager
def paired_dropout(model: nn.Module):
    """Within the block, every PairedDropout2d of `model` shares its mask between the two halves of the batch."""
    layers = [m for m in model.modules() if isinstance(m, PairedDropout2d)]
    for m in layers:
        m.paired = True
    try:
        yield model
    finally:
        for m in layers:
            m.paired = False


def no_pretrained(model_name: str, why: str) -> PretrainedWeightsError:
    """The error for a model variant that has no ImageNet weights at all."""
    return PretrainedWeightsError(f"{model_name}: no ImageNet weights exist ({why}); use pretrained=False")


def freeze(model: nn.Module) -> nn.Module:
    """Put model in eval mode and stop its parameters from taking gradients (a frozen teacher); returns it."""
    model.eval()
    model.requires_grad_(False)
    return model


def dilate_(layer: nn.Module, dilation: int) -> nn.Module:
    """Turn a strided stage into a dilated one in place: every 3x3 conv gets stride 1 and `dilation`; 1x1 stride 1.

    Keeps every weight shape, so ImageNet weights still load (the PSPNet/DeepLab output-stride-8 trick).
    """
    for conv in layer.modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        if conv.kernel_size == (3, 3):
            conv.stride, conv.dilation, conv.padding = (1, 1), (dilation, dilation), (dilation, dilation)
        elif conv.kernel_size == (1, 1):
            conv.stride = (1, 1)
    return layer
