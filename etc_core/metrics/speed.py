"""Speed: per-frame latency of a forward pass at batch 1 (median of timed runs after warm-up); the one timer of
the project (model card FPS, `etc-pipeline evaluate`, benchmarks/inference.py)."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def measure_latency(forward: Callable[[], object], device: torch.device, warmup: int = 3, iters: int = 10,
                    budget_s: float = 0.0, max_iters: int = 50) -> float:
    """Median wall time of `forward()` in milliseconds (CUDA synchronised), after `warmup` untimed calls.

    Times at least `iters` calls, then keeps timing while less than `budget_s` seconds have passed since the
    first timed call and fewer than `max_iters` calls are timed (budget_s 0: exactly `iters` calls).
    """
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        forward()
    sync()
    times: list[float] = []
    first = time.perf_counter()
    while len(times) < max(iters, 1) or (time.perf_counter() - first < budget_s and len(times) < max_iters):
        start = time.perf_counter()
        forward()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
