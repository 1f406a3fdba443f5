"""One door for a model given on the command line: `models:/...`, `runs:/...` or a local Ray Train checkpoint."""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

from etc_core.infer import InputError
from etc_core.storage.uri import S3Access
from etc_core.tracking.registry import RegistryError, load_model

log = logging.getLogger(__name__)


def load_any(spec: str, tracking_uri: str | None = None, s3: S3Access | None = None) -> tuple[nn.Module, dict]:
    """Return (model in eval mode on CPU, meta with at least arch and num_classes); InputError when unusable.

    spec: `models:/name@alias`, `models:/name/3`, `runs:/<run_id>[/model]` (resolved against tracking_uri, default
    the mlflow section's: $MLFLOW_TRACKING_URI or runs/mlflow.db), or a checkpoint `state.pt` (or its directory)
    holding {"model", "arch", "num_classes"}. A store that is not there is a TrackingError, never created. s3: the
    config's S3 access, for a model whose artifacts are on S3 (tracking.mlflow.use_s3).
    """
    if spec.startswith(("models:/", "runs:/")):
        from etc_core.tracking.config import MlflowConfig
        from etc_core.tracking.mlflow import open_store

        open_store(tracking_uri or MlflowConfig().tracking_uri, s3)  # bounded retries; a missing local store refused
        if spec.startswith("runs:/") and spec.rstrip("/").count("/") == 1:
            spec = spec.rstrip("/") + "/model"  # a bare run: its logged model
        try:
            model, meta = load_model(spec)
        except RegistryError as e:
            raise InputError(str(e)) from None
        return model, {**meta, "source": spec}
    return _load_checkpoint(spec)


def _load_checkpoint(spec: str) -> tuple[nn.Module, dict]:
    from etc_core.models import from_weights
    from etc_core.train.checkpoint import checkpoint_file, load_checkpoint

    path = checkpoint_file(spec)
    if not path.is_file():
        raise InputError(f"{spec}: not a models:/ or runs:/ URI and no checkpoint file there")
    try:
        state = load_checkpoint(path)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for a bad file
        raise InputError(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
            from None
    missing = [k for k in ("model", "arch", "num_classes") if not isinstance(state, dict) or k not in state]
    if missing:
        raise InputError(f"{path}: not a training checkpoint (missing {', '.join(missing)})")
    try:
        model = from_weights(state["arch"], state["num_classes"], state["model"])
    except (ValueError, RuntimeError) as e:
        raise InputError(f"{path}: weights do not fit {state['arch']} ({str(e).splitlines()[0][:200]})") from None
    log.info("loaded %s (%d classes) from %s", state["arch"], state["num_classes"], path)
    return model, {"arch": state["arch"], "num_classes": int(state["num_classes"]), "source": os.fspath(path)}


def pick_device(name: str | None) -> torch.device:
    """`cuda` when a GPU is visible, else `cpu`; an explicit name must be usable (no silent fallback)."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return device
