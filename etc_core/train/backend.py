"""Ray Train's torch process group without a TCP rendezvous when every worker runs on one node.

Ray Train's TorchConfig initialises torch.distributed from env:// (a TCPStore on rank 0's MASTER_PORT), and
PyTorch's TCPStore listens on every interface, whatever MASTER_ADDR says. When all workers of a run share one node
(always so for the local default) this backend rendezvouses through a FileStore in that node's temp dir instead
and keeps gloo's sockets on the loopback interface, so a local run opens nothing beyond 127.0.0.1. Runs that span
nodes use Ray's own rendezvous: their nodes must reach each other anyway.

Built on ray.train.torch.config's private `_TorchBackend` and `_setup_torch_process_group` (Ray 2.60).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import ray
from ray.train.torch.config import TorchConfig, _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def _store_path() -> str:
    from etc_core.storage.tmp import owned_temp

    return owned_temp("etc-torch-store-")  # a killed run's store is removed by the next run on the node


def _loopback_gloo() -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


class _OneNodeBackend(_TorchBackend):
    _store: str | None = None

    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        if len(set(worker_group.execute(_node_id))) != 1:
            return super().on_start(worker_group, backend_config)
        backend = backend_config.backend
        if backend is None:
            backend = "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo"
        self._store = worker_group.execute_single(0, _store_path)
        if backend == "gloo":
            worker_group.execute(_loopback_gloo)
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(i, _setup_torch_process_group, backend=backend, world_rank=i,
                                                   world_size=len(worker_group), init_method=f"file://{self._store}",
                                                   timeout_s=backend_config.timeout_s)
                 for i in range(len(worker_group))])

    def on_shutdown(self, worker_group, backend_config: TorchConfig) -> None:
        super().on_shutdown(worker_group, backend_config)
        if self._store is not None:
            worker_group.execute_single(0, _remove, self._store)


@dataclass
class OneNodeTorchConfig(TorchConfig):
    """TorchConfig whose single-node runs rendezvous through a file (see the module docstring)."""

    @property
    def backend_cls(self):
        return _OneNodeBackend
