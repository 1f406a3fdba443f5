"""Flow encodings in the shards (issue 35, item 2): bytes, decode time and worst error per pair, and the loader.

Candidates, each on the same float32 flow: `npy` (float16 np.save, what shards held until now), `npz`
(np.savez_compressed of that float16 array) and `png16` (KITTI's 16-bit PNG, etc_core/data/flow_codec.py) at a few
zlib levels and PNG row filters. Flow:

- generated: the ground-truth flow of generated clips (etc_core.data.make_clip via the flow stage's own steps), with
  configs/reproduce.yaml's data settings (128x224, every pair (t, t+k) of the train split for k in shards.k, and the
  val split's (t, t+1)) and with configs/reproduce_motion.yaml's (the same plus data.camera_pan=10, camera_zoom=0.01);
- photos: DIS flow (flow.source=dis, preset medium, etc_core/flow/dis.py) on pairs made from the three photographs
  installed with matplotlib and scikit-learn (there is no video here and no network): frame t is the photo resized
  and cropped to the frame size, frame t+1 the same photo panned by (dx, dy) px and zoomed by s about the centre
  (cv2.warpAffine, bilinear), at 128x224 and 416x608.

Per pair: bytes of the flow member (and as a tar member: 512-byte header, padded to 512), encode and decode ms (CPU
time of this thread, median over pairs of the best of a few repeats), and the worst |decoded - float32 flow| in px.
Beside them the worst error of each encoding on random flow over KITTI's whole range, and the loader: samples per CPU
second of etc_core.data.shards.make_loader (shuffled, batch 8, in this process, one torch thread; with the training
crop/scale/flip and without it) over two shard sets of the same generated pairs, one per encoding, and over the npy
set with the reader's previous PNG decoding (PIL), in alternation.

    python -m benchmarks.flow_encoding            # about 5 minutes on 2 cores
    python -m benchmarks.flow_encoding --quick    # tiny sizes: checks the script runs (numbers meaningless)
"""
from __future__ import annotations

import io
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks import common

# (name, (zlib level, PNG filter)) of each png16 variant measured; the shards' writer uses flow_codec.PNG_WRITE
PNG_VARIANTS = {"png16 L1 all filters": (1, "ALL"), "png16 L3 all filters": (3, "ALL"),
                "png16 L3 sub": (3, "SUB"), "png16 L3 up": (3, "UP"), "png16 L6 sub": (6, "SUB"),
                "png16 L6 up": (6, "UP"), "png16 L9 up": (9, "UP")}
PHOTOS = {"grace_hopper": "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
          "china": "sklearn/datasets/images/china.jpg", "flower": "sklearn/datasets/images/flower.jpg"}
MOTIONS = [(3.0, 1.0, 1.0), (-6.0, 2.5, 1.01), (12.0, -4.0, 1.0), (-20.0, -7.0, 1.02), (30.0, 10.0, 0.98)]  # dx, dy, s


def _codecs() -> dict:
    """{name: (encode(flow) -> bytes, decode(bytes) -> float32 [2,H,W])}."""
    from etc_core.data import flow_codec

    def npz_encode(flow):
        buf = io.BytesIO()
        np.savez_compressed(buf, flow=flow.astype(np.float16))
        return buf.getvalue()

    codecs = {"npy": (lambda f: flow_codec.encode_flow(f, "npy")[1], lambda d: flow_codec.decode_flow("flow.npy", d)),
              "npz": (npz_encode, lambda d: np.load(io.BytesIO(d))["flow"].astype(np.float32))}
    for name, (level, png_filter) in PNG_VARIANTS.items():
        codecs[name] = (lambda f, lv=level, pf=png_filter: flow_codec._encode_png16(f, lv, pf),
                        lambda d: flow_codec.decode_flow("flow.png", d))
    return codecs


