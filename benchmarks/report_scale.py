"""docs/scale.md: what a Cityscapes run of configs/cityscapes.yaml needs, from benchmarks/results/scale.json and
figures published elsewhere (each row says which). Written by `python -m benchmarks.report`.

Every constant below that was not measured here names its source; `plan` is plain arithmetic on them, so a reader
can redo it with their own step time or GPU.
"""
from __future__ import annotations

from pathlib import Path

from benchmarks import common

DOC = common.REPO / "docs" / "scale.md"
CITY = "configs/cityscapes.yaml"
# Cityscapes: labelled snippets per split (30 frames each; the fine labels' counts, cityscapes-dataset.com) and the
# size of leftImg8bit_sequence_trainvaltest.zip (324 GB for 5000 snippets x 30 frames: etc_core/data/cityscapes.py)
SNIPPETS = {"train": 2975, "val": 500, "test": 1525}
FRAMES_PER_SNIPPET = 30
SEQUENCE_ZIP_BYTES = 324e9
# ptlflow's model benchmark (docs/source/results/model_benchmark-all.csv and model_benchmark.rst of
# hmorimitsu/ptlflow: RTX 3090, PyTorch 2.1, CUDA 11.7, one 500x1000 pair), ms per pair
PTLFLOW_MS = {"raft": {"fp32": 256.396, "fp16": 140.326}, "rapidflow_it1": {"fp32": 8.345, "fp16": 8.038},
              "raft_small": {"fp32": 87.687, "fp16": 56.81}, "flownet2": {"fp32": 109.808, "fp16": 64.286}}
PTLFLOW_PX = 500 * 1000
# mmsegmentation's Cityscapes model zoo (configs/pspnet/README.md of open-mmlab/mmsegmentation): inference fps of
# PSPNet R-18-D8 (80k) and R-101-D8 (40k) at 769x769, whose test mode slides 769x769 windows at stride 513 over the
# 1024x2048 frame: 2 x 4 = 8 windows per frame
MMSEG_FPS = {"pspnet18": 6.20, "pspnet101": 1.15}
WINDOWS_PX = 8 * 769 * 769
BACKWARD_FACTOR = 3.0  # forward + backward ~ 3 forwards (the usual rule: backward costs about two forwards)
SWEEP_TRIALS = 8  # sweep.num_samples' default (etc_core/sweep/config.py)


def schedule() -> dict:
    """The paper's schedule as configs/cityscapes.yaml sets it (docs/method.md, Recipe)."""
    import yaml

    c = yaml.safe_load((common.REPO / CITY).read_text())
    t = c["train"]
    return {"iterations": t["max_steps"], "gpus": t["workers"], "crop": t["crop"][0], "batch_per_gpu": t["batch_size"],
            "k": c["shards"]["k"], "flow_model": c["flow"]["model"]}


def pairs(k: int) -> dict[str, int]:
    """Pairs per split: train (t, t+k) for each of k offsets around the labelled frame; val and test every (t, t+1)
    of each 30-frame snippet (etc_core/flow/stage.py, plan_shards)."""
    return {"train": SNIPPETS["train"] * k, "val": SNIPPETS["val"] * (FRAMES_PER_SNIPPET - 1),
            "test": SNIPPETS["test"] * (FRAMES_PER_SNIPPET - 1)}


def step_s(arch_pixels: list[tuple[str, int, bool]]) -> float:
    """Estimated seconds of one training step on one GPU: for each (arch, pixels, with backward) the forward time
    per pixel of mmsegmentation's inference figure, times 3 where the step also runs backward."""
    return sum(px / (MMSEG_FPS[arch] * WINDOWS_PX) * (BACKWARD_FACTOR if grad else 1.0)
               for arch, px, grad in arch_pixels)


