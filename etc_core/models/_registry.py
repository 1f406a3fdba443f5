"""Model registry in the style of timm: one dict, one decorator, one factory (`create_model`)."""
from __future__ import annotations

import logging
from typing import Callable

from torch import nn

log = logging.getLogger(__name__)

_model_entrypoints: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register an entry point `fn(num_classes, pretrained=False, **kw) -> nn.Module` under its function name."""
    name = fn.__name__
    if name in _model_entrypoints:
        raise ValueError(f"model '{name}' is already registered (by {_model_entrypoints[name].__module__})")
    _model_entrypoints[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_model_entrypoints)


def is_model(name: str) -> bool:
    """True if `name` is a registered model."""
    return name in _model_entrypoints


def create_model(name: str, num_classes: int, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build registered model `name` with `num_classes` outputs; `pretrained` loads ImageNet backbone weights."""
    if name not in _model_entrypoints:
        raise ValueError(f"unknown model '{name}' (known: {', '.join(list_models())})")
    if num_classes < 1:
        raise ValueError(f"create_model('{name}'): num_classes must be >= 1, got {num_classes}")
    model = _model_entrypoints[name](num_classes=num_classes, pretrained=pretrained, **kwargs)
    log.debug("created %s (num_classes=%d, pretrained=%s, %s)", name, num_classes, pretrained, kwargs)
    return model
