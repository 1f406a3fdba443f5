"""The model card of a registered version (its MLflow description): what the network is, what it learnt from,
how it scores and how fast it runs, and how to pick it up."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from etc_core.losses import list_terms

if TYPE_CHECKING:  # the aggregate sits above this module (tests/unit/test_layers.py)
    from etc_core.config import EtcConfig


def measure_fps(model: torch.nn.Module, size: tuple[int, int], device: torch.device | None = None) -> float:
    """Frames per second of `model` at batch 1 on a [1,3,H,W] input, on `device` (default: this process's; median
    timing). The model is left where it was and in the mode it was in (the Train worker times the model it trains)."""
    from etc_core.metrics.speed import measure_latency

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    home, training = next(model.parameters()).device, model.training
    model = model.to(device).eval()
    frames = torch.zeros(1, 3, *size, device=device)
    with torch.inference_mode():
        latency_ms = measure_latency(lambda: model(frames), device, warmup=2, iters=5)
    model.to(home).train(training)
    return 1000.0 / max(latency_ms, 1e-6)


def model_card(cfg: EtcConfig, stage: str, spec, name: str, metrics: dict[str, float], manifest: dict,
               size: tuple[int, int], num_classes: int, run_id: str, teacher: str | None) -> str:
    """Markdown for the version's description (the UI renders it on the version's page)."""
    weights = ", ".join(f"{term.label} {getattr(spec.loss, term.weight):g}" for term in list_terms())
    kind = {"teacher": "the teacher", "baseline": "the per-frame baseline (cross-entropy only, no ETC terms)",
            "student": "the ETC student (temporal loss and temporal distillation)",
            "control": "the ETC student's control (the same init and steps, cross-entropy only)"}[stage]
    data = manifest.get("config", {}).get("data", {}) if isinstance(manifest.get("config"), dict) else {}
    splits = ", ".join(f"{split} {v.get('samples', '?')} pairs" for split, v in manifest.get("splits", {}).items())
    source = data.get("kind") or data.get("name") or "?"
    h, w = size
    rows = [("architecture", f"`{spec.arch}`, {num_classes} classes, frames resized to {h}x{w}"),
            ("data", f"`{cfg.shards.uri}` ({source} dataset; {splits or 'no split counts'})"),
            ("ETC loss weights", weights),
            ("teacher", f"`{teacher}`" if teacher else "none"),
            ("val mIoU", _pct(metrics.get("val_miou"))), ("val TC", _pct(metrics.get("val_tc"))),
            ("speed", f"{metrics['fps']:.1f} FPS at batch 1, {h}x{w}, on the registering machine"
             if "fps" in metrics else "-"),
            ("training run", f"`{run_id}`, {cfg.train.max_steps} steps")]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (f"**{name}**: {kind}, trained by etc-pipeline.\n\n| | |\n|---|---|\n{table}\n\n"
            f"Pick it up: `mlflow.pyfunc.load_model(\"models:/{name}@champion\").predict(frames)` with uint8 RGB "
            f"frames [N,H,W,3] gives class ids [N,H,W];\n"
            f"`mlflow models serve -m models:/{name}@champion --env-manager local -h 127.0.0.1 -p 5001`;\n"
            f"`etc-pipeline predict --model models:/{name}@champion --input VIDEO --out DIR`.")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
