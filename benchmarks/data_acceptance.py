"""Data acceptance (issues 16, 33): is the generated video a fair test of ETC? Judged on the baseline alone.

Trains the per-frame baseline student (cross-entropy only, no ETC term) on configs/reproduce.yaml for every seed,
selects its checkpoint on val and scores it on test, next to the two reference rows (ground truth, stride-8 oracle)
and a per-pixel colour classifier (one Gaussian per class on RGB, fitted on the labelled train frames), and measures
how far the pairs the temporal loss uses move (motion_stats, from the labels and the exact flow). Then says for each
criterion of docs/data.md whether it holds: the first five for every config, the motion criteria for a config with
a moving camera. No ETC model is trained or scored here.

    python -m benchmarks.data_acceptance                 # seeds 0 1 2, configs/reproduce.yaml
    python -m benchmarks.data_acceptance --config configs/reproduce_motion.yaml   # -> data_acceptance_motion.json
    python -m benchmarks.data_acceptance --seeds 0 train.max_steps=400
"""
from __future__ import annotations

import statistics

import numpy as np
import torch

from benchmarks import common

METRICS = ("miou", "tc", "tc_noc", "flicker_interior", "flicker_boundary")


class ColourClassifier:
    """One Gaussian per class on RGB (with class priors): a recogniser with no spatial context at all."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.params: list[tuple] = []

    def fit(self, uri: str, max_pixels: int = 2_000_000) -> "ColourClassifier":
        from etc_core.data import shards

        xs, ys, n = [], [], 0
        for sample in shards.iter_samples(uri, "train"):
            if sample["label"] is None:
                continue
            keep = sample["label"].reshape(-1) != 255
            xs.append(sample["img0"].reshape(-1, 3)[keep])
            ys.append(sample["label"].reshape(-1)[keep])
            n += int(keep.sum())
            if n >= max_pixels:
                break
        x, y = np.concatenate(xs).astype(np.float64), np.concatenate(ys)
        for k in range(self.num_classes):
            xk = x[y == k]
            cov = np.cov(xk.T) + np.eye(3)
            self.params.append((xk.mean(0), np.linalg.inv(cov), np.linalg.slogdet(cov)[1], np.log(len(xk) / len(x))))
        return self

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [B,3,H,W] -> class ids [B,H,W]."""
        x = frames.permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
        ll = np.stack([-0.5 * np.einsum("ni,ij,nj->n", x - m, p, x - m) - 0.5 * logdet + prior
                       for m, p, logdet, prior in self.params], 1)
        return torch.from_numpy(ll.argmax(1).reshape(frames.shape[0], *frames.shape[2:]))


def score_colour(cfg, num_classes: int, split: str) -> dict:
    from etc_core.data import shards
    from etc_core.metrics import SegScores

    clf = ColourClassifier(num_classes).fit(cfg.shards.uri)
    scores = SegScores(num_classes)
    for batch in shards.make_loader(cfg.shards.uri, split, cfg.pipeline.eval_batch_size, shuffle=False,
                                    s3=cfg.s3.access):
        scores.update_batch(batch, clf(batch["img0"]), clf(batch["img1"]))
    return scores.result()


def motion_stats(cfg) -> dict:
    """How the pairs the temporal loss uses move, from the exact flow and the labels: the train pairs' positions
    (t among train's labelled frames, t + k for k in shards.k) taken on the val clips, whose every frame is labelled
    (the same generator and settings as train). Returns the median and 90th percentile of the flow's length over
    every pixel of those pairs, and the percent of pixels whose label differs between t and t+k without warping (all
    pixels) and after warping t+k's labels with the exact flow (pixels in frame and not occluded)."""
    from etc_core.data.generated import labelled_frames
    from etc_core.data.registry import open_dataset
    from etc_core.metrics import warp_labels

    data = cfg.data
    ds = open_dataset(data)
    starts = labelled_frames(data.num_frames, data.label_every, data.label_offset, "train")
    lengths, still, warped = [], [0, 0], [0, 0]  # [pixels whose label changed, pixels counted]
    for clip_id in ds.clip_ids("val"):
        labels = torch.from_numpy(ds.read_clip("val", clip_id).labels.astype(np.int64))
        for t in starts:
            for k in cfg.shards.k:
                if not 0 <= t + k < data.num_frames:
                    continue
                flow, valid = ds.pair_flow("val", clip_id, t, k)
                lengths.append(np.hypot(flow[0], flow[1]).ravel())
                still[0] += int((labels[t] != labels[t + k]).sum())
                still[1] += labels[t].numel()
                back = warp_labels(labels[t + k][None], torch.from_numpy(flow)[None])[0]
                keep = torch.from_numpy(valid) & (back != 255)
                warped[0] += int((labels[t] != back)[keep].sum())
                warped[1] += int(keep.sum())
    lengths = np.concatenate(lengths)
    return {"pairs": len(lengths) // (data.height * data.width), "flow_median_px": float(np.median(lengths)),
            "flow_p90_px": float(np.percentile(lengths, 90)), "label_change_unwarped": 100.0 * still[0] / still[1],
            "label_change_warped": 100.0 * warped[0] / warped[1]}


