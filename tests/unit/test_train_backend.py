"""etc_core/train/backend.py builds on Ray Train's private torch backend (PyTorch's TCPStore listens on every
interface, so one-node runs rendezvous through a file instead): these names and signatures are what it relies on,
and a Ray upgrade that changes them fails here, not in a hung or wide-open training run."""
from __future__ import annotations

import inspect

from ray.train.backend import Backend
from ray.train.torch import TorchConfig
from ray.train.torch import config as torch_config

from etc_core.train.backend import OneNodeTorchConfig, _OneNodeBackend


def _params(func) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_the_private_ray_torch_backend_names_are_still_there():
    assert issubclass(torch_config._TorchBackend, Backend)
    assert issubclass(_OneNodeBackend, torch_config._TorchBackend)
    for hook in ("on_start", "on_shutdown"):
        assert _params(getattr(torch_config._TorchBackend, hook))[:3] == ["self", "worker_group", "backend_config"]
    assert _params(torch_config._setup_torch_process_group) == [
        "backend", "world_rank", "world_size", "init_method", "timeout_s"]
    assert _params(torch_config._set_torch_distributed_env_vars) == []
    # Ray picks the backend through TorchConfig.backend_cls, and the worker group it hands over has these methods
    assert TorchConfig().backend_cls is torch_config._TorchBackend
    assert OneNodeTorchConfig().backend_cls is _OneNodeBackend
    assert {"backend", "timeout_s"} <= set(inspect.signature(TorchConfig).parameters)
    from ray.train._internal.base_worker_group import BaseWorkerGroup

    for method in ("execute", "execute_async", "execute_single", "execute_single_async", "get_resources_per_worker",
                   "__len__"):
        assert callable(getattr(BaseWorkerGroup, method, None)), method
