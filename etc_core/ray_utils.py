"""Start or join Ray the same way in every entry point, test and demo.

A local Ray keeps every port on 127.0.0.1: Ray binds all interfaces unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
is set in the environment of the process that starts it. Ray reads that variable once, when `ray` is first
imported, so `init_ray` sets it before importing Ray; the entry points import the modules that load Ray only after
`init_ray`, and a caller that imported Ray earlier without the variable gets a one-line error.
"""
from __future__ import annotations

import logging
import os
import sys

from pydantic import Field

from etc_core.section import Section

log = logging.getLogger(__name__)


class RayConfig(Section):
    """How to reach Ray: `address=None` joins RAY_ADDRESS when set (ray job submit), else starts a local one."""

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)


LOOPBACK_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK_ENV = {LOOPBACK_VAR: "0"}
# one machine has nothing to preempt; the watcher's actor only adds a C++ error line to the console at start
LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
QUIET_HOOK = "etc_core.quiet.quiet_worker"  # runs in every worker process of this driver's Ray job


def init_ray(cfg: RayConfig | None = None, runtime_env: dict | None = None) -> dict:
    """Join the cluster named by cfg.address or RAY_ADDRESS (ray job submit sets it), else start Ray on 127.0.0.1.

    Returns ray.init's context as a dict ({"address": ..., "dashboard_url": ..., "local": started here}); a no-op
    when Ray is up (its dashboard_url then None).
    """
    cfg = cfg or RayConfig()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if not address:
        ray_imported = sys.modules.get("ray")
        if ray_imported is not None and not ray_imported.is_initialized() and os.environ.get(LOOPBACK_VAR) != "0":
            raise RuntimeError(f"init_ray: Ray was imported before {LOOPBACK_VAR}=0 was set, so a local Ray would "
                               f"listen on every interface: set {LOOPBACK_VAR}=0 before Ray is imported")
        os.environ.update(LOOPBACK_ENV)  # inherited by every Ray process this driver starts
        for key, value in LOCAL_TRAIN_ENV.items():
            os.environ.setdefault(key, value)
    import ray

    quiet_env = {"worker_process_setup_hook": QUIET_HOOK, **(runtime_env or {})}  # this job's workers
    if ray.is_initialized():
        return {"address": ray.get_runtime_context().gcs_address, "dashboard_url": None, "local": False}
    if address:
        log.info("joining Ray at %s", address)
        ctx = ray.init(address=address, runtime_env=quiet_env, log_to_driver=True)  # merged into a job's own
    else:
        # Ray's own INFO lines on the driver: its warnings only (this module says where it started)
        # address="local": a new Ray even when a `ray start` cluster on this machine left its address file (Ray
        # would otherwise join that one, and refuse num_cpus); joining is for ray.address / RAY_ADDRESS only
        ctx = ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                       runtime_env=quiet_env, logging_level=logging.WARNING)
        log.info("started a local Ray on 127.0.0.1")  # its dashboard: etc_core/tracking/ui.py, log_addresses
    return {"address": ctx.address_info.get("gcs_address"), "dashboard_url": ctx.dashboard_url,
            "local": not address}


def on_worker(fn, *args, **kwargs):
    """fn(*args, **kwargs) as a Ray task when this process is in Ray (the head's CPU is not where a model should be
    timed or scored): it asks for 1 GPU when the cluster has one, else 1 CPU; without Ray, in this process."""
    import ray

    if not ray.is_initialized():
        return fn(*args, **kwargs)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    task = ray.remote(fn).options(num_cpus=1, num_gpus=gpus, max_retries=0, name=getattr(fn, "__name__", "task"))
    return ray.get(task.remote(*args, **kwargs))
