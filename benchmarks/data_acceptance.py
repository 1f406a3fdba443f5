"""Data acceptance (issue 16): is the generated video a fair test of ETC? Judged on the per-frame baseline alone.

Trains the per-frame baseline student (cross-entropy only, no ETC term) on configs/reproduce.yaml for every seed,
selects its checkpoint on val and scores it on test, next to the two reference rows (ground truth, stride-8 oracle)
and a per-pixel colour classifier (one Gaussian per class on RGB, fitted on the labelled train frames). Then says
for each criterion of docs/data.md whether it holds. No ETC model is trained or scored here.

    python -m benchmarks.data_acceptance                 # seeds 0 1 2
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


def criteria(runs: list[dict], val_clips: int, test_clips: int, every_frame: bool) -> list[dict]:
    """The acceptance criteria of docs/data.md, each with the figures it was judged on."""
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
    ]


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("overrides", nargs="*", help="dotted config overrides, as for the pipelines")
    args, base, manifest, started = common.begin(p)
    from etc_core.config import apply_values

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
    verdicts = criteria(runs, sizes["val"], sizes["test"], every_frame=True)
    for v in verdicts:
        print(f"{'holds' if v['holds'] else 'FAILS'}: {v['criterion']} ({v['value']:.2f})", flush=True)
    config = {k: v for k, v in base.model_dump(mode="json").items() if k in ("data", "shards", "train", "student")}
    common.save("data_acceptance" + ("_quick" if args.quick else ""), {
        "command": "python -m benchmarks.data_acceptance " + " ".join(
            [*(["--quick"] if args.quick else []), "--seeds", *map(str, args.seeds), *args.overrides]),
        "seeds": args.seeds, "split": "test", "runs": runs, "val_curves": {str(s): c for s, c in curves.items()},
        "criteria": verdicts, "config": config}, started)


if __name__ == "__main__":
    main()
