"""The `mlflow` and `registry` config sections: where runs and models go (etc_core/tracking/mlflow.py) and when a
registered version becomes champion (etc_core/tracking/registry.py)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator

from etc_core.section import Section
from etc_core.storage.paths import ENV_RE, expand_path


class RegistryConfig(Section):
    """When a newly registered version becomes `champion` (else it is tagged `candidate`)."""

    champion_metric: Literal["val_miou", "val_tc", "val_score"] = "val_miou"
    min_improvement: float = Field(0.0, ge=0)  # in metric points over the current champion
    score_tc_weight: float = Field(0.5, ge=0, le=1)  # val_score = (1 - w) * mIoU + w * TC


DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"
OTHER_STORE = "set MLFLOW_TRACKING_URI or mlflow.tracking_uri=URI to use another store"  # ends the store's errors


class MlflowConfig(Section):
    """Where runs, pictures and models go. tracking_uri: None = $MLFLOW_TRACKING_URI, else SQLite under runs/."""

    tracking_uri: str | None = Field(None, validate_default=True)
    experiment: str = "etc-pipeline"
    artifact_root: str = "runs/mlartifacts"  # new experiments' artifacts: a folder or s3://bucket/prefix

    @field_validator("tracking_uri")
    @classmethod
    def _resolve_uri(cls, value: str | None) -> str:
        value = value or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
        if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
            return "sqlite:///" + expand_path(value[len("sqlite:///"):])  # four slashes: absolute
        return ENV_RE.sub(lambda m: os.environ.get(m.group(1), m.group(0)), value)

    @field_validator("artifact_root")
    @classmethod
    def _absolute_artifacts(cls, value: str) -> str:
        return value if "://" in value else expand_path(value)  # s3://bucket/prefix passes through as it is


def node_local_store(tracking_uri: str) -> bool:
    """An MLflow store on this machine's disk (sqlite:, file: or a bare path), not a server every node reaches."""
    return tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri


def local_store_path(tracking_uri: str) -> Path | None:
    """The file (sqlite:) or folder (file:, a bare path) of a store on this machine's disk; None for a server."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):].split("?")[0])  # sqlite:////abs/path, sqlite:///rel/path
    if tracking_uri.startswith("file:"):
        return Path(urlparse(tracking_uri).path)
    return Path(tracking_uri) if "://" not in tracking_uri else None
