"""Small-scale reproduction of the paper's claims on the generated video (issue 11, item 5).

A teacher trained longer than the students (--teacher-steps, as the paper's teacher is trained to convergence
before distillation), then for every seed the student three ways on the same shards: per-frame baseline (CE
only), + temporal loss, + temporal loss + temporal distillation from that teacher. Every model is scored on the
val shards (mIoU, TC with the ground-truth flow); the table gives mean and spread over seeds. One teacher serves
every seed unless --teacher-per-seed (then each seed trains its own).

    python -m benchmarks.reproduce                      # configs/reproduce.yaml, seeds 0 1 2
    python -m benchmarks.reproduce --seeds 0 data.noise=0.05
"""
from __future__ import annotations

import logging
import time

from benchmarks import common

VARIANTS = {  # name -> (stage, overrides): what each row of the table trains
    "baseline": ("baseline", {}),
    "+TL": ("student", {"student.loss.kd_pixel_weight": 0.0, "student.loss.kd_temporal_weight": 0.0}),
    "+TL+KD": ("student", {}),
}


def train_or_reuse(cfg, stage: str):
    return common.train_or_reuse(cfg, stage)


def score(cfg, registered) -> dict:
    """mIoU / TC (percent) of a registered model on cfg's val shards."""
    row = common.score(cfg, registered, split="val")[0]
    return {"miou": row["miou"], "tc": row["tc"], "model_uri": row["model_uri"]}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher-steps", type=int, default=1080, help="train.max_steps of the teacher")
    p.add_argument("--teacher-per-seed", action="store_true", help="train a teacher per seed (default: one, seed 0)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, as for the pipelines")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from etc_core.sweep.space import apply_values

    started = time.time()
    base = common.bench_config(*args.overrides, quick=args.quick)
    common.start_ray(base)
    common.ensure_shards(base)
    runs = []
    steps = 4 if args.quick else args.teacher_steps
    for seed in args.seeds:
        cfg = apply_values(base, {"train.seed": seed})
        if args.teacher_per_seed or seed == args.seeds[0]:
            teacher, secs = train_or_reuse(apply_values(cfg, {"train.max_steps": steps}), "teacher")
            runs.append({"seed": seed, "variant": "teacher", "arch": cfg.teacher.arch, "train_s": secs,
                         **score(cfg, teacher)})
            print(f"seed {seed} teacher: mIoU {runs[-1]['miou']:.2f} TC {runs[-1]['tc']:.2f} ({secs:.0f} s)",
                  flush=True)
        cfg = apply_values(cfg, {"student.teacher_uri": teacher.model_uri})
        for name, (stage, overrides) in VARIANTS.items():
            registered, secs = train_or_reuse(apply_values(cfg, overrides), stage)
            runs.append({"seed": seed, "variant": name, "arch": cfg.student.arch, "train_s": secs,
                         **score(cfg, registered)})
            print(f"seed {seed} {name}: mIoU {runs[-1]['miou']:.2f} TC {runs[-1]['tc']:.2f} ({secs:.0f} s)",
                  flush=True)
    summary = {}
    for name in ["teacher", *VARIANTS]:
        rows = [r for r in runs if r["variant"] == name]
        summary[name] = {"miou": common.spread([r["miou"] for r in rows]), "tc": common.spread([r["tc"] for r in rows]),
                         "arch": rows[0]["arch"]}
    config = {k: v for k, v in base.model_dump(mode="json").items() if k in ("data", "shards", "train", "teacher",
                                                                                "student")}
    common.save("reproduce" + ("_quick" if args.quick else ""),
                {"command": "python -m benchmarks.reproduce " + " ".join(
                    [*(["--quick"] if args.quick else []),
                     *(["--teacher-per-seed"] if args.teacher_per_seed else []), "--seeds", *map(str, args.seeds), *args.overrides]),
                 "seeds": args.seeds, "teacher_steps": steps, "teacher_per_seed": args.teacher_per_seed, "runs": runs, "summary": summary, "config": config}, started)


if __name__ == "__main__":
    main()