def plan(r: dict) -> dict:
    """The plan's figures from the measured per-pair bytes and decode time (r: scale.json) and the schedule."""
    h, w = r["frame"]
    sched = schedule()
    n = pairs(len(sched["k"]))
    frame_png = SEQUENCE_ZIP_BYTES / (sum(SNIPPETS.values()) * FRAMES_PER_SNIPPET)
    other = r["median_tar_bytes_per_pair"] - r["median_bytes_per_pair"]["frames"]  # flow, labels, meta, headers
    per_pair = {"generated": r["median_tar_bytes_per_pair"], "cityscapes": 2 * frame_png + other}
    scale = h * w / PTLFLOW_PX
    flow_ms = {prec: ms * scale for prec, ms in PTLFLOW_MS[sched["flow_model"]].items()}
    crop_px = sched["batch_per_gpu"] * sched["crop"] ** 2
    steps = {"teacher (pspnet101, CE + TL on both frames)": step_s([("pspnet101", 2 * crop_px, True)]),
             "baseline student (pspnet18, CE)": step_s([("pspnet18", crop_px, True)]),
             "ETC student (pspnet18 on both frames, teacher forward on both)":
                 step_s([("pspnet18", 2 * crop_px, True), ("pspnet101", 2 * crop_px, False)])}
    gpu_h = {name: sched["iterations"] * sched["gpus"] * s / 3600 for name, s in steps.items()}
    etc = "ETC student (pspnet18 on both frames, teacher forward on both)"
    pairs_per_s_gpu = {name: sched["batch_per_gpu"] / s for name, s in steps.items()}
    return {"schedule": sched, "pairs": n, "bytes_per_pair": per_pair, "frame_png_bytes": frame_png,
            "storage_gb": {src: {split: c * b / 1e9 for split, c in n.items()} for src, b in per_pair.items()},
            "flow_ms_per_pair": flow_ms,
            "flow_gpu_h": {prec: (n["train"] + n["val"]) * ms / 3.6e6 for prec, ms in flow_ms.items()},
            "step_s": steps, "train_gpu_h": gpu_h,
            "loader_cores_per_gpu": {name: p * r["decode_ms_per_pair"]["median"] / 1000
                                     for name, p in pairs_per_s_gpu.items()},
            "s3_mb_s_per_gpu": {name: p * per_pair["cityscapes"] / 1e6 for name, p in pairs_per_s_gpu.items()},
            "sweep_gpu_h": SWEEP_TRIALS * gpu_h[etc]}