def _cpu_ms(fn, repeats: int) -> float:
    """Best of `repeats` CPU times of fn() on this thread, in ms (the machine is shared: wall time is noisy)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return 1000 * best


def measure(flows: list[np.ndarray], repeats: int) -> dict:
    """Each codec on each flow [2,H,W]: bytes, tar bytes, encode/decode ms (medians over pairs), worst error."""
    rows = {}
    for name, (encode, decode) in _codecs().items():
        nbytes, enc_ms, dec_ms, worst = [], [], [], 0.0
        for flow in flows:
            data = encode(flow)
            nbytes.append(len(data))
            enc_ms.append(_cpu_ms(lambda: encode(flow), max(1, repeats // 2)))
            dec_ms.append(_cpu_ms(lambda: decode(data), repeats))
            worst = max(worst, float(np.abs(decode(data) - flow).max()))
        rows[name] = {"bytes": statistics.fmean(nbytes), "max_bytes": max(nbytes),
                      "tar_bytes": statistics.fmean(512 + -(-n // 512) * 512 for n in nbytes),
                      "encode_ms": statistics.median(enc_ms), "decode_ms": statistics.median(dec_ms),
                      "max_error_px": worst}
    raw = rows["npy"]["bytes"]
    for row in rows.values():
        row["vs_npy"] = row["bytes"] / raw
    magnitude = np.concatenate([np.hypot(f[0], f[1]).ravel() for f in flows])
    return {"pairs": len(flows), "frame": list(flows[0].shape[1:]), "rows": rows,
            "flow_px": {"median": float(np.median(magnitude)), "p99": float(np.percentile(magnitude, 99)),
                        "max": float(magnitude.max())}}


def in_range_error(size: tuple[int, int], seed: int = 0) -> dict:
    """Worst error of each encoding on random flow spread over KITTI's range [-512, 511.98] px."""
    from etc_core.data import flow_codec

    flow = np.random.default_rng(seed).uniform(flow_codec.PNG16_MIN, flow_codec.PNG16_MAX, (2, *size))
    flow = flow.astype(np.float32)
    return {name: float(np.abs(decode(encode(flow)) - flow).max())
            for name, (encode, decode) in _codecs().items() if name in ("npy", "npz", _chosen())}


def _chosen() -> str:
    """The PNG_VARIANTS name of what the shards' writer uses (flow_codec.PNG_WRITE)."""
    from etc_core.data import flow_codec

    return f"png16 L{flow_codec.PNG_WRITE['level']} {flow_codec.PNG_WRITE['filter'].lower()}"


# ------------------------------------------------------------------------------------------ generated data

def generated_shards(config: str, quick: bool) -> tuple[object, dict[str, str], list[np.ndarray]]:
    """A small generated dataset of `config`'s data settings and one shard set per encoding of its pairs, written by
    the flow stage's own steps (etc_core.flow.work); returns (config, {encoding: shards uri}, the float32 flows)."""
    from etc_core.config import apply_values
    from etc_core.data.registry import open_dataset
    from etc_core.flow.estimate import GroundTruthEstimator
    from etc_core.flow.stage import plan_shards
    from etc_core.flow.work import ShardJob, estimate_pairs, read_pairs, write_shards_sequentially

    root = common.bench_root(config) / ("quick" if quick else "") / "flow_encoding"
    cfg = common.bench_config(f"data.root={root}/data", "data.num_videos=" + ("4" if quick else "16"),
                              quick=quick, config=common.REPO / config)
    dataset = open_dataset(cfg.data, generate=True)
    estimator = GroundTruthEstimator(dataset)
    plan = plan_shards(dataset, cfg)
    jobs = [ShardJob(split, i, samples) for split in ("train", "val") for i, samples in enumerate(plan[split])]
    uris = {}
    for encoding in ("npy", "png16"):
        enc_cfg = apply_values(cfg, {"shards.uri": f"{root}/shards_{encoding}", "shards.flow_encoding": encoding})
        if not Path(enc_cfg.shards.uri, "manifest.json").exists():
            write_shards_sequentially(enc_cfg, dataset, jobs, estimator)
            _write_manifest(enc_cfg, dataset, plan, encoding)
        uris[encoding] = enc_cfg.shards.uri
    flows = []
    for job in jobs:
        pairs = read_pairs(dataset, job)
        estimate_pairs(estimator, pairs, 8, "ground truth")
        flows += list(pairs.flow)
    return cfg, uris, flows


