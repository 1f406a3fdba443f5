"""Flow stage throughput (issue 19): the Ray Data stage against its worker count and against a plain loop.

1. Ground-truth flow (costs nothing: what is left is reading, encoding and writing) at 384x768, 160 pairs: the
   stage on 1 and 2 CPUs (flow.max_cpus), and the driver's own CPU time as a fraction of the stage's wall time.
2. RAPIDFlow, random init (the same compute as trained weights) at 192x320, 1008 pairs: a plain sequential loop
   in this process writing the same shards (etc_core.flow.work.write_shards_sequentially: the same code and
   bytes), and the stage with 1 and 2 flow actors.
3. DIS (OpenCV, a CPU estimator that runs here for real) at the same size: the plain loop against the stage at its
   defaults (issue 35: the stage >= 1.0x the loop).
4. With CUDA: pairs/s per GPU of two ptlflow models through the stage, 1 and 2 actors on one GPU.

Ray is started (or joined) and its workers warmed up by a tiny run before anything is timed. Every row reports end-to-end pairs/s (the stage's compute
phase: actor start-up included), steady-state pairs/s (after the first shard was written), the slowest actor's
start-up, the driver's CPU time and where the workers' time went (read, flow, write, summed over shards).

    python -m benchmarks.flow_stage [--model rapidflow] [--half]      # results: benchmarks/results/flow_stage.json
    python -m benchmarks.flow_stage --quick                           # tiny sizes: checks the script runs
"""
from __future__ import annotations

import logging
import os
import shutil
import time

from benchmarks import common

GPU_MODELS = ("rapidflow_it1", "raft_small")
# (frame, videos, frames per video, samples per shard); every pair of a 9-frame clip: videos x 8 pairs
GROUND_TRUTH = {"full": ((384, 768), 20, 9, 16), "quick": ((32, 48), 4, 4, 2)}
PTLFLOW = {"full": ((192, 320), 126, 9, 64), "quick": ((64, 96), 4, 3, 2)}


def _cfg(name: str, size: tuple, *extra: str):
    """The bench config of one dataset size, with its own data and shard folders under runs/bench/flow/."""
    (height, width), videos, frames, per_shard = size
    root = common.ROOT / "flow"
    return common.bench_config(f"data.root={root}/data-{height}x{width}-{videos}x{frames}",
                               f"shards.uri={root}/{name}", f"data.height={height}", f"data.width={width}",
                               f"data.num_videos={videos}", f"data.num_frames={frames}", "data.label_every=1",
                               "shards.k=[1]", f"shards.max_samples_per_shard={per_shard}", *extra)


def _row(pairs: int, seconds: float, steady: float, startup: float, driver_cpu: float, profile: dict) -> dict:
    return {"pairs": pairs, "seconds": seconds, "pairs_per_s": pairs / seconds, "steady_pairs_per_s": steady,
            "startup_s": startup, "driver_cpu_s": driver_cpu, "driver_cpu_fraction": driver_cpu / seconds,
            "profile": profile}


def stage(name: str, size: tuple, *extra: str) -> dict:
    """One run of run_flow_stage into a fresh shard folder (the dataset is generated first, untimed)."""
    from etc_core.data.registry import open_dataset
    from etc_core.flow.stage import run_flow_stage

    cfg = _cfg(name, size, *extra)
    dataset = open_dataset(cfg.data, generate=True)
    shutil.rmtree(cfg.shards.uri, ignore_errors=True)
    r = run_flow_stage(cfg, dataset, progress=False)
    shutil.rmtree(cfg.shards.uri)
    row = _row(r.pairs_computed, r.seconds, r.steady_pairs_per_s, r.startup_s, r.driver_cpu_s, r.profile)
    print(f"{name}: {row['pairs_per_s']:.2f} pairs/s end to end, {row['steady_pairs_per_s']:.2f} steady, start-up "
          f"{row['startup_s']:.1f} s, driver CPU {100 * row['driver_cpu_fraction']:.1f} % of wall", flush=True)
    return row


