"""Model registry in the style of timm: one dict, one decorator, one factory (`create_model`).

A registration may name the torchvision ImageNet weights of the model's backbone (`@register_model(imagenet=...)`,
timm keeps its pretrained configs beside the entry points the same way), so the weights are known without
building the network (etc_core/models/_builder.py holds them, with the code that reads weights).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

from torch import nn

from etc_core.models._builder import IMAGENET, read_backbone

log = logging.getLogger(__name__)

_model_entrypoints: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, imagenet: Any = None):
    """Register an entry point `fn(num_classes, pretrained=False, **kw) -> nn.Module` under its function name;
    `@register_model(imagenet=W)` also records W, the torchvision ImageNet weights of its backbone."""
    if fn is None:
        return lambda f: register_model(f, imagenet=imagenet)
    name = fn.__name__
    if name in _model_entrypoints:
        raise ValueError(f"model '{name}' is already registered (by {_model_entrypoints[name].__module__})")
    _model_entrypoints[name] = fn
    if imagenet is not None:
        IMAGENET[name] = imagenet
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_model_entrypoints)


def is_model(name: str) -> bool:
    """True if `name` is a registered model."""
    return name in _model_entrypoints


def create_model(name: str, num_classes: int, pretrained: bool | str = False, s3=None, **kwargs) -> nn.Module:
    """Build registered model `name` with `num_classes` outputs and its backbone's initial weights.

    pretrained: False / "none" (random init), True / "imagenet" (torchvision's ImageNet weights, checksummed, from
    the torch hub cache or the internet), or a local path / s3:// URI of a torchvision-format backbone state dict
    (read at s3, an etc_core.storage.uri.S3Access). Weights that cannot be had or do not fit the backbone:
    PretrainedWeightsError, one line naming the file or URL (and the first bad key).
    """
    if name not in _model_entrypoints:
        raise ValueError(f"unknown model '{name}' (known: {', '.join(list_models())})")
    if num_classes < 1:
        raise ValueError(f"create_model('{name}'): num_classes must be >= 1, got {num_classes}")
    if isinstance(pretrained, str) and pretrained not in ("none", "imagenet"):
        pretrained = read_backbone(pretrained, s3)  # once here, with the caller's S3 access
    model = _model_entrypoints[name](num_classes=num_classes, pretrained=pretrained, **kwargs)
    log.debug("created %s (num_classes=%d, pretrained=%s, %s)", name, num_classes, pretrained, kwargs)
    return model


def from_weights(name: str, num_classes: int, state_dict: Mapping[str, Any]) -> nn.Module:
    """The one door from saved weights to a network: build registered model `name` with `num_classes` outputs
    (random init: no pretrained backbone is read), load `state_dict` strictly, return it on the CPU in eval mode.

    Unknown name or bad num_classes: ValueError; weights that do not fit: RuntimeError (load_state_dict's).
    """
    model = create_model(name, num_classes=int(num_classes))
    model.load_state_dict(state_dict)
    return model.eval()
