"""Right after init_ray, before any work: the cluster can hold what the config asks for, and its paths mean the same
on every node.

Without an autoscaler, a request larger than the cluster would wait forever (Ray Train logs `Requesting
resources` once and then nothing): it is one line naming the keys and what the cluster has, exit 2. With one
(Ray publishes its cluster config), a request within the cluster's maximum is awaited, with a line every
WAIT_LOG_S seconds saying what; beyond the maximum it is the same one line.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from etc_core.errors import ConfigError
from etc_core.tracking.config import node_local_store

if TYPE_CHECKING:  # only named as a type here
    from etc_core.config import EtcConfig

log = logging.getLogger(__name__)

WAIT_LOG_S = 30.0


def requests(cfg: EtcConfig, stages: tuple[str, ...], sweep: bool = False) -> list[tuple[str, dict[str, float]]]:
    """[(what, {"CPU": n, "GPU": m})] for each training stage, and one sweep trial, that cfg runs."""
    from etc_core.train.config import stage_config, trial_resources, worker_resources

    out = []
    for stage in stages:
        t = stage_config(cfg, stage).train
        out.append((f"{stage}: {_keys(cfg, stage)}train.workers={t.workers} x train.cpus_per_worker="
                    f"{t.cpus_per_worker:g}" + (" (train.use_gpu: 1 GPU each)" if t.use_gpu else ""),
                    worker_resources(t)))
    if sweep:
        t = stage_config(cfg, "student").train
        out.append((f"one sweep trial: sweep.cpus_per_trial={cfg.sweep.cpus_per_trial:g} + train.workers="
                    f"{t.workers} x train.cpus_per_worker={t.cpus_per_worker:g}", trial_resources(cfg)))
    return out


def _keys(cfg: EtcConfig, stage: str) -> str:
    section = "teacher" if stage == "teacher" else "student" if stage == "student" else None
    own = getattr(cfg, section).train if section else {}
    return f"with {section}.train overrides {sorted(own)}, " if own else ""


def check_cluster(cfg: EtcConfig, stages: tuple[str, ...] = (), sweep: bool = False) -> threading.Thread | None:
    """ConfigError when a request can never be met here, or when a relative path would mean a different folder on
    each node; returns the thread logging the wait for an autoscaler (None when nothing is awaited)."""
    import ray
    from ray._private.state import state  # private; Ray Train reads the same (guard: tests/unit/test_resources.py)

    have = ray.cluster_resources()
    most = state.get_max_resources_from_cluster_config()  # None: no autoscaler, the cluster is what it is
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    _check_tracking(cfg, nodes)  # first: with a node-local store, the relative artifact_root is beside the point
    _check_paths(cfg, nodes, most is not None)
    waiting = []
    for what, need in requests(cfg, stages, sweep):
        limit = have if most is None else {k: max(most.get(k, 0), have.get(k, 0)) for k in need}
        short = {k: v for k, v in need.items() if v > limit.get(k, 0)}
        if short:
            where = "this Ray cluster has" if most is None else "this cluster's autoscaler can reach at most"
            raise ConfigError(f"{what} asks for {_fmt(short)}; {where} {_fmt({k: limit.get(k, 0) for k in short})}"
                              " (lower those keys" + (", or start Ray with more: ray.num_cpus)" if most is None
                                                      else ")"))
        if any(v > have.get(k, 0) for k, v in need.items()):
            waiting.append((what, need))
    if not waiting:
        return None
    thread = threading.Thread(target=_log_wait, args=(waiting,), name="etc-await-resources", daemon=True)
    thread.start()
    return thread


def _log_wait(waiting: list[tuple[str, dict[str, float]]]) -> None:
    """Every WAIT_LOG_S: what is still awaited from the autoscaler, until the cluster holds it (or this process
    leaves Ray: ray.shutdown() ends the wait)."""
    import ray

    while waiting and ray.is_initialized():
        have = ray.cluster_resources()
        waiting = [(what, need) for what, need in waiting if any(v > have.get(k, 0) for k, v in need.items())]
        for what, need in waiting:
            log.info("waiting for the autoscaler: %s needs %s, the cluster has %s now", what, _fmt(need),
                     _fmt({k: have.get(k, 0) for k in need}))
        time.sleep(WAIT_LOG_S)


def _check_paths(cfg: EtcConfig, nodes: int, autoscaled: bool) -> None:
    """A path the config gave relative names another folder (or none) on the other nodes: refuse it there."""
    relative = relative_paths(cfg)
    if relative and (nodes > 1 or autoscaled):
        key, value = relative[0]
        span = f"{nodes} nodes" if nodes > 1 else "an autoscaler (it may add nodes)"
        raise ConfigError(f"{key}: {value!r} is relative and this Ray cluster has {span}; give an absolute path on a "
                          "filesystem every node mounts, or s3:// (docs/cluster.md)")


def _check_tracking(cfg: EtcConfig, nodes: int) -> None:
    """A Ray cluster of several nodes needs an MLflow store that every node reaches (a server): a sqlite: or file
    store is node-local, so each node would log to its own."""
    uri = cfg.mlflow.tracking_uri
    if nodes > 1 and node_local_store(uri):
        from etc_core.tracking.mlflow import redact

        raise ConfigError(f"mlflow.tracking_uri {redact(uri)}: a node-local store, but Ray spans {nodes} nodes; run "
                          f"an MLflow server (infra/mlflow_server.sh) and set mlflow.tracking_uri=http://HOST:5000")


def relative_paths(cfg: EtcConfig) -> list[tuple[str, str]]:
    """[(key, value as written)] of the config's paths that were given relative (config.py records them)."""
    return list(getattr(cfg, "_relative", None) or ())


def _fmt(res: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in res.items() if v or k == "CPU")
