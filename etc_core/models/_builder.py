"""Shared model plumbing: the typed output, backbone weights (ImageNet or a file) with one-line errors, freezing."""
from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, List, NamedTuple, Optional
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from etc_core.errors import EtcError
from etc_core.storage import uri as storage

log = logging.getLogger(__name__)

# model name -> the torchvision ImageNet weights (WeightsEnum member) of its backbone, as `register_model(imagenet=...)`
# names them (etc_core/models/_registry.py); kept here, beside the code that reads weights, so that the registry
# imports this module and never the other way round
IMAGENET: dict[str, Any] = {}


def imagenet_weights(name: str) -> Any:
    """The torchvision ImageNet weights (WeightsEnum member) registered for model `name`, or None."""
    return IMAGENET.get(name)


class SegOutput(NamedTuple):
    """What every model returns: logits [B,K,H,W] at input size, features [B,K,h,w] (1/8 logits), aux or None."""

    logits: Tensor
    features: Tensor
    aux: Optional[Tensor] = None


class PretrainedWeightsError(EtcError, RuntimeError):
    """Backbone weights (ImageNet or a file) cannot be had or do not fit the backbone (exit code 2: fix the setting
    teacher.pretrained / student.pretrained, the file, or the network)."""

    exit_code = 2


@dataclass(frozen=True)
class BackboneState:
    """A backbone's initial weights: where they came from (file, URI or URL), the state dict, the file's sha256."""

    source: str
    state: dict = field(repr=False)
    sha256: str


def upsample_to(x: Tensor, size: List[int]) -> Tensor:
    """Bilinear resize of x [B,C,h,w] to size (H, W), align_corners=False -> [B,C,H,W]."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU, 'same' padding."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def _seed_hint(url: str, cached: str) -> str:
    return (f"pretrained=imagenet needs internet or a cached copy: pre-seed the torch hub cache with "
            f"`curl -fLo {cached} {url}` on a machine that has internet (TORCH_HOME moves the cache)")


def _check_online(model_name: str, url: str, cached: str) -> None:
    """Fail fast (5 s timeout) when the weights URL is unreachable, instead of hanging in the download. A HEAD
    request through urllib, as torch.hub's download goes (proxy settings included)."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5).close()
    except OSError as err:  # URLError, HTTPError, timeouts
        reason = getattr(err, "reason", None) or err
        raise PretrainedWeightsError(f"{model_name}: cannot reach ImageNet weights {url} ({reason}); "
                                     f"{_seed_hint(url, cached)}") from None


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def imagenet_state_dict(model_name: str, weights) -> dict[str, Tensor]:
    """State dict of torchvision `weights` (a WeightsEnum member) from the torch hub cache or the internet."""
    return imagenet_backbone(model_name, weights).state


def imagenet_backbone(model_name: str, weights) -> BackboneState:
    """torchvision `weights` (a WeightsEnum member) from the torch hub cache, downloaded there first when missing
    (torchvision checks the hash in the file name); with the cached file's sha256."""
    url = weights.url
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))
    if not os.path.exists(cached):
        _check_online(model_name, url, cached)
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except OSError as err:  # URLError, HTTPError, connection reset, ...
        raise PretrainedWeightsError(f"{model_name}: cannot download ImageNet weights {url} ({err}); "
                                     f"{_seed_hint(url, cached)}") from None
    sha256 = _sha256_file(cached)
    log.info("%s: loaded ImageNet weights %s (sha256 %s)", model_name, weights, sha256)
    return BackboneState(url, state, sha256)


def read_backbone(source: str, s3=None) -> BackboneState:
    """A torchvision-format backbone state dict from a local path or s3:// URI (s3: its S3Access), loaded
    weights-only (no pickled code runs); PretrainedWeightsError naming the file when it cannot be read."""
    try:
        data = storage.read_bytes(source, *(s3 or ()))
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UriError, UnpicklingError, zip errors: one line naming the file
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise PretrainedWeightsError(f"{source}: cannot read backbone weights ({type(e).__name__}: {reason})") \
            from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{source}: not a state dict (a mapping of parameter names to tensors)")
    return BackboneState(source, state, hashlib.sha256(data).hexdigest())


def weights_identity(model_name: str, pretrained, s3=None) -> str | None:
    """What a stage's cache key holds of its backbone weights (etc_core/train/run.py, stage_hash): None from random
    init; torchvision's URL for ImageNet (its file name carries the hash torchvision checks); the sha256 of the file
    for a path or s3:// URI, so a file replaced at the same path is a new stage. Read once per file and process
    (a local file again when its size or time changes)."""
    if pretrained in (None, False, "none"):
        return None
    if is_imagenet(pretrained):
        weights = imagenet_weights(model_name)
        return f"imagenet:{weights.url}" if weights is not None else None
    source, stamp = str(pretrained), None
    if "://" not in source and os.path.isfile(source):
        info = os.stat(source)
        stamp = (info.st_size, info.st_mtime_ns)
    return _file_identity(source, tuple(s3 or ()), stamp)


@functools.lru_cache(maxsize=32)
def _file_identity(source: str, s3: tuple, stamp) -> str:
    return "sha256:" + read_backbone(source, s3 or None).sha256


def is_imagenet(pretrained) -> bool:
    return pretrained is True or pretrained == "imagenet"


def backbone_weights(model_name: str, pretrained, s3=None) -> BackboneState | None:
    """What `pretrained` (False/"none", True/"imagenet", a path or s3:// URI, or a BackboneState) names for model
    `model_name`'s backbone; None for random init."""
    if pretrained in (None, False, "none"):
        return None
    if isinstance(pretrained, BackboneState):
        return pretrained
    if is_imagenet(pretrained):
        weights = imagenet_weights(model_name)
        if weights is None:
            raise no_pretrained(model_name, "none are registered for it")
        return imagenet_backbone(model_name, weights)
    return read_backbone(str(pretrained), s3)


def _first_bad_key(own: dict[str, Tensor], theirs: dict[str, Tensor], model_name: str) -> str | None:
    for key, value in own.items():
        if key.endswith("num_batches_tracked"):
            continue  # older torchvision files predate it; BatchNorm starts it at 0
        if key not in theirs:
            return f"{key}: missing from the file"
        if tuple(theirs[key].shape) != tuple(value.shape):
            return f"{key}: shape {tuple(theirs[key].shape)} in the file, {tuple(value.shape)} in {model_name}"
    extra = next((k for k in theirs if k not in own), None)
    return f"{extra}: not in {model_name}'s backbone" if extra is not None else None


def load_backbone(backbone: nn.Module, model_name: str, pretrained) -> nn.Module:
    """Load the weights `pretrained` names (see backbone_weights) into backbone, a torchvision-format module
    (ResNet, MobileNet: the classifier's keys included); every key must match. Returns backbone."""
    weights = backbone_weights(model_name, pretrained)
    if weights is None:
        return backbone
    bad = _first_bad_key(backbone.state_dict(), weights.state, model_name)
    if bad is not None:
        raise PretrainedWeightsError(f"{weights.source}: not a torchvision-format {model_name} backbone ({bad})")
    backbone.load_state_dict(weights.state, strict=False)  # keys checked above; strict would refuse old BN files
    log.info("%s: backbone weights from %s (sha256 %s)", model_name, weights.source, weights.sha256)
    return backbone


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
    return PretrainedWeightsError(f"{model_name}: no ImageNet weights exist ({why}); use pretrained=none or a "
                                  f"weights file")


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
