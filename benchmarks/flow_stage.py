"""Flow stage throughput (issue 11, item 3): pairs/s of the Ray flow stage with 1 and 2 actors, against a plain
sequential loop over the same ptlflow model (random init: the same compute as trained weights) that writes the
same shards, all measured in the same run. The stage's figure is end to end (its actors start, import ptlflow
and build the model inside the timing); the loop runs in this process with ptlflow already imported. With a GPU: pairs/s per GPU of two ptlflow models through the stage.

    python -m benchmarks.flow_stage [--model rapidflow_it1] [--repeats 2]
"""
from __future__ import annotations

import logging
import shutil
import statistics
import time

from benchmarks import common

GPU_MODELS = ("rapidflow_it1", "raft_small")
FRAME = (192, 320)  # large enough that the flow model, not start-up, dominates the stage's time
VIDEOS = 30


def _cfg(model: str, uri: str, quick: bool, *extra: str):
    size = ["data.num_videos=4", "data.num_frames=4"] if quick else [f"data.num_videos={VIDEOS}", "data.num_frames=9"]
    return common.bench_config(f"data.root={common.ROOT}/flow/data-{FRAME[0]}x{FRAME[1]}-{VIDEOS}", f"shards.uri={uri}", f"data.height={FRAME[0]}",
                               f"data.width={FRAME[1]}", "data.label_every=1", "shards.k=[1]", "flow.source=ptlflow",
                               f"flow.model={model}", "flow.weights=none", "flow.batch_size=4", *size, *extra)


def stage(model: str, actors: int, run: str, quick: bool, gpus_per_actor: int = 0) -> tuple[float, int]:
    """(pairs/s, pairs) of run_flow_stage with `actors` flow actors into a fresh shard folder."""
    from etc_core.data.registry import open_dataset
    from etc_core.flow.stage import run_flow_stage

    uri = common.ROOT / "flow" / run
    shutil.rmtree(uri, ignore_errors=True)
    cfg = _cfg(model, str(uri), quick, f"flow.num_actors={actors}")
    result = run_flow_stage(cfg, open_dataset(cfg.data, generate=True), progress=False)
    shutil.rmtree(uri)
    return result.pairs_per_s, result.pairs_computed


def sequential(model: str, run: str, quick: bool) -> tuple[float, int]:
    """(pairs/s, pairs) of a plain loop in this process: estimate, encode and write every planned shard."""
    from etc_core.data import shards
    from etc_core.data.registry import open_dataset
    from etc_core.flow.estimate import PtlflowEstimator
    from etc_core.flow.stage import _batches, plan_shards

    import numpy as np

    uri = common.ROOT / "flow" / run
    shutil.rmtree(uri, ignore_errors=True)
    uri.mkdir(parents=True)
    cfg = _cfg(model, str(uri), quick)
    dataset = open_dataset(cfg.data, generate=True)
    todo = [(split, i, samples) for split, plan in plan_shards(dataset, cfg).items() for i, samples in enumerate(plan)]
    start = time.perf_counter()
    estimator = PtlflowEstimator(model, "none", device="cpu")
    encoded: dict[int, list] = {}
    pairs = 0
    for position, split, batch in _batches(dataset, todo, cfg.flow.batch_size):
        flows = estimator.estimate(np.stack([b[1] for b in batch]), np.stack([b[2] for b in batch]), [])
        for ((clip_id, t, k), img0, img1, label), flow in zip(batch, flows):
            encoded.setdefault(position, []).append(shards.encode_sample(
                shards.sample_key(clip_id, t, k), img0, img1, flow, label, {"video": clip_id, "t": t, "k": k}))
        pairs += len(batch)
        split_, index, samples = todo[position]
        if len(encoded[position]) == len(samples):
            shards.write_shard(encoded.pop(position), str(uri / shards.shard_name(split_, index)))
    seconds = time.perf_counter() - start
    shutil.rmtree(uri)
    return pairs / seconds, pairs


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="rapidflow")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    import ptlflow  # noqa: F401 - imported once, outside the sequential loop's timing

    started = time.time()
    common.start_ray(common.bench_config())
    repeats = 1 if args.quick else args.repeats
    rates: dict[str, list[float]] = {"sequential": [], "1 actor": [], "2 actors": []}
    pairs = 0
    for r in range(repeats):  # interleaved
        rate, pairs = sequential(args.model, f"seq{r}", args.quick)
        rates["sequential"].append(rate)
        for actors in (1, 2):
            rates[f"{actors} actor" + ("s" if actors > 1 else "")].append(
                stage(args.model, actors, f"a{actors}r{r}", args.quick)[0])
        print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.1f} pairs/s" for k, v in rates.items()), flush=True)
    median = {k: statistics.median(v) for k, v in rates.items()}
    gpu_rows = []
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        for model in GPU_MODELS:
            rate, n = stage(model, gpus, f"gpu-{model}", args.quick)
            gpu_rows.append({"model": model, "gpus": gpus, "pairs_per_s_per_gpu": rate / gpus, "pairs": n})
    result = {"command": "python -m benchmarks.flow_stage" + (" --quick" if args.quick else ""),
              "model": args.model, "weights": "none (random init)", "frame": list(FRAME), "pairs": pairs,
              "pairs_per_s": rates, "median_pairs_per_s": median,
              "two_vs_one_actor": median["2 actors"] / median["1 actor"],
              "stage_vs_sequential": median["2 actors"] / median["sequential"], "gpu": gpu_rows}
    print(f"2 vs 1 actor: {result['two_vs_one_actor']:.2f}x; stage (2 actors) vs sequential loop: "
          f"{result['stage_vs_sequential']:.2f}x")
    common.save("flow_stage" + ("_quick" if args.quick else ""), result, started)


if __name__ == "__main__":
    main()
