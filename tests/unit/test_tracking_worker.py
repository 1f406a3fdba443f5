"""What a Ray Train rank-0 worker logs to its stage's run without an active run (etc_core/tracking/mlflow.py,
RunLogger): its metrics, and MLflow's sampler of its own machine, on a real SQLite store."""
from __future__ import annotations

import inspect

import mlflow

from etc_core.tracking.mlflow import RunLogger
from tests.conftest import wait_for


def test_the_worker_samples_its_own_machine_into_the_runs_system_metrics(tmp_path, monkeypatch):
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # the class RunLogger starts is MLflow's own, not re-exported by `mlflow`: fail loudly when its signature moves
    assert {"run_id", "resume_logging", "tracking_uri"} <= set(inspect.signature(SystemMetricsMonitor).parameters)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("x", artifact_location=str(tmp_path / "a"))).info.run_id

    def cpu_steps() -> list[int]:
        return sorted(m.step for m in client.get_metric_history(run_id, "system/cpu_utilization_percentage"))

    for restart in range(2):  # a second worker after a restart goes on from the first one's last step
        before = cpu_steps()
        monitor = RunLogger(uri, run_id).system_metrics()
        try:
            wait_for(lambda: len(cpu_steps()) > len(before), 30, "a system metrics sample")
        finally:
            monitor.finish()
        steps = cpu_steps()
        assert steps == sorted(set(steps)) and (not before or steps[len(before)] > before[-1]), steps
    keys = client.get_run(run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(keys)
    import torch

    # GPU utilisation and memory through pynvml (a dependency) exactly when there is a GPU
    assert any(k.startswith("system/gpu_0_") for k in keys) == torch.cuda.is_available(), sorted(keys)
