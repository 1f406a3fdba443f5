"""The MLflow model registry: log a trained model, register it, move `champion` only when it wins.

A registered version is a pyfunc (MLflow models-from-code, `etc_core/infer/served.py`) that takes uint8 RGB frames
[N,H,W,3] and returns class ids [N,H,W], so `mlflow.pyfunc.load_model` and `mlflow models serve` work without the
project installed: the `etc_core` package travels in the model (`code_paths`) with pinned requirements. Its two
artifacts, `etc_model.json` (arch, num_classes, input size, metrics) and `weights.pt` (a state dict), are read by
`load_weights` with `torch.load(weights_only=True)`; nothing is unpickled. Versions logged before this layout
(an MLflow PyTorch model with the same two files under `extra_files/`) still load through `load_weights`.

The chosen checkpoint's metrics are metrics of the version's LoggedModel (`model_id`), which is where the champion
rule reads them (older versions: their `metric.*` tags).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from etc_core.errors import EtcError
from etc_core.metrics import val_score
from etc_core.tracking.config import OTHER_STORE, RegistryConfig

log = logging.getLogger(__name__)

CHAMPION, CANDIDATE = "champion", "candidate"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # etc_core/, shipped inside every model
SERVED_CODE = PACKAGE_DIR / "infer" / "served.py"  # the models-from-code file MLflow runs to load a version
LAYOUTS = ("artifacts", "extra_files")  # where etc_model.json and weights.pt lie: pyfunc layout, first layout
# what importing etc_core.infer.served pulls in (tests/integration/test_serving.py checks the list is complete)
# nvidia-ml-py: torch imports pynvml whenever it is installed (it is, for system metrics), so a served model does too
SERVING_PACKAGES = ("mlflow", "torch", "torchvision", "timm", "numpy", "pillow", "pydantic", "pyyaml", "tqdm",
                    "nvidia-ml-py")
REREGISTER = "register it again: pipelines/full.py --force STAGE (teacher, baseline or student) retrains it"


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
        return val_score(metrics["val_miou"], metrics["val_tc"], cfg.score_tc_weight)
    return metrics[cfg.champion_metric]


def serving_requirements() -> list[str]:
    """`name==version` of every package the served model imports, at the versions installed here."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in SERVING_PACKAGES]


def serving_signature(num_classes: int):
    """uint8 RGB frames [N,H,W,3] in, class ids [N,H,W] out; param `logits` (bool) returns float32 [N,K,H,W]."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    ids = np.uint8 if num_classes <= 256 else np.int64  # the input is unnamed: a bare array, not {"frames": ...}
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                          outputs=Schema([TensorSpec(np.dtype(ids), (-1, -1, -1), name="classes")]),
                          params=ParamSchema([ParamSpec("logits", "boolean", False)]))


def log_and_register(model: torch.nn.Module, name: str, arch: str, num_classes: int, metrics: dict[str, float],
                     tags: dict[str, str], cfg: RegistryConfig, input_shape: tuple[int, int], *,
                     description: str | None = None, dataset=None) -> Registered:
    """Log `model` as a pyfunc to the active run, register a new version of `name`, then set `champion` or `candidate`.

    metrics go to the version's LoggedModel (linked to `dataset`, an mlflow Dataset, when given); description is
    the version's model card; input_shape (H, W) is the size the model resizes frames to.
    """
    import mlflow

    model = model.cpu().eval()
    clean_metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    with tempfile.TemporaryDirectory() as tmp:
        meta, weights = os.path.join(tmp, "etc_model.json"), os.path.join(tmp, "weights.pt")
        with open(meta, "w") as f:
            json.dump({"arch": arch, "num_classes": num_classes, "input_size": list(input_shape),
                       "metrics": clean_metrics, "tags": tags}, f)
        torch.save(model.state_dict(), weights)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(SERVED_CODE), artifacts={"meta": meta, "weights": weights},
            code_paths=[str(PACKAGE_DIR)], pip_requirements=serving_requirements(),
            signature=serving_signature(num_classes), input_example=np.zeros((1, *input_shape, 3), np.uint8),
            params={"arch": arch, "num_classes": str(num_classes)}, tags=tags)
    if clean_metrics:
        mlflow.log_metrics(clean_metrics, model_id=info.model_id, dataset=dataset)
    client = mlflow.MlflowClient()
    with contextlib.redirect_stderr(io.StringIO()) as said:  # MLflow prints two lines; ours below says it all
        mv = mlflow.register_model(info.model_uri, name, tags=tags)
    log.debug("mlflow.register_model: %s", said.getvalue().strip())
    if description:
        client.update_model_version(name, mv.version, description=description)
    alias = CHAMPION if _beats_champion(client, name, clean_metrics, cfg) else CANDIDATE
    client.set_registered_model_alias(name, alias, mv.version)
    log.info("registered %s version %s as %s", name, mv.version, alias)
    return Registered(name=name, version=str(mv.version), alias=alias, model_uri=f"models:/{name}/{mv.version}")


def logged_model_id(mv) -> str | None:
    """The id of the LoggedModel a version was registered from (the SQL registry keeps it only in `source`)."""
    source = mv.source or ""
    return getattr(mv, "model_id", None) or (source[len("models:/"):] if source.startswith("models:/m-") else None)


def version_metrics(client, mv) -> dict[str, float]:
    """A version's metrics: those of its LoggedModel, else (versions registered before) its `metric.*` tags."""
    import mlflow

    if model_id := logged_model_id(mv):
        try:
            logged = client.get_logged_model(model_id).metrics or []
        except mlflow.exceptions.MlflowException:
            logged = []
        if logged:
            return {m.key: float(m.value) for m in sorted(logged, key=lambda m: (m.step, m.timestamp))}
    return {k.removeprefix("metric."): float(v) for k, v in mv.tags.items() if k.startswith("metric.")}