def sequential(name: str, size: tuple, *extra: str) -> dict:
    """The plain loop in this process: build the estimator (all of this process's torch threads), then read,
    estimate, encode and write shard by shard."""
    from etc_core.data.registry import open_dataset
    from etc_core.flow.sources import create_flow_source
    from etc_core.flow.stage import plan_shards
    from etc_core.flow.work import ShardJob, steady_rate, write_shards_sequentially

    cfg = _cfg(name, size, *extra)
    dataset = open_dataset(cfg.data, generate=True)
    jobs = [ShardJob(split, i, s) for split, plan in plan_shards(dataset, cfg).items() for i, s in enumerate(plan)]
    shutil.rmtree(cfg.shards.uri, ignore_errors=True)
    start, cpu = time.perf_counter(), time.process_time()
    estimator = create_flow_source(cfg.flow).estimator(dataset)
    startup = time.perf_counter() - start
    done_at = []
    for job in jobs:
        write_shards_sequentially(cfg, dataset, [job], estimator)
        done_at.append((time.perf_counter() - start, len(job.samples)))
    seconds = time.perf_counter() - start
    shutil.rmtree(cfg.shards.uri)
    row = _row(sum(len(j.samples) for j in jobs), seconds, steady_rate(done_at), startup,
               time.process_time() - cpu, {})
    print(f"{name}: {row['pairs_per_s']:.2f} pairs/s end to end, {row['steady_pairs_per_s']:.2f} steady", flush=True)
    return row


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="rapidflow", help="the CPU rows' ptlflow model (random init)")
    p.add_argument("--half", action="store_true", help="GPU rows with flow.half (fp16 autocast)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    import ptlflow  # noqa: F401 - imported once, before the sequential loop's timing

    started, mode = time.time(), "quick" if args.quick else "full"
    # 2 flow actors of 1 CPU each and a CPU for the read and write tasks: 3 logical CPUs even on 2 cores
    common.start_ray(common.bench_config(f"ray.num_cpus={max(os.cpu_count() or 1, 3)}"))
    gt_size, pt_size = GROUND_TRUTH[mode], PTLFLOW[mode]
    warm = time.perf_counter()  # Ray starts its worker processes on first use: not part of any row
    stage("warm-up", GROUND_TRUTH["quick"], "flow.max_cpus=2")
    warm_up_s = time.perf_counter() - warm
    gt = {f"{n} worker{'s' * (n > 1)}": stage(f"gt-{n}", gt_size, f"flow.max_cpus={n}") for n in (1, 2)}
    ptl = ["flow.source=ptlflow", f"flow.model={args.model}", "flow.weights=none"]
    pt = {"sequential": sequential("seq", pt_size, *ptl)}
    for n in (1, 2):
        pt[f"{n} actor{'s' * (n > 1)}"] = stage(f"pt-{n}", pt_size, *ptl, f"flow.num_actors={n}")
    dis = {"sequential": sequential("dis-seq", pt_size, "flow.source=dis"),
           "stage (defaults)": stage("dis-stage", pt_size, "flow.source=dis")}
    gpu_rows = []
    if torch.cuda.is_available():
        for model in GPU_MODELS:
            for n in (1, 2):
                row = stage(f"gpu-{model}-{n}", pt_size, "flow.source=ptlflow", f"flow.model={model}",
                            "flow.weights=none", f"flow.num_actors={n}", f"flow.gpus_per_actor={1 / n}",
                            "flow.batch_size=16", f"flow.half={args.half}")
                gpu_rows.append({"model": model, "actors": n, "half": args.half, **row})
    rate = lambda rows, key: rows[key]["pairs_per_s"]  # noqa: E731
    result = {"command": "python -m benchmarks.flow_stage" + (" --quick" if args.quick else ""),
              "ground_truth": {"frame": list(gt_size[0]), "pairs": gt["1 worker"]["pairs"], "rows": gt,
                               "two_vs_one": rate(gt, "2 workers") / rate(gt, "1 worker"),
                               "driver_cpu_fraction": max(r["driver_cpu_fraction"] for r in gt.values())},
              "ptlflow": {"model": args.model, "weights": "none (random init)", "frame": list(pt_size[0]),
                          "pairs": pt["sequential"]["pairs"], "rows": pt,
                          "two_vs_one_actor": rate(pt, "2 actors") / rate(pt, "1 actor"),
                          "stage_vs_sequential": rate(pt, "2 actors") / rate(pt, "sequential")},
              "dis": {"preset": common.bench_config().flow.dis_preset, "frame": list(pt_size[0]),
                      "pairs": dis["sequential"]["pairs"], "rows": dis,
                      "stage_vs_sequential": rate(dis, "stage (defaults)") / rate(dis, "sequential")},
              "gpu": gpu_rows, "warm_up_s": warm_up_s}
    print(f"ground truth: 2 vs 1 worker {result['ground_truth']['two_vs_one']:.2f}x, driver CPU "
          f"{100 * result['ground_truth']['driver_cpu_fraction']:.1f} % of wall; {args.model}: 2 vs 1 actor "
          f"{result['ptlflow']['two_vs_one_actor']:.2f}x, stage (2 actors) vs sequential loop "
          f"{result['ptlflow']['stage_vs_sequential']:.2f}x; DIS: stage (defaults) vs sequential loop "
          f"{result['dis']['stage_vs_sequential']:.2f}x")
    common.save("flow_stage" + ("_quick" if args.quick else ""), result, started)


if __name__ == "__main__":
    main()
