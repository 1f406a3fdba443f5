"""The MLflow runs of a sweep: its parent run (found again when the same sweep resumes) and, with a tracking server,
one child run per trial that the trial opens when it starts, so that its rank-0 Train worker logs `train/*`, `val/*`
and `system/*` to it live. A node-local store (sqlite:, file:) keeps one writer: the trials log nothing and the
driver logs every trial after the sweep (etc_core/sweep/report.py), as before.
"""
from __future__ import annotations

from typing import Any

from etc_core.storage.uri import S3Access
from etc_core.tracking.config import MlflowConfig, node_local_store
from etc_core.tracking.mlflow import bound_http_retries, clean_params, use_s3

TRIAL_STAGE = "sweep-trial"


def live(cfg: MlflowConfig) -> bool:
    """Trials log to their own child runs as they train: only with a tracking server (one writer per SQLite file)."""
    return not node_local_store(cfg.tracking_uri)


def _client(tracking_uri: str, s3: S3Access | None):
    import mlflow

    use_s3(s3)
    bound_http_retries()
    return mlflow.MlflowClient(tracking_uri)


def _find(client, experiment_id: str, tags: dict[str, str]) -> str | None:
    """The newest run of the experiment carrying every tag; None when there is none."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def find_sweep(cfg: MlflowConfig, experiment_id: str, name: str, s3: S3Access | None = None) -> str | None:
    """The parent run of the sweep `name` from an earlier start of it (interrupted or finished), to go on in."""
    return _find(_client(cfg.tracking_uri, s3), experiment_id, {"etc.stage": "sweep", "etc.sweep": name})


def trial_run(cfg: MlflowConfig, parent_run_id: str, trial_id: str, params: dict[str, Any],
              s3: S3Access | None = None) -> str:
    """The child run of one trial under the sweep's parent: the one a restored trial opened before, else a new one
    (tagged etc.trial_id, its params logged); marked running."""
    client = _client(cfg.tracking_uri, s3)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    found = _find(client, experiment_id, {"mlflow.parentRunId": parent_run_id, "etc.trial_id": trial_id})
    if found is not None:
        client.update_run(found, status="RUNNING")
        return found
    run = client.create_run(experiment_id, run_name=f"trial-{trial_id}",
                            tags={"mlflow.parentRunId": parent_run_id, "etc.stage": TRIAL_STAGE,
                                  "etc.trial_id": trial_id})
    from mlflow.entities import Param

    items = list(clean_params(params).items())
    for lo in range(0, len(items), 100):  # MLflow's batch limit
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[lo:lo + 100]])
    return run.info.run_id


def find_trial(cfg: MlflowConfig, parent_run_id: str, trial_id: str, s3: S3Access | None = None) -> str | None:
    """The live child run a trial opened under the parent; None when it opened none."""
    client = _client(cfg.tracking_uri, s3)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return _find(client, experiment_id, {"mlflow.parentRunId": parent_run_id, "etc.trial_id": trial_id})


def end_trial(cfg: MlflowConfig, run_id: str, ok: bool, s3: S3Access | None = None) -> None:
    """A trial's child run ends FINISHED, or FAILED when the trial raised (an ASHA stop is a finish)."""
    _client(cfg.tracking_uri, s3).set_terminated(run_id, "FINISHED" if ok else "FAILED")
