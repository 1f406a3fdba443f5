"""Cityscapes-sized measurements for docs/scale.md (issue 35, item 3): bytes and decode time per pair at 1024x2048.

The real flow stage (Ray Data, its defaults, `flow.source=dis`: an estimated flow, as a user's run has, and noisier
than the generator's exact flow, so its PNG is the larger) writes the pairs of a few generated clips of Cityscapes'
frame size, with a moving camera (`data.camera_pan`, scaled from configs/reproduce_motion.yaml's 10 px at 224 px
wide), in the shards' default flow encoding (png16). Then, per pair: the bytes of each tar member (frames, flow,
labels, meta) and the CPU ms to decode it (etc_core.data.shard_sample.decode_sample, one torch thread, median over
pairs of the best of 3). The stage's own seconds per pair (read, DIS, write) come from its profile.

docs/scale.md turns these into a plan (benchmarks/report_scale.py): `python -m benchmarks.report` writes both pages.

    python -m benchmarks.scale            # about 5 minutes on 2 cores
    python -m benchmarks.scale --quick    # tiny sizes: checks the script runs (numbers meaningless)
"""
from __future__ import annotations

import shutil
import statistics
import tarfile
import time

from benchmarks import common

FULL = {"size": (1024, 2048), "videos": 3, "frames": 4, "pan": 10.0 * 2048 / 224}
QUICK = {"size": (64, 128), "videos": 3, "frames": 3, "pan": 4.0}


def member_kind(name: str) -> str:
    """A tar member's part of a pair: frames (img0/img1), flow, labels (label, label1, valid) or meta."""
    field = name.split(".", 1)[1] if "." in name else name
    if field.startswith("img"):
        return "frames"
    if field.startswith("flow."):
        return "flow"
    if field.split(".")[0] in ("label", "label1", "valid"):
        return "labels"
    return "meta"


def pair_members(uri: str) -> dict[str, dict[str, dict[str, bytes]]]:
    """{split: {key: {field: bytes}}} of every sample in the shard tars under uri (local)."""
    from pathlib import Path

    out: dict[str, dict[str, dict[str, bytes]]] = {}
    for tar_path in sorted(Path(uri).rglob("*.tar")):
        split = tar_path.name.split("-")[0]
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, _, field = member.name.partition(".")
                out.setdefault(split, {}).setdefault(key, {})[field] = tar.extractfile(member).read()
    return out


def measure(quick: bool) -> dict:
    import torch

    from etc_core.data.registry import open_dataset
    from etc_core.data.shard_sample import decode_sample
    from etc_core.flow.stage import run_flow_stage

    spec = QUICK if quick else FULL
    (height, width), root = spec["size"], common.ROOT / "scale" / ("quick" if quick else "full")
    cfg = common.bench_config(f"data.root={root}/data", f"shards.uri={root}/shards", f"data.height={height}",
                              f"data.width={width}", f"data.num_videos={spec['videos']}",
                              f"data.num_frames={spec['frames']}", "data.val_fraction=0.34",
                              "data.test_fraction=0.33", "data.label_every=1", f"data.camera_pan={spec['pan']}",
                              "data.camera_zoom=0.01", "flow.source=dis", "shards.k=[-1, 1]")
    start = time.perf_counter()
    dataset = open_dataset(cfg.data, generate=True)
    generate_s = time.perf_counter() - start
    shutil.rmtree(cfg.shards.uri, ignore_errors=True)
    result = run_flow_stage(cfg, dataset, progress=False)
    members = pair_members(cfg.shards.uri)
    torch.set_num_threads(1)
    rows, decode_ms = [], []
    for split, samples in members.items():
        for key, fields in samples.items():
            sizes: dict[str, int] = {}
            for field, data in fields.items():
                kind = member_kind(f"{key}.{field}")
                sizes[kind] = sizes.get(kind, 0) + len(data)
            rows.append({"split": split, "key": key, "bytes": sizes, "tar_bytes": sum(
                512 + -(-len(d) // 512) * 512 for d in fields.values())})
            sample = {"__key__": key, **fields}
            best = []
            for _ in range(3):
                cpu = time.thread_time()
                decode_sample(dict(sample))
                best.append(time.thread_time() - cpu)
            decode_ms.append(1000 * min(best))
    pairs = result.pairs_computed
    profile = result.profile or {}
    per_pair = {k: 1000 * v / pairs for k, v in profile.items() if k.endswith("_s")}
    median = {kind: statistics.median(r["bytes"].get(kind, 0) for r in rows) for kind in
              ("frames", "flow", "labels", "meta")}
    print(f"{pairs} pairs of {height}x{width}: median bytes per pair " +
          ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in median.items()) +
          f"; decode {statistics.median(decode_ms):.0f} ms/pair; stage " +
          ", ".join(f"{k[:-2]} {v:.0f} ms/pair" for k, v in per_pair.items()), flush=True)
    shutil.rmtree(cfg.shards.uri)
    return {"frame": [height, width], "camera_pan_px": spec["pan"], "flow_source": "dis",
            "dis_preset": cfg.flow.dis_preset, "flow_encoding": cfg.shards.flow_encoding, "pairs": pairs,
            "generate_s": generate_s, "stage_s": result.seconds, "stage_ms_per_pair": per_pair,
            "median_bytes_per_pair": median, "median_tar_bytes_per_pair": statistics.median(r["tar_bytes"] for r in rows),
            "npy_flow_bytes_per_pair": 2 * height * width * 2 + 128,
            "decode_ms_per_pair": {"median": statistics.median(decode_ms), "max": max(decode_ms)}, "rows": rows}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    started = time.time()
    common.start_ray(common.bench_config())
    result = measure(args.quick)
    common.save("scale" + ("_quick" if args.quick else ""),
                {"command": "python -m benchmarks.scale" + (" --quick" if args.quick else ""), **result}, started)


if __name__ == "__main__":
    main()
