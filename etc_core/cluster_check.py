"""Right after init_ray, before any work: the cluster can hold what the config asks for, and its paths mean the same
on every node (relative paths are refused on a multi-node cluster; every local path the workers will read is looked
for on every alive node by a small Ray task pinned to it).

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
    from etc_core.train.config import section_name, stage_spec

    own = stage_spec(cfg, stage).train  # the baseline takes no student.train
    return f"with {section_name(stage)}.train overrides {sorted(own)}, " if own else ""


def check_cluster(cfg: EtcConfig, stages: tuple[str, ...] = (), sweep: bool = False,
                  flow: bool = False) -> threading.Thread | None:
    """ConfigError when a request can never be met here, when a relative path would mean a different folder on
    each node, or when a local path the workers read is missing on a node (flow: the flow stage may run, so its
    workers read data.root and flow.weights too); returns the thread logging the wait for an autoscaler (None when
    nothing is awaited)."""
    import ray
    from ray._private.state import state  # private; Ray Train reads the same (guard: tests/unit/test_resources.py)

    have = ray.cluster_resources()
    most = state.get_max_resources_from_cluster_config()  # None: no autoscaler, the cluster is what it is
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    _check_tracking(cfg, nodes)  # first: with a node-local store, the relative artifact_root is beside the point
    _check_paths(cfg, nodes, most is not None)
    if nodes > 1:
        check_on_nodes(worker_paths(cfg, stages, sweep, flow))
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


def worker_paths(cfg: EtcConfig, stages: tuple[str, ...], sweep: bool, flow: bool) -> list[tuple[str, str]]:
    """[(key, local path)] that Ray workers on any node read or write: the shards and Ray Train's storage when anything
    trains, and the data root and a flow checkpoint file when the flow stage may run. s3:// is left out (every node
    reaches it the same way), and so are backbone weights and init_from (the driver reads them and hands them over)."""
    from pathlib import Path

    from etc_core.storage.uri import is_s3
    from etc_core.train.config import stage_config

    out = []
    if flow:
        out.append(("data.root", cfg.data.root))
        if cfg.flow.source == "ptlflow" and Path(cfg.flow.weights).is_file():
            out.append(("flow.weights", cfg.flow.weights))
    if flow or stages or sweep:
        out.append(("shards.uri", cfg.shards.uri))
    for stage in stages or (("student",) if sweep else ()):
        out.append((f"{stage}: train.storage_path", stage_config(cfg, stage).train.storage_path))
    seen: set[str] = set()
    return [(k, v) for k, v in out if v and not is_s3(v) and not (v in seen or seen.add(v))]


def _probe(paths: list[str]) -> list[str]:
    """The paths missing on the node this runs on."""
    import os

    return [p for p in paths if not os.path.exists(p)]


def check_on_nodes(paths: list[tuple[str, str]], timeout_s: float = 120.0) -> None:
    """Look for each path (or, where it does not exist yet, the nearest folder above it that exists here) on every
    alive node with a zero-CPU Ray task pinned to it: one line naming the key, the path and the node where it is
    missing. A shared mount at the same path on every node passes."""
    import os
    from pathlib import Path

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not paths:
        return
    looked = []
    for key, value in paths:
        path = Path(value)
        while not path.exists() and path != path.parent:  # not made yet (shards, storage): its parent must be shared
            path = path.parent
        looked.append((key, value, str(path)))
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
        [p for _, _, p in looked]): n for n in nodes}
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    for ref in late:
        ray.cancel(ref, force=True)
        log.warning("node %s did not answer the path check in %.0f s; its paths were not checked",
                    _node_name(refs[ref]), timeout_s)
    for ref in ready:
        missing = set(ray.get(ref))
        for key, value, path in looked:
            if path in missing:
                shown = value if path == value else f"{value} (its folder {path})"
                raise ConfigError(f"{key}: {shown} is missing on node {_node_name(refs[ref])} (this host "
                                  f"{os.uname().nodename} has it); mount it at the same path on every node, or use "
                                  "s3:// (docs/cluster.md)")


def _node_name(node: dict) -> str:
    name, ip = node.get("NodeName") or node.get("NodeManagerAddress"), node.get("NodeManagerAddress")
    return f"{name} ({node['NodeID'][:8]})" if name == ip else f"{name} ({ip}, {node['NodeID'][:8]})"


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
