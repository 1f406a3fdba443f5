"""Where to watch a run: the Ray dashboard, and the MLflow UI opened on the experiment's runs.

MLflow 3.17's UI opens an experiment in its GenAI view (traces, an empty overview) unless this browser has chosen
otherwise (the choice lives in the browser's local storage; the experiment's tag does not decide it). The URL
parameter `workflowType=machine_learning` does: the experiment's runs table in the model-training view.

    log_addresses(cfg, init_ray(...))   the lines every entry point logs right after Ray is up
    ui_lines(cfg.mlflow, experiment_id) the MLflow part alone (pipelines/full.py prints it again at the end)
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from etc_core.tracking.config import node_local_store

if TYPE_CHECKING:  # only named as types here
    from etc_core.config import EtcConfig
    from etc_core.tracking.config import MlflowConfig

log = logging.getLogger(__name__)

UI_HOST, UI_PORT = "127.0.0.1", 5000  # where the MLflow UI listens in the command these lines give


def experiment_url(base: str, experiment_id: str) -> str:
    """The UI page of one experiment's runs, in the model-training view."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def mlflow_command() -> str:
    """The `mlflow` beside this interpreter (the venv's), as a path relative to the current folder when inside it."""
    path = Path(sys.executable).parent / "mlflow"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def ui_command(tracking_uri: str, port: int = UI_PORT) -> str:
    """The command that serves the UI of a store on this disk, bound to 127.0.0.1."""
    from etc_core.tracking.mlflow import redact

    return f"{mlflow_command()} ui --backend-store-uri {redact(tracking_uri)} --host {UI_HOST} --port {port}"


def ui_lines(cfg: MlflowConfig, experiment_id: str) -> list[str]:
    """`MLflow UI: <the experiment's runs>`; for a store on this disk, the command that starts the UI after it."""
    from etc_core.tracking.mlflow import redact

    uri = cfg.tracking_uri
    if not node_local_store(uri) and uri.startswith(("http://", "https://")):
        return [f"MLflow UI: {experiment_url(redact(uri), experiment_id)}"]
    return [f"MLflow UI: {experiment_url(f'http://{UI_HOST}:{UI_PORT}', experiment_id)} once started with",
            f"  {ui_command(uri)}"]


def dashboard_url(address: str | None) -> str | None:
    """http://HOST:PORT from Ray's dashboard address (ray.init gives it without a scheme), or None."""
    if not address:
        return None
    return address if "://" in address else f"http://{address}"


def ray_logs_dir() -> str:
    """Where a Ray started on this machine writes the logs of its latest session (Ray's default temp dir:
    $RAY_TMPDIR, else $TMPDIR on Linux, else /tmp, then ray/; ray/_common/utils.py, get_default_system_temp_dir)."""
    root = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    return f"{root or '/tmp'}/ray/session_latest/logs"


def address_lines(cfg: EtcConfig, ray_info: dict) -> list[str]:
    """What to open while the run goes on: the Ray dashboard (jobs, actors, each worker's logs, the Train and Data
    views; with the log folder of a Ray this process started) and the MLflow UI of the config's experiment (live
    training curves, pictures, the registry). ray_info: what init_ray returned. Reads the experiment's id from the
    store (tracking.setup; the entry point's checks opened it already)."""
    from etc_core.tracking import mlflow as tracking

    url = dashboard_url(ray_info.get("dashboard_url"))
    ray_line = f"Ray dashboard: {url}" if url else "Ray dashboard: unknown (Ray was up before this entry point)"
    if ray_info.get("local"):
        ray_line += f"; logs of its workers: {ray_logs_dir()}"
    return [ray_line, *ui_lines(cfg.mlflow, tracking.setup(cfg.mlflow, cfg.s3.access))]


def log_addresses(cfg: EtcConfig, ray_info: dict) -> None:
    """Log address_lines: every entry point, right after Ray is up and before its first stage."""
    for line in address_lines(cfg, ray_info):
        log.info("%s", line)
