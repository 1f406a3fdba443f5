"""Inference speed (issue 11, item 4): frames/s at batch 1 of every student architecture against the teacher
at 512x1024 and 256x512 (19 classes, as Cityscapes), and of the ETC-trained student against the same
architecture trained without ETC (the reproduction's seed-0 models): the zero-overhead claim, ratio 1.00.

    python -m benchmarks.inference [--teacher pspnet101] [--sizes 512x1024 256x512]
"""
from __future__ import annotations

import logging
import statistics
import time

import numpy as np
import torch

from benchmarks import common

STUDENTS = ("pspnet18", "pspnet18_slim", "mobilenetv2", "lraspp_mobilenetv3")


def latency_ms(predictor, frame: np.ndarray, min_iters: int, budget_s: float) -> float:
    """Median wall time of one forward (uint8 frame in, class ids out) on the CPU after one warm-up call: at
    least min_iters timed calls, more (up to 50) while within budget_s seconds."""
    from etc_core.metrics.speed import measure_latency

    return measure_latency(lambda: predictor(frame), torch.device("cpu"), warmup=1, iters=min_iters,
                           budget_s=budget_s)


def _frame(size: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (1, *size, 3), dtype=np.uint8)


def architectures(teacher: str, sizes: list[tuple[int, int]], quick: bool) -> list[dict]:
    from etc_core.infer.predict import Predictor
    from etc_core.models import create_model

    rows = []
    for size in sizes:
        frame = _frame(size)
        times = {}
        for arch in (teacher, *STUDENTS):
            predictor = Predictor(create_model(arch, num_classes=19), torch.device("cpu"))
            times[arch] = latency_ms(predictor, frame, 1 if quick else 3, 0.5 if quick else 8.0)
            print(f"{size[0]}x{size[1]} {arch}: {times[arch]:.1f} ms", flush=True)
        for arch, ms in times.items():
            rows.append({"size": list(size), "arch": arch, "role": "teacher" if arch == teacher else "student",
                         "latency_ms": ms, "fps": 1000 / ms, "speedup_vs_teacher": times[teacher] / ms})
    return rows


def _students(quick: bool) -> tuple[dict, str]:
    """({"baseline": model, "+TL+KD": model}, where they come from): the reproduction's seed-0 baseline and ETC
    students when this bench store holds them (a run of benchmarks.reproduce here trained them), else two fresh
    networks of the student's architecture. The ETC terms change a student's weights, never its network, and a dense
    network's time does not depend on its weights; `make bench` starts from an empty store and a complete ledger
    trains nothing, so the fresh networks are what it times then."""
    from benchmarks.repro_plan import Plan
    from etc_core.config import apply_values
    from etc_core.models import create_model
    from etc_core.tracking.registry import load_model
    from etc_core.train.run import find_registered

    cfg = common.bench_config(quick=quick)
    steps = 4 if quick else 600  # benchmarks/reproduce.py's fine-tune schedule
    plan = Plan(cfg, [0], {"train.max_steps": steps, "train.steps_per_epoch": 2 if quick else steps // 3})
    baseline, teacher = find_registered(plan.seeds[0], "baseline"), find_registered(plan.teacher_cfg, "teacher")
    if baseline is not None and teacher is not None:
        student = apply_values(plan.students[0]["+TL+KD"][0], {"student.init_from": baseline.model_uri,
                                                               "student.teacher_uri": teacher.model_uri})
        etc = find_registered(student, "student")
        if etc is not None:
            return ({"baseline": load_model(baseline.model_uri)[0], "+TL+KD": load_model(etc.model_uri)[0]},
                    f"the reproduction's seed-0 students ({baseline.model_uri}, {etc.model_uri})")
    torch.manual_seed(0)
    models = {name: create_model(cfg.student.arch, num_classes=19) for name in ("baseline", "+TL+KD")}
    return models, f"two fresh {cfg.student.arch} networks (no trained students in this bench store)"


def etc_vs_baseline(sizes: list[tuple[int, int]], rounds: int, quick: bool) -> list[dict]:
    """The ETC (+TL+KD) and baseline students (_students), timed in alternation."""
    from etc_core.infer.predict import Predictor

    models, source = _students(quick)
    rows = []
    for size in sizes:
        frame = _frame(size)
        predictors = {name: Predictor(m, torch.device("cpu")) for name, m in models.items()}
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(rounds):
            for name, predictor in predictors.items():
                times[name].append(latency_ms(predictor, frame, 1 if quick else 5, 0.5 if quick else 4.0))
        base, etc = statistics.median(times["baseline"]), statistics.median(times["+TL+KD"])
        rows.append({"size": list(size), "arch": models["baseline"].__class__.__name__, "source": source,
                     "baseline_ms": times["baseline"], "etc_ms": times["+TL+KD"], "etc_over_baseline": etc / base})
        print(f"{size[0]}x{size[1]}: ETC {etc:.1f} ms vs baseline {base:.1f} ms = {etc / base:.3f}x", flush=True)
    return rows


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--teacher", default="pspnet101")
    p.add_argument("--sizes", nargs="+", default=["512x1024", "256x512"])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
    sizes = [(64, 128)] if args.quick else [tuple(int(x) for x in s.split("x")) for s in args.sizes]
    result = {"command": "python -m benchmarks.inference" + (" --quick" if args.quick else ""),
              "device": "cpu", "threads": torch.get_num_threads(), "batch": 1,
              "architectures": architectures(args.teacher, sizes, args.quick),
              "etc_vs_baseline": etc_vs_baseline(sizes, 1 if args.quick else args.rounds, args.quick)}
    common.save("inference" + ("_quick" if args.quick else ""), result, started)


if __name__ == "__main__":
    main()