def criteria(runs: list[dict], val_clips: int, test_clips: int, every_frame: bool,
             motion: dict | None = None) -> list[dict]:
    """The acceptance criteria of docs/data.md, each with the figures it was judged on; motion: motion_stats of a
    config with a moving camera (its three criteria), None for one without."""
    row = {r["variant"]: r for r in runs if r["seed"] is None}
    base = {k: statistics.fmean(r[k] for r in runs if r["variant"] == "baseline") for k in METRICS}
    oracle, colour, gt = row["stride-8 oracle"], row["colour classifier"], row["ground truth"]
    return [
        {"criterion": "stride-8 oracle mIoU >= 90", "value": oracle["miou"], "holds": oracle["miou"] >= 90},
        {"criterion": "colour classifier mIoU <= baseline mIoU - 15",
         "value": base["miou"] - colour["miou"], "holds": colour["miou"] <= base["miou"] - 15},
        {"criterion": "baseline flicker_interior >= 1 %", "value": base["flicker_interior"],
         "holds": base["flicker_interior"] >= 1.0},
        {"criterion": "baseline tc_noc <= ground truth tc_noc - 5", "value": gt["tc_noc"] - base["tc_noc"],
         "holds": base["tc_noc"] <= gt["tc_noc"] - 5},
        {"criterion": ">= 30 val clips, every frame labelled, and a test split", "value": val_clips,
         "holds": val_clips >= 30 and test_clips > 0 and every_frame},
    ] + ([] if motion is None else [
        {"criterion": "median flow of the loss's pairs >= 8 px", "value": motion["flow_median_px"],
         "holds": motion["flow_median_px"] >= 8},
        {"criterion": "labels change on >= 20 % of the pairs' pixels without warping",
         "value": motion["label_change_unwarped"], "holds": motion["label_change_unwarped"] >= 20},
        {"criterion": "labels change on <= 2 % of the pairs' pixels with exact warping",
         "value": motion["label_change_warped"], "holds": motion["label_change_warped"] <= 2},
    ])


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], config=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data-only", action="store_true", help="train nothing: the motion statistics alone (of the "
                   "data and its exact flow), printed")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, as for the pipelines")
    args, base, manifest, started = common.begin(p)
    from etc_core.config import apply_values

    moving = base.data.camera_pan > 0 or base.data.camera_zoom > 0
    motion = motion_stats(base)
    print("loss pairs (exact flow): " + " ".join(f"{k} {v:.2f}" for k, v in motion.items()), flush=True)
    if args.data_only:
        return

    num_classes = int(manifest["num_classes"])
    runs, curves = [], {}
    for seed in args.seeds:
        cfg = apply_values(base, {"train.seed": seed})
        registered, secs = common.train_or_reuse(cfg, "baseline")
        rows = common.score(cfg, registered, split="test")
        runs.append({"seed": seed, "variant": "baseline", "arch": cfg.student.arch, "train_s": secs,
                     **{k: rows[0][k] for k in (*METRICS, "model_uri")}})
        curves[seed] = common.val_curve(cfg, registered)
        print(f"seed {seed} baseline (test): " + " ".join(f"{k} {runs[-1][k]:.2f}" for k in METRICS)
              + f" ({secs:.0f} s); val mIoU by step: " + ", ".join(f"{s}:{v:.1f}" for s, v in curves[seed]), flush=True)
        if seed == args.seeds[0]:
            refs = [{"seed": None, "variant": r["model"], "arch": "reference", **{k: r[k] for k in METRICS}}
                    for r in rows[1:]]
    colour = score_colour(base, num_classes, "test")
    runs += refs + [{"seed": None, "variant": "colour classifier", "arch": "gaussian-rgb", **colour}]
    for r in runs[len(args.seeds):]:
        print(f"{r['variant']} (test): " + " ".join(f"{k} {r[k]:.2f}" for k in METRICS), flush=True)
    sizes = base.data.split_sizes
    verdicts = criteria(runs, sizes["val"], sizes["test"], every_frame=True, motion=motion if moving else None)
    for v in verdicts:
        print(f"{'holds' if v['holds'] else 'FAILS'}: {v['criterion']} ({v['value']:.2f})", flush=True)
    config = {k: v for k, v in base.model_dump(mode="json").items() if k in ("data", "shards", "train", "student")}
    common.save("data_acceptance" + common.suffix(args.config) + ("_quick" if args.quick else ""), {
        "command": "python -m benchmarks.data_acceptance " + " ".join(
            [*(["--quick"] if args.quick else []), "--config", args.config, "--seeds", *map(str, args.seeds),
             *args.overrides]),
        "seeds": args.seeds, "split": "test", "runs": runs, "val_curves": {str(s): c for s, c in curves.items()},
        "motion": motion, "criteria": verdicts, "config": config}, started)


if __name__ == "__main__":
    main()