def _write_manifest(cfg, dataset, plan: dict, encoding: str) -> None:
    from etc_core.data import shards
    from etc_core.storage import uri as storage

    splits = {}
    for split in ("train", "val"):
        entries = [{"path": shards.shard_name(split, i), "samples": len(s),
                    "bytes": storage.size(storage.join(cfg.shards.uri, shards.shard_name(split, i)))}
                   for i, s in enumerate(plan[split])]
        splits[split] = {"samples": sum(e["samples"] for e in entries), "shards": entries}
    shards.write_manifest(cfg.shards.uri, {"format": shards.FORMAT, "config_hash": "bench", "config": {},
                                           "num_classes": dataset.num_classes, "flow_encoding": encoding,
                                           "splits": splits})


def _pil_png(data: bytes, mode: str) -> np.ndarray:
    """The shard reader's PNG decoding before this change (PIL), for the loader's baseline row."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert(mode))


LOADER_ROWS = {"before: npy, PIL": ("npy", _pil_png), "npy": ("npy", None), "png16": ("png16", None)}


def loader_rates(cfg, uris: dict[str, str], repeats: int) -> dict:
    """Samples per CPU second (one torch thread) and per second of the loader over each shard set, with the training
    transform and without it (decode and collate only, as evaluation reads), the rows read in alternation. The
    `before` row reads the npy set with the reader's previous PNG decoding (PIL) swapped back in."""
    import torch

    from etc_core.data import shard_sample, shards
    from etc_core.train.augment import PairAugment

    t = cfg.train
    transforms = {"training": PairAugment(crop=t.crop, scale=t.scale, flip=t.flip) if t.crop else None,
                  "decode only": None}
    steps = 6 if cfg.data.height < 64 else 24
    threads, cv2_png = torch.get_num_threads(), shard_sample.decode_png
    torch.set_num_threads(1)  # CPU time of one thread: the machine is shared, wall time is noisy
    runs = {(mode, row): {"wall": [], "cpu": []} for mode in transforms for row in LOADER_ROWS}
    try:
        for _ in range(repeats):
            for (mode, row), r in runs.items():
                encoding, png = LOADER_ROWS[row]
                shard_sample.decode_png = png or cv2_png
                np.random.seed(0)  # PairAugment draws from numpy's global generator: the same crops in every run
                loader = shards.make_loader(uris[encoding], "train", t.batch_size, shuffle=True, seed=t.seed,
                                            transform=transforms[mode], steps_per_epoch=steps)
                wall, cpu, n = time.perf_counter(), time.process_time(), 0
                for batch in loader:
                    n += len(batch["key"])
                r["wall"].append(n / (time.perf_counter() - wall))
                r["cpu"].append(n / (time.process_time() - cpu))
    finally:
        shard_sample.decode_png = cv2_png
        torch.set_num_threads(threads)
    out = {mode: {row: {"samples_per_s": statistics.median(runs[mode, row]["wall"]),
                        "samples_per_cpu_s": statistics.median(runs[mode, row]["cpu"]), "runs": runs[mode, row]}
                  for row in LOADER_ROWS} for mode in transforms}
    for rows in out.values():
        rows.update(paired_ratios(rows))
    return {"samples": steps * t.batch_size, "repeats": repeats, **out}


def paired_ratios(rows: dict) -> dict:
    """png16's samples per CPU s over the `before` row's and over npy's: the median of the ratios within each repeat
    (the rows ran one after the other in every repeat, so each ratio compares runs under the same machine load)."""
    def ratio(row: str, base: str) -> float:
        return statistics.median(a / b for a, b in zip(rows[row]["runs"]["cpu"], rows[base]["runs"]["cpu"]))

    return {"png16_vs_before": ratio("png16", "before: npy, PIL"), "png16_vs_npy": ratio("png16", "npy")}


# ------------------------------------------------------------------------------------------ photographs

