"""MLflow plumbing: experiment set-up, stage runs nested under the pipeline's run, params, metrics and pictures.

Only the driver process logs (one writer per SQLite store: concurrent writers race on its schema). Values that look like credentials
never reach MLflow: `log_params` drops keys that name a secret and masks passwords inside URIs.

Against an MLflow server, requests retry a bounded number of times (MLFLOW_HTTP_REQUEST_* defaults below, each
only when the user has not set it), so an unreachable server fails in seconds with one line naming the URI,
not after MLflow's own default of about four minutes.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from etc_core.errors import TrackingError
from etc_core.section import digest as _digest
from etc_core.storage.uri import S3Access
from etc_core.tracking.config import OTHER_STORE, MlflowConfig, local_store_path

log = logging.getLogger(__name__)

_SECRET_RE = re.compile(r"(secret|password|passwd|token|access_key|credential|session_key)", re.I)
_URI_PASSWORD_RE = re.compile(r"(//[^/:@\s]*):[^/@\s]*@")  # scheme://user:password@host
_MAX_PARAM_CHARS = 6000
# 3 retries, sleeping 0, 2 and 4 s (+ up to 1 s jitter each): a restarting server is waited for, a dead one
# fails in about 10 s. The timeout bounds each request to a server that accepts but does not answer.
# the UI opens a "custom model development" experiment on its training runs (mlflow/server/js, ExperimentKind)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
GIT_COMMIT_ENV = "ETC_GIT_COMMIT"  # set by infra/submit.sh: `ray job submit` ships no .git to the job
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def redact(text: str) -> str:
    """Mask the password of every `scheme://user:password@host` in text (for params, tags, logs and errors)."""
    return _URI_PASSWORD_RE.sub(r"\1:***@", text)


def bound_http_retries() -> None:
    """Set HTTP_DEFAULTS in os.environ where the user has not set them (MLflow reads them at each request)."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _unreachable(uri: str, err: Exception, retried: bool = True) -> TrackingError:
    """One line naming the tracking URI, the root cause of an MLflow client failure and how to choose another store
    (retried=False: a failure before any request, such as _answers' connection, says so)."""
    text = str(err)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)  # connection refused, name not known, ...
    caused = re.search(r"Caused by (\w+)\(['\"]([^'\"]*)", text)  # urllib3's root cause once retries ran out
    if isinstance(err, OSError) and err.strerror:
        reason = f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    elif errno:
        reason = errno.group(1).strip()
    elif caused:
        reason = f"{caused.group(1)}: {caused.group(2).strip()}"
    else:
        reason = (text.strip().splitlines() or [type(err).__name__])[0][:300]
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
    after = f" after {retries} retries" if uri.startswith(("http://", "https://")) else ""
    if not retried:
        after = ": its server takes no connection"
    return TrackingError(f"mlflow.tracking_uri {redact(uri)}: cannot use the MLflow store{after} ({redact(reason)}); "
                         f"{OTHER_STORE}")


S3_ENDPOINT_ENV = "MLFLOW_S3_ENDPOINT_URL"  # MLflow's S3 artifact client reads its endpoint from here only


def use_s3(s3: S3Access | None) -> None:
    """MLflow's S3 artifact client in this process meets the project's S3 endpoint (s3.endpoint_url, and s3.region
    for boto3), so `mlflow.artifact_root=s3://...` and an artifact store on S3 need no MLFLOW_S3_ENDPOINT_URL from
    you; one you set wins. Called by everything here that logs or loads (setup, open_store, RunLogger), in whichever
    process it runs: the driver, a Ray Train worker, a Tune trial, predict / evaluate / export."""
    if s3 is None:
        return
    if s3.endpoint_url and not os.environ.get(S3_ENDPOINT_ENV):
        os.environ[S3_ENDPOINT_ENV] = s3.endpoint_url
    if s3.region and not os.environ.get("AWS_DEFAULT_REGION"):
        os.environ["AWS_DEFAULT_REGION"] = s3.region


def setup(cfg: MlflowConfig, s3: S3Access | None = None) -> str:
    """Point MLflow at cfg.tracking_uri and make sure the experiment exists; return its id. s3: the config's S3
    access (cfg.s3.access), for artifacts on S3 (use_s3).

    TrackingError (one line naming the URI) when the store cannot be reached or refuses the request.
    """
    use_s3(s3)
    try:
        return _setup(cfg)
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001 - MlflowException, requests/SQLAlchemy errors: one line naming the store
        raise _unreachable(cfg.tracking_uri, e) from None