def _beats_champion(client, name: str, metrics: dict[str, float], cfg: RegistryConfig) -> bool:
    import mlflow

    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return True  # no champion yet
    try:
        theirs = score(version_metrics(client, current), cfg)
    except KeyError:
        return True  # the champion lacks the metric the rule needs
    return score(metrics, cfg) >= theirs + cfg.min_improvement


def _download(uri: str, dst: str) -> str:
    import mlflow

    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst)
    except mlflow.exceptions.MlflowException as e:
        from etc_core.tracking.mlflow import redact

        raise RegistryError(f"{uri}: cannot resolve in the MLflow registry at {redact(mlflow.get_tracking_uri())} "
                            f"({str(e).splitlines()[0]}); {OTHER_STORE}") from None


def resolve_version(uri: str | None) -> str | None:
    """`models:/name@alias` -> `models:/name/N` (the version the alias points at now); other URIs unchanged."""
    m = re.fullmatch(r"models:/([^/@]+)@(.+)", uri or "")
    if not m:
        return uri
    import mlflow

    try:
        version = mlflow.MlflowClient().get_model_version_by_alias(m.group(1), m.group(2)).version
    except mlflow.exceptions.MlflowException:
        return uri
    return f"models:/{m.group(1)}/{version}"


def load_weights(uri: str) -> tuple[dict, dict]:
    """Return (etc_model.json contents, state dict) of a registered model (`models:/name@alias`, a version, ...)."""
    with tempfile.TemporaryDirectory(prefix="etc-model-") as tmp:  # MLflow's own download folder would stay behind
        return _read_weights(uri, _download(uri, tmp))


def _read_weights(uri: str, root: str) -> tuple[dict, dict]:
    found = [os.path.join(root, d) for d in LAYOUTS if os.path.isfile(os.path.join(root, d, "etc_model.json"))]
    if not found:
        raise RegistryError(f"{uri}: not an etc-pipeline model (no etc_model.json under {' or '.join(LAYOUTS)}/); "
                            f"{REREGISTER}")
    try:
        with open(os.path.join(found[0], "etc_model.json")) as f:
            meta = json.load(f)
        state = torch.load(os.path.join(found[0], "weights.pt"), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - OSError, JSON errors, UnpicklingError (code refused by weights_only)
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise RegistryError(f"{uri}: not an etc-pipeline model ({type(e).__name__}: {reason}); {REREGISTER}") \
            from None
    return meta, state


def load_model(uri: str) -> tuple[torch.nn.Module, dict]:
    """Rebuild a registered model from its weights (weights-only loading); returns (model in eval mode, meta)."""
    from etc_core.models import from_weights

    meta, state = load_weights(uri)
    return from_weights(meta["arch"], meta["num_classes"], state), meta