def photo_pairs(size: tuple[int, int]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, frame t, frame t+1) uint8 RGB [H,W,3]: each photo, then it panned by (dx, dy) and zoomed by s."""
    import cv2
    import sklearn

    site = Path(sklearn.__file__).parents[1]
    height, width = size
    pairs = []
    for name, rel in PHOTOS.items():
        photo = cv2.cvtColor(cv2.imread(str(site / rel), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        scale = max(height / photo.shape[0], width / photo.shape[1])  # cover the frame, then crop its centre
        photo = cv2.resize(photo, (round(photo.shape[1] * scale), round(photo.shape[0] * scale)),
                           interpolation=cv2.INTER_AREA)
        top, left = (photo.shape[0] - height) // 2, (photo.shape[1] - width) // 2
        frame = photo[top:top + height, left:left + width]
        centre = np.array([photo.shape[1] / 2, photo.shape[0] / 2])
        for dx, dy, s in MOTIONS:
            # the next frame sees the scene moved by (dx, dy) and scaled by s about the centre
            affine = np.hstack([s * np.eye(2), ((1 - s) * centre + [dx, dy])[:, None]])
            moved = cv2.warpAffine(photo, affine, (photo.shape[1], photo.shape[0]), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REFLECT)
            pairs.append((f"{name} dx={dx:g} dy={dy:g} s={s:g}", frame, moved[top:top + height, left:left + width]))
    return pairs


def dis_flows(size: tuple[int, int]) -> list[np.ndarray]:
    from etc_core.flow.dis import DisEstimator

    dis = DisEstimator("medium", threads=1)
    return [dis.estimate(img0[None], img1[None], [])[0] for _, img0, img1 in photo_pairs(size)]


def main() -> None:
    import logging

    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
    repeats = 3 if args.quick else 7
    datasets, loader = {}, {}
    for config in ("configs/reproduce.yaml", "configs/reproduce_motion.yaml"):
        cfg, uris, flows = generated_shards(config, args.quick)
        name = "generated" + common.suffix(config)
        datasets[name] = {"source": f"ground truth, {config} data settings, {cfg.data.num_videos} clips",
                          **measure(flows, repeats)}
        print(f"{name}: {len(flows)} pairs measured", flush=True)
        if config == "configs/reproduce.yaml":
            loader = {"config": config, "frame": [cfg.data.height, cfg.data.width], "batch_size": cfg.train.batch_size,
                      "crop": cfg.train.crop, **loader_rates(cfg, uris, 3 if args.quick else 11)}
    for size in ([(32, 48)] if args.quick else [(128, 224), (416, 608)]):
        name = f"photos {size[0]}x{size[1]}"
        datasets[name] = {"source": "DIS medium on " + ", ".join(f"{k}.jpg" for k in PHOTOS) + " panned/zoomed",
                          **measure(dis_flows(size), repeats)}
        print(f"{name}: measured", flush=True)
    from etc_core.data import flow_codec

    result = {"command": "python -m benchmarks.flow_encoding" + (" --quick" if args.quick else ""),
              "chosen": {"encoding": "png16", **flow_codec.PNG_WRITE}, "motions": MOTIONS,
              "datasets": datasets, "in_range_error": in_range_error((128, 224)), "loader": loader}
    for name, d in datasets.items():
        print(name, {k: (round(r["vs_npy"], 3), round(r["decode_ms"], 3)) for k, r in d["rows"].items()})
    print("loader png16 / before:", {m: round(loader[m]["png16_vs_before"], 3) for m in ("training", "decode only")})
    common.save("flow_encoding" + ("_quick" if args.quick else ""), result, started)


def report_section(r: dict) -> list[str]:
    """docs/benchmarks.md's section (benchmarks/report.py)."""
    chosen = f"png16 L{r['chosen']['level']} {r['chosen']['filter'].lower()}"
    names = list(next(iter(r["datasets"].values()))["rows"])
    lines = ["## Flow encoding in the shards", "",
             "Bytes, CPU ms and worst error per pair of each way to store a pair's flow (`python -m "
             "benchmarks.flow_encoding`; docs/shards.md, \"Flow encodings\"): npy = float16 (the shards until now), "
             "npz = np.savez_compressed of it, png16 = KITTI's 16-bit PNG (1/64 px steps) at zlib level L and PNG row "
             f"filter. The shards write **{chosen}** (`shards.flow_encoding=png16`). Error: the worst |decoded - "
             "float32 flow| over every pixel. Target: ≤ 35 % of npy's bytes, no error above 1/64 px in range.", "",
             "The photos (no video and no network here): matplotlib's `sample_data/grace_hopper.jpg` and "
             "scikit-learn's `datasets/images/china.jpg` and `flower.jpg`, each resized to cover the frame and "
             "centre-cropped as frame "
             "t; frame t+1 is the photo panned by (dx, dy) px and zoomed by s about its centre (cv2.warpAffine, "
             "bilinear), for (dx, dy, s) in " + ", ".join(f"({dx:g}, {dy:g}, {z:g})" for dx, dy, z in r["motions"]) +
             "; the flow is DIS's (`flow.source=dis`, preset medium) between them.", ""]
    for name, d in r["datasets"].items():
        f = d["flow_px"]
        lines += [f"**{name}** ({d['source']}): {d['pairs']} pairs of {d['frame'][0]}x{d['frame'][1]}, flow "
                  f"magnitude median {f['median']:.2f} px, 99th percentile {f['p99']:.1f} px, max {f['max']:.1f} px.",
                  "", "| encoding | bytes/pair | vs npy | as tar member | encode ms | decode ms | max error px |",
                  "|---|---|---|---|---|---|---|"]
        for n in names:
            row = d["rows"][n]
            mark = "**" if n == chosen else ""
            verdict = "" if n == "npy" else f" ({_verdict(row['vs_npy'] <= 0.35)})"
            lines.append(f"| {mark}{n}{mark} | {row['bytes']:,.0f} | {100 * row['vs_npy']:.1f} %{verdict} "
                         f"| {row['tar_bytes']:,.0f} | {row['encode_ms']:.2f} | {row['decode_ms']:.3f} "
                         f"| {row['max_error_px']:.4f} |")
        lines.append("")
    err = r["in_range_error"]
    lines += ["Worst error on random flow over KITTI's whole range (±512 px): " +
              ", ".join(f"{n} {v:.4f} px" for n, v in err.items()) +
              " (float16's steps grow with the value, 1/64 px from 16 px to 1/4 px near 512 px, so its error reaches "
              "1/8 px; png16's steps are 1/64 px everywhere, rounded to within 1/128 = 0.0078 px).", ""]
    return lines + _loader_lines(r["loader"])


