"""Soak (issue 12, item 7): the demo pipeline several times in a row in one driver process (Ray started once,
every training stage forced each time), recording the driver's memory, open files, threads and Ray's worker
processes after each round; they must not grow.

    python -m benchmarks.soak [--iterations 3]
"""
from __future__ import annotations

import gc
import logging
import time

from benchmarks import common

SHORT = ["train.max_steps=30", "train.steps_per_epoch=15", "pipeline.ptlflow_timing_pairs=0"]


def snapshot(process) -> dict:
    return {"rss_mib": process.memory_info().rss / 2**20, "open_files": process.num_fds(),
            "threads": process.num_threads(), "children": len(process.children(recursive=True))}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=3)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import psutil

    from etc_core.config import load_config
    from etc_core.pipeline import run_pipeline

    started = time.time()
    root = common.ROOT / "soak"
    quick = common.QUICK if args.quick else []
    cfg = load_config(str(common.REPO / "configs" / "demo.yaml"),
                      [f"data.root={root}/data", f"shards.uri={root}/shards", f"mlflow.tracking_uri=sqlite:///{root}/m.db",
                       f"mlflow.artifact_root={root}/mlartifacts", f"train.storage_path={root}/ray_results", *SHORT,
                       *quick])
    common.start_ray(cfg)
    process = psutil.Process()
    rows = []
    for i in range(1, args.iterations + 1):
        t0 = time.perf_counter()
        result = run_pipeline(cfg, force=("teacher", "baseline", "student"))
        gc.collect()
        rows.append({"iteration": i, "seconds": time.perf_counter() - t0, "ran": result.ran, **snapshot(process)})
        print(f"iteration {i}: {rows[-1]}", flush=True)
    result = {"command": "python -m benchmarks.soak" + (" --quick" if args.quick else ""),
              "description": f"configs/demo.yaml with {' '.join(SHORT)}, every training stage forced each round",
              "iterations": rows, "rss_growth_mib": rows[-1]["rss_mib"] - rows[0]["rss_mib"],
              "fd_growth": rows[-1]["open_files"] - rows[0]["open_files"]}
    common.save("soak" + ("_quick" if args.quick else ""), result, started)


if __name__ == "__main__":
    main()
