"""The MLflow model registry: log a trained model, register it, move `champion` only when it wins.

A registered model carries three things: the MLflow PyTorch model (pickle format: `mlflow.pytorch.load_model`
gives the project's own network class, any input size), and two extra files, `etc_model.json` (arch,
num_classes, metrics) and `weights.pt` (a state dict), which `load_weights` reads with
`torch.load(weights_only=True)` so the project's own loaders never unpickle code.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

from etc_core.config import RegistryConfig
from etc_core.errors import EtcError

log = logging.getLogger(__name__)

CHAMPION, CANDIDATE = "champion", "candidate"


class RegistryError(EtcError):
    """A model URI does not resolve (no such model, version or alias) or its files are unreadable."""


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    alias: str  # champion or candidate
    model_uri: str


def score(metrics: dict[str, float], cfg: RegistryConfig) -> float:
    """The number the champion rule compares (higher is better)."""
    if cfg.champion_metric == "val_score":
        return (1 - cfg.score_tc_weight) * metrics["val_miou"] + cfg.score_tc_weight * metrics["val_tc"]
    return metrics[cfg.champion_metric]


def log_and_register(model: torch.nn.Module, name: str, arch: str, num_classes: int, metrics: dict[str, float],
                     tags: dict[str, str], cfg: RegistryConfig, input_shape: tuple[int, int]) -> Registered:
    """Log `model` to the active run, register a new version of `name`, then set `champion` or `candidate`."""
    import mlflow

    model = model.cpu().eval()
    example = np.zeros((1, 3, *input_shape), np.float32)
    clean_metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    with tempfile.TemporaryDirectory() as tmp:
        meta = os.path.join(tmp, "etc_model.json")
        weights = os.path.join(tmp, "weights.pt")
        with open(meta, "w") as f:
            json.dump({"arch": arch, "num_classes": num_classes, "metrics": clean_metrics, "tags": tags}, f)
        torch.save(model.state_dict(), weights)
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        signature = ModelSignature(  # any batch and size: frames in, per-class logits (SegOutput.logits) out
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1), name="frames")]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes, -1, -1), name="logits")]))
        info = mlflow.pytorch.log_model(
            model, name="model", input_example=example, signature=signature, serialization_format="pickle",
            extra_files=[meta, weights], pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    client = mlflow.MlflowClient()
    mv = mlflow.register_model(info.model_uri, name, tags={**tags, **{f"metric.{k}": f"{v:.4f}" for k, v in
                                                                     clean_metrics.items()}})
    alias = CHAMPION if _beats_champion(client, name, clean_metrics, cfg) else CANDIDATE
    client.set_registered_model_alias(name, alias, mv.version)
    log.info("registered %s version %s as %s", name, mv.version, alias)
    return Registered(name=name, version=str(mv.version), alias=alias, model_uri=f"models:/{name}/{mv.version}")


def _beats_champion(client, name: str, metrics: dict[str, float], cfg: RegistryConfig) -> bool:
    import mlflow

    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return True  # no champion yet
    try:
        theirs = score({k.removeprefix("metric."): float(v) for k, v in current.tags.items()
                        if k.startswith("metric.")}, cfg)
    except KeyError:
        return True  # the champion lacks the metric the rule needs
    return score(metrics, cfg) >= theirs + cfg.min_improvement


def _download(uri: str) -> str:
    import mlflow

    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=uri)
    except mlflow.exceptions.MlflowException as e:
        from etc_core.tracking.mlflow import redact

        raise RegistryError(f"{uri}: cannot resolve in the MLflow registry at {redact(mlflow.get_tracking_uri())} "
                            f"({str(e).splitlines()[0]})") from None


def load_weights(uri: str) -> tuple[dict, dict]:
    """Return (etc_model.json contents, state dict) of a registered model (`models:/name@alias`, a version, ...)."""
    root = _download(uri)
    extra = os.path.join(root, "extra_files")
    try:
        with open(os.path.join(extra, "etc_model.json")) as f:
            meta = json.load(f)
        state = torch.load(os.path.join(extra, "weights.pt"), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - OSError, JSON errors, UnpicklingError (code refused by weights_only)
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise RegistryError(f"{uri}: not an etc-pipeline model ({type(e).__name__}: {reason})") from None
    return meta, state


def load_model(uri: str) -> tuple[torch.nn.Module, dict]:
    """Rebuild a registered model from its weights (weights-only loading); returns (model in eval mode, meta)."""
    from etc_core.models import create_model

    meta, state = load_weights(uri)
    model = create_model(meta["arch"], num_classes=meta["num_classes"])
    model.load_state_dict(state)
    return model.eval(), meta
