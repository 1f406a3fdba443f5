"""Shared fixtures. Every test process keeps Ray on 127.0.0.1 and MLflow telemetry off."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.pop("RAY_ADDRESS", None)  # tests start their own local Ray, never join a user's cluster

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs on 127.0.0.1, shared by the session's integration tests."""
    import ray

    from etc_core.config import RayConfig
    from etc_core.ray_utils import init_ray

    init_ray(RayConfig(num_cpus=2))
    yield ray
    ray.shutdown()


def run_python(*args: str, cwd: Path = REPO, timeout: int = 300):
    """Run `python args...` with this interpreter; returns the CompletedProcess (text mode)."""
    import subprocess

    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