def _loader_lines(ld: dict) -> list[str]:
    if not ld:
        return []
    modes, rows = ("training", "decode only"), ("before: npy, PIL", "npy", "png16")
    lines = [f"The loader (`make_loader`, batch {ld['batch_size']}, shuffled, one torch thread, in this process) over "
             f"the same {ld['frame'][0]}x{ld['frame'][1]} generated pairs stored each way, {ld['samples']} samples "
             f"per run, median of {ld['repeats']} runs in alternation; `before` = the npy set read as the reader did "
             "before (PIL for the PNG members; now OpenCV, etc_core/data/png.py). Training = with the training crop "
             f"{ld['crop']}, scale and flip; decode only = decode and collate (as evaluation reads). Wall time "
             "follows the load of the shared machine; CPU time is the measure.", "",
             "| loader | flow stored as | samples per CPU s | samples/s (wall) |", "|---|---|---|---|"]
    lines += [f"| {mode} | {row} | {ld[mode][row]['samples_per_cpu_s']:.1f} | {ld[mode][row]['samples_per_s']:.1f} |"
              for mode in modes for row in rows]
    before = ", ".join(f"{mode} **{ld[mode]['png16_vs_before']:.3f}** (target ≥ 1: "
                       f"{_verdict(ld[mode]['png16_vs_before'] >= 1.0)})" for mode in modes)
    npy = ", ".join(f"{mode} {ld[mode]['png16_vs_npy']:.3f}" for mode in modes)
    return lines + ["", f"png16 against before, samples per CPU second (median of the ratios within each repeat): "
                    f"{before}; against npy with the same reader: {npy}.", ""]


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


if __name__ == "__main__":
    main()