def open_store(tracking_uri: str, s3: S3Access | None = None) -> None:
    """Point MLflow at a store to read from, with setup's bounded HTTP retries. A store on this disk must exist: a
    read never creates one (MLflow would make an empty SQLite file or mlruns/ folder). TrackingError names the URI."""
    path = local_store_path(tracking_uri)
    if path is not None:
        sqlite = tracking_uri.startswith("sqlite:")
        if not path.exists() or path.is_dir() == sqlite or (sqlite and path.stat().st_size == 0):
            kind = "file" if sqlite else "folder"
            what = (f"no such {kind}" if not path.exists() else "an empty file" if sqlite and path.is_file() else
                    f"not a {kind}")
            raise TrackingError(f"mlflow.tracking_uri {redact(tracking_uri)}: no MLflow store there ({what}; a read "
                                f"creates none); {OTHER_STORE}")
    _answers(tracking_uri)
    use_s3(s3)
    import mlflow

    bound_http_retries()
    mlflow.set_tracking_uri(tracking_uri)


def _answers(tracking_uri: str, timeout_s: float = 3.0) -> None:
    """A tracking server's host must take a connection: one try, no retries. A one-shot read (predict, evaluate,
    export) against a server that is down says so at once; a training run keeps setup's retries for a server that
    restarts. TrackingError names the URI."""
    url = urlparse(tracking_uri)
    if url.scheme not in ("http", "https") or not url.hostname:
        return
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout_s).close()
    except OSError as e:
        raise _unreachable(tracking_uri, e, retried=False) from None


def check_store(tracking_uri: str) -> None:
    """open_store, then one request (a registry search) that shows the store answers; TrackingError otherwise."""
    open_store(tracking_uri)
    import mlflow

    try:
        mlflow.MlflowClient().search_registered_models(max_results=1)
    except Exception as e:  # noqa: BLE001 - MlflowException, requests/SQLAlchemy errors: one line naming the store
        raise _unreachable(tracking_uri, e) from None


FIRST_USE_WAIT_S = 600.0  # how long a run waits for another one that is creating the same new SQLite store


def _setup(cfg: MlflowConfig) -> str:
    from etc_core import locks

    fresh = None
    if cfg.tracking_uri.startswith("sqlite:///"):
        db = Path(cfg.tracking_uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        fresh = None if db.exists() else locks.store_lock(cfg.tracking_uri)
    # two runs creating one new SQLite store would run MLflow's schema migration at once: one at a time
    with locks.hold(fresh, FIRST_USE_WAIT_S):
        return _open(cfg)


def _open(cfg: MlflowConfig) -> str:
    import mlflow

    bound_http_retries()
    if redact(cfg.tracking_uri) != cfg.tracking_uri:  # MLflow prints "View run ... at: <uri>" when a run ends
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is None:
        location = None
        if "://" in cfg.artifact_root:  # s3://bucket/prefix: MLflow's S3 client, at the endpoint use_s3 set
            location = cfg.artifact_root
        elif not cfg.tracking_uri.startswith(("http://", "https://", "databricks")):
            Path(cfg.artifact_root).mkdir(parents=True, exist_ok=True)
            location = Path(cfg.artifact_root).as_uri()
        try:
            exp_id = client.create_experiment(cfg.experiment, artifact_location=location, tags=EXPERIMENT_KIND)
        except mlflow.exceptions.MlflowException:  # another process created it meanwhile
            exp_id = client.get_experiment_by_name(cfg.experiment).experiment_id
    else:
        exp_id = exp.experiment_id
        for key, value in EXPERIMENT_KIND.items():
            if key not in exp.tags:  # an experiment made before this tag existed; a user's own choice stays
                client.set_experiment_tag(exp_id, key, value)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_commit() -> str | None:
    """The commit of the running code: $ETC_GIT_COMMIT when set, else `git rev-parse HEAD` here, else None."""
    if commit := os.environ.get(GIT_COMMIT_ENV, "").strip():
        return commit
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


@contextmanager
def stage_run(cfg: MlflowConfig, stage: str, run_name: str | None = None, params: dict[str, Any] | None = None,
              parent_run_id: str | None = None, tags: dict[str, str] | None = None,
              system_metrics: bool = False, s3: S3Access | None = None, run_id: str | None = None) -> Iterator[Any]:
    """Open a run for one stage, tagged `etc.stage` and the git commit; nested under the active run or `parent_run_id`.
    s3: the config's S3 access, for artifacts on S3 (use_s3).

    system_metrics: MLflow samples this process's machine (CPU, memory, disk, GPU) into `system/*` while it is open.
    run_id: go on in this existing run (a resumed sweep's parent) instead of starting one; of `params`, only those
    it does not hold yet are logged (MLflow refuses to change a logged param).
    """
    import mlflow

    exp_id = setup(cfg, s3)
    active = mlflow.active_run()
    parent = parent_run_id or (active.info.run_id if active else None)
    run_tags = {"etc.stage": stage, **(tags or {})}
    if commit := git_commit():  # what the UI shows as the run's source version
        run_tags["mlflow.source.git.commit"] = commit
    if parent and not run_id:  # a run gone on in keeps the parent it started under
        run_tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name or stage, experiment_id=exp_id,
                          nested=active is not None, tags=run_tags, log_system_metrics=system_metrics) as run:
        if params and run_id:  # going on in a run: its params are those of its first start (ray.address, ...)
            params = {k: v for k, v in params.items() if k not in run.data.params}
        if params:
            log_params(params)
        yield run


