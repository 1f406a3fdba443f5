"""Time a ptlflow model on real pairs from the shards, inside a Ray task (the demo's timing example).

pipeline.ptlflow_timing_pairs asks for it in pipelines/full.py; it means something beside shards of exact flow
(FlowSource.exact): what estimating that flow would cost, and how far the estimate is from it (EPE).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the aggregate sits above this module (tests/unit/test_layers.py)
    from etc_core.config import EtcConfig
    from etc_core.flow.config import FlowConfig
    from etc_core.flow.sources import FlowSource


def timed_flow(cfg: EtcConfig, source: FlowSource | None = None) -> FlowConfig | None:
    """The flow section of the model that pipeline.ptlflow_timing_pairs times (flow.model, random init); None when
    no pairs are asked for or the shards' flow is not exact. source: cfg.flow's (made here when not given)."""
    from etc_core.flow.sources import create_flow_source

    if not cfg.pipeline.ptlflow_timing_pairs or not (source or create_flow_source(cfg.flow)).exact:
        return None
    return cfg.flow.model_copy(update={"source": "ptlflow", "weights": "none"})


def _time_on_pairs(model: str, weights: str, img0: np.ndarray, img1: np.ndarray, flow: np.ndarray,
                   batch_size: int) -> dict:
    from etc_core.flow.estimate import PtlflowEstimator

    estimator = PtlflowEstimator(model, weights)
    estimator.estimate(img0[:1], img1[:1], [])  # warm-up
    start = time.perf_counter()
    out = np.concatenate([estimator.estimate(img0[i:i + batch_size], img1[i:i + batch_size], [])
                          for i in range(0, len(img0), batch_size)])
    seconds = time.perf_counter() - start
    epe = float(np.sqrt(((out - flow) ** 2).sum(1)).mean())  # end-point error against the shard flow
    return {"pairs": len(img0), "pairs_per_s": len(img0) / seconds, "epe_vs_shards": epe}


def time_flow_model(cfg: EtcConfig, pairs: int) -> dict:
    """pairs/s and EPE (vs the shards' flow) of cfg.flow.model with cfg.flow.weights on `pairs` val pairs."""
    import ray

    from etc_core.data import shards

    samples = []
    for sample in shards.iter_samples(cfg.shards.uri, "val", cfg.s3.access):
        samples.append(sample)
        if len(samples) == pairs:
            break
    img0 = np.stack([s["img0"] for s in samples])
    img1 = np.stack([s["img1"] for s in samples])
    flow = np.stack([s["flow"] for s in samples])
    task = ray.remote(num_cpus=cfg.flow.cpus_per_actor)(_time_on_pairs)
    result = ray.get(task.remote(cfg.flow.model, cfg.flow.weights, img0, img1, flow, cfg.flow.batch_size))
    return {"model": cfg.flow.model, "weights": cfg.flow.weights, **result}
