"""Speed: per-frame latency of a forward pass at batch 1 (median of timed runs after warm-up)."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def measure_latency(forward: Callable[[], object], device: torch.device, warmup: int = 3,
                    iters: int = 10) -> float:
    """Median wall time of `forward()` in milliseconds (CUDA synchronised), after `warmup` untimed calls."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        forward()
    sync()
    times = []
    for _ in range(max(iters, 1)):
        start = time.perf_counter()
        forward()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