def clean_params(params: dict[str, Any]) -> dict[str, str]:
    """Stringified params without credential-like keys, each cut to MLflow's value limit."""
    out = {}
    for key, value in params.items():
        if _SECRET_RE.search(key):
            continue
        text = "None" if value is None else redact(str(value))
        out[key] = text[:_MAX_PARAM_CHARS]
    return out


def log_params(params: dict[str, Any]) -> None:
    """Log a flat dict of params to the active run (see clean_params); MLflow splits it into batches of 100."""
    import mlflow

    mlflow.log_params(clean_params(params))


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log numeric metrics to the active run; names like `train/loss_tc`, `val/miou`."""
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_image(image: np.ndarray, key: str, step: int = 0) -> None:
    """Log a uint8 [H,W,3] picture to the active run under `key` at `step` (the UI's image slider)."""
    import mlflow

    mlflow.log_image(image, key=key, step=step, synchronous=True)


def shards_dataset(uri: str, manifest: dict):
    """The shard set as an MLflow dataset: source its URI, digest the hash of its manifest, name the data it holds."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    digest = _digest(manifest, 16, default=str)
    data = manifest.get("config", {}).get("data", {})
    name = "shards" + (f"-{data['name']}" if isinstance(data, dict) and data.get("name") else "")
    with warnings.catch_warnings():  # a local path matches MLflow's "" and "file" sources alike: it says so
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(redact(uri))
    return MetaDataset(source, name=name, digest=digest)


def log_shards_input(uri: str, manifest: dict, context: str = "training") -> Any:
    """Log the shard set at `uri` as an input dataset of the active run; returns the dataset (for model metrics)."""
    import mlflow

    dataset = shards_dataset(uri, manifest)
    mlflow.log_input(dataset, context=context)
    return dataset


def log_text(text: str, artifact_file: str) -> None:
    """Log a text file (a table, a config) as an artifact of the active run."""
    import mlflow

    mlflow.log_text(text, artifact_file)


def set_tags(tags: dict[str, str]) -> None:
    import mlflow

    mlflow.set_tags(tags)


def log_figure(fig: Any, artifact_file: str) -> None:
    """Log a matplotlib figure as an artifact of the active run."""
    import mlflow

    mlflow.log_figure(fig, artifact_file)


class RunLogger:
    """Logs to one run by id from any process (a Ray Train rank-0 worker), without an active run."""

    def __init__(self, tracking_uri: str, run_id: str, s3: S3Access | None = None):
        import mlflow

        use_s3(s3)
        bound_http_retries()
        self.client = mlflow.MlflowClient(tracking_uri)
        self.tracking_uri, self.run_id = tracking_uri, run_id

    def system_metrics(self):
        """Start MLflow's sampler of this process's machine (CPU, memory, disk, network, and GPU utilisation and
        memory through pynvml when there is a GPU) into the run's `system/*`, continuing its steps after a restart;
        returns it (`.finish()` stops it). On a Ray Train rank-0 worker it describes the node that trains, not the
        driver's. MLflow's class (not re-exported by `mlflow`; guard: tests/unit/test_tracking_worker.py)."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(self.run_id, resume_logging=True, tracking_uri=self.tracking_uri)
        monitor.start()
        return monitor

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def image(self, image: np.ndarray, key: str, step: int) -> None:
        """A uint8 [H,W,3] picture under `key` at `step` (shown with a step slider in the run's UI)."""
        self.client.log_image(self.run_id, image, key=key, step=step, synchronous=True)
