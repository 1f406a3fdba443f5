"""DIS flow (flow.source=dis) against the generated data's exact flow: end-point error and cost, zero flow as control.

On the val split of each bench config (configs/reproduce.yaml, then its camera-motion variant
configs/reproduce_motion.yaml when that file exists), every pair (t, t+k) of every clip for each k in shards.k:
the mean end-point error (EPE, px) over all pixels and over valid ones (visible in both frames), the share of
pixels with EPE > 1 px and > 3 px, and ms per pair (grey conversion included; one cv2 thread, as in the flow
stage's tasks: CPU time of this thread, and wall time), for every DIS preset and for zero flow; beside them the
median and 90th percentile of the exact flow's magnitude, which says how far the pairs move.

    python -m benchmarks.flow_epe            # both datasets, generated under runs/bench/ when absent
    python -m benchmarks.flow_epe --quick    # tiny data: checks the script runs (numbers meaningless)
"""
from __future__ import annotations

import time

import numpy as np

from benchmarks import common

CONFIGS = ("configs/reproduce.yaml", "configs/reproduce_motion.yaml")
METHODS = ("zero flow", "dis ultrafast", "dis fast", "dis medium")
BINS = np.arange(0.0, 512.0, 0.05)  # flow magnitude histogram (px): its median and 90th percentile


class Tally:
    """Sums over pairs for one method: EPE over all and valid pixels, pixels over 1 and 3 px, time, EPE per k."""

    def __init__(self):
        self.epe = self.epe_valid = self.over1 = self.over3 = 0.0
        self.pixels = self.valid = self.pairs = 0
        self.cpu_s = self.wall_s = 0.0
        self.by_k: dict[int, list[float]] = {}

    def add(self, flow: np.ndarray, exact: np.ndarray, valid: np.ndarray, k: int) -> None:
        """flow, exact float32 [P,2,H,W], valid bool [P,H,W]: pairs (t, t+k) of one clip."""
        epe = np.sqrt(((flow - exact) ** 2).sum(1))  # [P,H,W]
        self.epe += float(epe.sum())
        self.epe_valid += float(epe[valid].sum())
        self.over1 += float((epe > 1).sum())
        self.over3 += float((epe > 3).sum())
        self.pixels += epe.size
        self.valid += int(valid.sum())
        self.pairs += len(flow)
        sums = self.by_k.setdefault(k, [0.0, 0])
        sums[0] += float(epe.sum())
        sums[1] += epe.size

    def result(self) -> dict:
        return {"epe": self.epe / self.pixels, "epe_valid": self.epe_valid / max(self.valid, 1),
                "over_1px": 100 * self.over1 / self.pixels, "over_3px": 100 * self.over3 / self.pixels,
                "ms_per_pair": 1000 * self.cpu_s / self.pairs, "wall_ms_per_pair": 1000 * self.wall_s / self.pairs,
                "epe_by_k": {str(k): s / n for k, (s, n) in sorted(self.by_k.items())}}


def _estimators() -> dict:
    from etc_core.flow.dis import DisEstimator

    zero = lambda img0, img1: np.zeros((len(img0), 2, *img0.shape[1:3]), np.float32)  # noqa: E731
    dis = {f"dis {p}": DisEstimator(p, threads=1) for p in ("ultrafast", "fast", "medium")}
    return {"zero flow": zero, **{name: (lambda a, b, e=e: e.estimate(a, b, [])) for name, e in dis.items()}}


def measure(cfg, max_clips: int | None) -> dict:
    """The figures of one dataset (cfg's data, generated when absent) on its val split."""
    from etc_core.data.registry import open_dataset

    dataset = open_dataset(cfg.data, generate=True)
    clip_ids = dataset.clip_ids("val")[:max_clips]
    estimators, tallies = _estimators(), {name: Tally() for name in METHODS}
    magnitude, magnitude_by_k = np.zeros(len(BINS) - 1), {k: np.zeros(len(BINS) - 1) for k in cfg.shards.k}
    for clip_id in clip_ids:
        clip = dataset.read_clip("val", clip_id)
        for k in cfg.shards.k:
            ts = [t for t in range(clip.num_frames) if 0 <= t + k < clip.num_frames]
            exact, valid = map(np.stack, zip(*(dataset.pair_flow("val", clip_id, t, k) for t in ts)))
            counts = np.histogram(np.sqrt((exact ** 2).sum(1)), BINS)[0]  # [P,2,H,W] -> magnitudes
            magnitude += counts
            magnitude_by_k[k] += counts
            img0, img1 = clip.frames[ts], clip.frames[[t + k for t in ts]]  # [P,H,W,3] each
            for name in METHODS:
                wall, cpu = time.perf_counter(), time.thread_time()
                flow = estimators[name](img0, img1)  # [P,2,H,W]
                tallies[name].cpu_s += time.thread_time() - cpu
                tallies[name].wall_s += time.perf_counter() - wall
                tallies[name].add(flow, exact, valid, k)
    rows = {name: t.result() for name, t in tallies.items()}
    for name, row in rows.items():
        print(f"  {name}: EPE {row['epe']:.2f} px (valid {row['epe_valid']:.2f}), > 1 px {row['over_1px']:.1f} %, "
              f"> 3 px {row['over_3px']:.1f} %, {row['ms_per_pair']:.2f} ms/pair", flush=True)
    return {"frame": [cfg.data.height, cfg.data.width], "clips": len(clip_ids), "k": list(cfg.shards.k),
            "pairs": tallies["zero flow"].pairs, "flow_px": _quantiles(magnitude),
            "flow_px_by_k": {str(k): _quantiles(h) for k, h in magnitude_by_k.items()}, "rows": rows}


def _quantiles(counts: np.ndarray) -> dict:
    """Median and 90th percentile (px, to the histogram's 0.05 px) of magnitudes binned in BINS."""
    cum = np.cumsum(counts) / max(counts.sum(), 1)
    return {q: round(float(BINS[1:][np.searchsorted(cum, p)]), 2) for q, p in (("median", 0.5), ("p90", 0.9))}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=None, help="at most this many val clips per dataset (default: all)")
    args = p.parse_args()
    started = time.time()
    datasets, skipped = {}, {}
    for path in CONFIGS:
        name = common.REPO.joinpath(path).stem
        if not common.REPO.joinpath(path).exists():
            skipped[name] = f"{path} does not exist"
            print(f"{name}: skipped ({skipped[name]})", flush=True)
            continue
        cfg = common.bench_config(quick=args.quick, config=common.REPO / path)
        print(f"{name} ({path}, val, {cfg.data.height}x{cfg.data.width}, k {list(cfg.shards.k)}):", flush=True)
        datasets[name] = {"config": path, **measure(cfg, args.clips)}
    common.save("flow_epe" + ("_quick" if args.quick else ""), {
        "command": "python -m benchmarks.flow_epe" + (" --quick" if args.quick else "")
                   + (f" --clips {args.clips}" if args.clips else ""),
        "split": "val", "cv2_threads": 1, "opencv": _opencv_version(), "datasets": datasets, "skipped": skipped},
        started)


def _opencv_version() -> str:
    import cv2

    return cv2.__version__


if __name__ == "__main__":
    main()