def render(r: dict | None) -> str:
    sched = schedule()
    head = ["# Sizing a Cityscapes run", "",
            f"Generated by `python -m benchmarks.report` from `benchmarks/results/scale.json` "
            f"(`python -m benchmarks.scale`) and the published figures named in `benchmarks/report_scale.py`. "
            f"The run sized is `{CITY}`: the paper's recipe (docs/method.md, Recipe), shards.k = {sched['k']}, "
            f"flow by ptlflow's {sched['flow_model']}, {sched['gpus']} GPUs x batch {sched['batch_per_gpu']}, "
            f"{sched['iterations']:,} iterations of {sched['crop']}x{sched['crop']} crops.", ""]
    if not r:
        return "\n".join(head + ["Not yet measured: run `python -m benchmarks.scale`.", ""])
    p, (h, w), m = plan(r), r["frame"], r["machine"]
    mb = lambda b: f"{b / 1e6:.2f} MB"  # noqa: E731
    gb = p["storage_gb"]
    lines = head + [
        "## Measured here", "",
        f"The real flow stage wrote {r['pairs']} pairs of {h}x{w} generated frames (camera pan "
        f"{r['camera_pan_px']:.0f} px/frame, DIS {r['dis_preset']} flow, {r['flow_encoding']}) on {m['cores']} "
        f"cores ({m['cpu']}), {r['date']}. Per pair (median):", "",
        "| part | bytes |", "|---|---|",
        *[f"| {k} | {mb(v)} |" for k, v in r["median_bytes_per_pair"].items()],
        f"| whole pair as tar members | {mb(r['median_tar_bytes_per_pair'])} |",
        f"| the same flow as float16 npy (the old encoding) | {mb(r['npy_flow_bytes_per_pair'])} |", "",
        f"- decode (etc_core.data.shard_sample.decode_sample, one thread): **{r['decode_ms_per_pair']['median']:.0f} "
        f"ms** per pair (max {r['decode_ms_per_pair']['max']:.0f});",
        "- the stage's workers per pair: " + ", ".join(f"{k[:-2]} {v:.0f} ms" for k, v in
                                                       r["stage_ms_per_pair"].items()) + " (CPU, DIS on one thread).",
        "", "## The plan", "",
        "| figure | value | from |", "|---|---|---|",
        f"| pairs: train / val / test | {p['pairs']['train']:,} / {p['pairs']['val']:,} / {p['pairs']['test']:,} "
        f"| {SNIPPETS['train']} train snippets x {len(sched['k'])} offsets; every (t, t+1) of the {SNIPPETS['val']} val and "
        f"{SNIPPETS['test']} test snippets (30 frames) |",
        f"| bytes per pair | {mb(p['bytes_per_pair']['cityscapes'])} | two frames at Cityscapes' own PNG size "
        f"({mb(p['frame_png_bytes'])}: 324 GB / 150,000 frames) + the measured flow, labels and meta; generated "
        f"frames measured {mb(p['bytes_per_pair']['generated'])} |",
        f"| shard storage, train + val | {gb['cityscapes']['train'] + gb['cityscapes']['val']:.0f} GB (+ "
        f"{gb['cityscapes']['test']:.0f} GB for test) | pairs x bytes per pair |",
        f"| flow stage, {sched['flow_model']} at {h}x{w} | {p['flow_ms_per_pair']['fp32']:.0f} ms/pair fp32, "
        f"{p['flow_ms_per_pair']['fp16']:.0f} fp16 (`flow.half`) | ptlflow's benchmark (RTX 3090, 500x1000) x "
        f"{h * w / PTLFLOW_PX:.2f} for the pixels |",
        f"| flow-stage GPU-hours, train + val | {p['flow_gpu_h']['fp32']:.1f} fp32, {p['flow_gpu_h']['fp16']:.1f} "
        "fp16 | pairs x ms per pair (not measured here: no GPU was lent) |",
        *[f"| training step, {name} | {s:.2f} s per GPU (estimate) | mmsegmentation's inference fps at 769x769 "
          f"(slide, 8 windows), x{BACKWARD_FACTOR:.0f} with backward; not measured here |"
          for name, s in p["step_s"].items()],
        *[f"| GPU-hours, {name} | {g:.0f} | {sched['iterations']:,} iterations x {sched['gpus']} GPUs x "
          "the step above |" for name, g in p["train_gpu_h"].items()],
        *[f"| loader cores per GPU, {name} | {c:.1f} | pairs/s per GPU x the measured decode time (augmentation "
          "not counted) |" for name, c in p["loader_cores_per_gpu"].items()],
        *[f"| S3 read per GPU, {name} | {s:.0f} MB/s | pairs/s per GPU x bytes per pair |"
          for name, s in p["s3_mb_s_per_gpu"].items()],
        f"| a sweep of the ETC student's loss weights | ≤ {p['sweep_gpu_h']:.0f} GPU-hours | {SWEEP_TRIALS} trials "
        "(sweep.num_samples) x a full student run; ASHA stops most trials early; the flow stage and the teacher are "
        "shared, not multiplied |", "",
        "The training rows are estimates until a GPU run measures them (`python -m benchmarks.train_overhead` on a "
        "GPU machine, docs/gpu.md): the step time scales every GPU-hour, core and MB/s figure above. The frames' "
        "bytes come from Cityscapes' published archive size, not from a real snippet (none can be downloaded "
        "here); the flow's bytes from DIS on generated frames.", ""]
    return "\n".join(lines)


def write(r: dict | None) -> Path:
    DOC.write_text(render(r))
    print(f"wrote {DOC.relative_to(common.REPO)}")
    return DOC
