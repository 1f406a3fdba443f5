"""Train-step overhead (issue 11, items 1 and 2): the same model, loss and steps three ways.

- in memory: a bare PyTorch loop of `train_step` over batches already decoded, augmented and collated;
- loader:    the training loop's `train_epoch` reading the webdataset shards (no Ray);
- Ray Train: one Ray Train worker running the real training entry over the shards (the epoch's samples/s
             it reports; worker start-up and validation are outside the epoch and reported apart).

Ratios are step times against the in-memory loop measured in the same run (targets: loader <= 1.05,
Ray Train <= 1.10), and `overhead_ms_per_step`, the milliseconds Ray Train and the loader add to every step (issue 35:
<= 2 ms for the student). One more Ray Train run, not timed, is sampled by py-spy (Ray's own dependency): where the
Train worker's time goes, per step of its epoch, and the CPU that Ray's own processes take meanwhile.

    python -m benchmarks.train_overhead [--steps 40] [--repeats 2]
"""
from __future__ import annotations

import itertools
import logging
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from benchmarks import common

log = logging.getLogger(__name__)


def _parts(cfg, stage: str, num_classes: int, teacher_state):
    from etc_core.losses import EtcLoss
    from etc_core.train.loop import build_training, frozen_teacher, seed_everything, stage_spec

    seed_everything(cfg.train.seed)
    spec = stage_spec(cfg, stage)
    model, opt, sched, scaler = build_training(cfg, spec.arch, num_classes, use_amp=False)
    teacher = frozen_teacher(teacher_state, torch.device("cpu")) if spec.loss.needs_teacher else None
    return model, teacher, EtcLoss(spec.loss), opt, sched, scaler


def _augment(cfg):
    from etc_core.train.augment import PairAugment

    t = cfg.train
    return PairAugment(crop=t.crop, scale=t.scale, flip=t.flip) if t.crop else None


def _loader(cfg, steps: int):
    from etc_core.data import shards

    t = cfg.train
    return shards.make_loader(cfg.shards.uri, "train", t.batch_size, num_workers=t.loader_workers, shuffle=True,
                              seed=t.seed, transform=_augment(cfg), steps_per_epoch=steps, s3=cfg.s3.access)


def in_memory(cfg, stage, num_classes, teacher_state, batches: list[dict]) -> float:
    """samples/s of a bare loop over decoded batches."""
    from etc_core.train.loop import train_step

    model, teacher, loss_fn, opt, sched, scaler = _parts(cfg, stage, num_classes, teacher_state)
    model.train()
    start = time.perf_counter()
    for batch in batches:
        train_step(model, teacher, loss_fn, opt, sched, scaler, batch, torch.device("cpu"), False, cfg.train.grad_clip)
    return sum(len(b["img0"]) for b in batches) / (time.perf_counter() - start)


def with_loader(cfg, stage, num_classes, teacher_state, steps: int) -> float:
    """samples/s of the training loop's epoch over the shards, in this process."""
    from etc_core.train.loop import train_epoch

    model, teacher, loss_fn, opt, sched, scaler = _parts(cfg, stage, num_classes, teacher_state)
    metrics = train_epoch(model, teacher, loss_fn, opt, sched, scaler, cfg, 0, 0, steps, 0, 1, _augment(cfg),
                          torch.device("cpu"), False, None)
    return metrics["samples_per_s"]


def with_ray_train(cfg, stage, num_classes, teacher_ref, steps: int, name: str) -> tuple[float, float]:
    """(samples/s of the epoch, wall seconds of trainer.fit()) with one Ray Train worker."""
    from etc_core.train.run import make_trainer

    start = time.perf_counter()
    result = make_trainer(cfg, stage, num_classes, teacher_ref, None, name=name,
                          storage_path=str(common.ROOT / "overhead")).fit()
    return float(result.metrics["samples_per_s"]), time.perf_counter() - start


def ms_per_step(samples_per_s: float, batch_size: int) -> float:
    return 1000 * batch_size / samples_per_s


def measure(base, stage: str, steps: int, repeats: int) -> dict:
    import ray

    from etc_core.models import create_model
    from etc_core.config import apply_values

    cfg = apply_values(base, {"train.max_steps": steps, "train.steps_per_epoch": steps, "train.workers": 1,
                              "train.pictures": 0})
    num_classes = int(common.ensure_shards(cfg)["num_classes"])
    teacher = create_model(cfg.teacher.arch, num_classes=num_classes)  # random weights: the same compute
    teacher_state = ({"arch": cfg.teacher.arch, "num_classes": num_classes}, teacher.state_dict())
    teacher_ref = ray.put(teacher_state)
    batches = list(itertools.islice(iter(_loader(cfg, steps)), steps))
    rates = {"in_memory": [], "loader": [], "ray_train": []}
    fit_s = []
    for r in range(repeats):  # interleaved, so drifts in machine load hit every variant alike
        rates["in_memory"].append(in_memory(cfg, stage, num_classes, teacher_state, batches))
        rates["loader"].append(with_loader(cfg, stage, num_classes, teacher_state, steps))
        rate, secs = with_ray_train(cfg, stage, num_classes, teacher_ref, steps, f"overhead-{stage}-{time.time():.0f}-{r}")
        rates["ray_train"].append(rate)
        fit_s.append(secs)
        print(f"{stage} repeat {r}: " + ", ".join(f"{k} {v[-1]:.1f} samples/s" for k, v in rates.items()), flush=True)
    best = {k: statistics.median(v) for k, v in rates.items()}
    arch = cfg.teacher.arch if stage == "teacher" else cfg.student.arch
    ms = {k: ms_per_step(v, cfg.train.batch_size) for k, v in best.items()}
    profile = profiled(lambda: with_ray_train(cfg, stage, num_classes, teacher_ref, steps,
                                              f"overhead-{stage}-{time.time():.0f}-profiled"), steps)
    return {"stage": stage, "arch": arch, "steps": steps, "batch_size": cfg.train.batch_size,
            "ms_per_step": ms, "overhead_ms_per_step": ms["ray_train"] - ms["in_memory"],
            "loader_ms_per_step": ms["loader"] - ms["in_memory"], "profile": profile,
            "crop": cfg.train.crop, "loader_workers": cfg.train.loader_workers, "samples_per_s": rates,
            "median_samples_per_s": best,
            "loader_ratio": best["in_memory"] / best["loader"], "ray_train_ratio": best["in_memory"] / best["ray_train"],
            "ray_fit_wall_s": fit_s, "ray_fixed_s": statistics.median(
                [s - steps * cfg.train.batch_size / r for s, r in zip(fit_s, rates["ray_train"])])}


# where a py-spy sample of the training thread falls: the innermost frame of its stack whose function (method names
# without their class) is one of these
_BUCKETS = {"forward_pair": "forward", "backward": "backward", "step": "optimizer", "floats": "reading values",
            "train_step": "step, other", "__next__": "loader", "train_epoch": "loop",
            "train_loop_per_worker": "outside the epoch"}
_RAY_PROCS = ("raylet", "gcs_server", "dashboard", "agent", "ray::", "log_monitor", "monitor.py")


def _bucket(stack: str) -> str | None:
    """The part of the loop a sample of the worker's stacks falls in; None outside the training thread."""
    frames = [f.split(" (")[0].rsplit(".", 1)[-1] for f in stack.split(";")]  # function names
    return next((_BUCKETS[f] for f in reversed(frames) if f in _BUCKETS), None)


def profiled(fit: Callable[[], tuple[float, float]], steps: int, rate_hz: int = 200) -> dict:
    """Run `fit` while py-spy samples the Ray Train worker's training thread (non-blocking: never paused; idle
    samples kept, so that time spent waiting, for OpenMP threads or a lock, counts where it is spent) and psutil
    counts the CPU seconds of Ray's own processes; per epoch step, the wall milliseconds of each part of the loop
    (forward, backward, optimizer, loader, ...), and Ray's CPU ms per step."""
    import shutil
    import subprocess
    import sys
    import threading

    import psutil

    def ray_cpu() -> dict[int, float]:
        """CPU seconds so far of each of Ray's own processes, by pid."""
        times = {}
        for p in psutil.process_iter(["name", "cmdline", "cpu_times"]):
            text = " ".join(p.info["cmdline"] or [p.info["name"] or ""])
            if any(k in text for k in _RAY_PROCS) and "RayTrainWorker" not in text and p.info["cpu_times"]:
                times[p.pid] = sum(p.info["cpu_times"][:2])
        return times

    def workers() -> set[int]:
        return {p.pid for p in psutil.process_iter(["cmdline"]) if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])}

    out = common.ROOT / "overhead" / f"py-spy-{time.time():.0f}.txt"  # raw stacks, kept for a closer look
    out.parent.mkdir(parents=True, exist_ok=True)
    found: dict = {}
    others = set(workers())  # another run's workers on this machine are never sampled

    def attach() -> None:
        while "proc" not in found and not found.get("stop"):
            for pid in workers() - others:
                found["proc"] = subprocess.Popen(
                    [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                     str(pid), "--rate", str(rate_hz), "--nonblocking", "--idle", "--format", "raw", "-o", str(out)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=attach, daemon=True)
    cpu0 = ray_cpu()
    watcher.start()
    rate, wall = fit()
    cpu1 = ray_cpu()
    found["stop"] = True
    watcher.join()
    try:
        code = found["proc"].wait(timeout=60) if "proc" in found else None  # py-spy ends with the worker
    except subprocess.TimeoutExpired:
        found["proc"].kill()
        code = None
    if code != 0 or not out.exists():
        return {"error": "py-spy did not sample the Ray Train worker (it needs ptrace rights on it)"}
    samples: dict[str, int] = {}
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if (part := _bucket(stack)) is not None:
            samples[part] = samples.get(part, 0) + int(count)
    ms = {k: 1000 * n / rate_hz / steps for k, n in sorted(samples.items(), key=lambda kv: -kv[1])}
    return {"rate_hz": rate_hz, "samples": samples, "worker_ms_per_step": ms,
            "epoch_ms_per_step": sum(v for k, v in ms.items() if k != "outside the epoch"),
            # per process, so that one that ends during the fit is not subtracted (it is left out: a lower bound)
            "ray_processes_cpu_ms_per_step": 1000 * sum(t - cpu0.get(pid, 0.0) for pid, t in cpu1.items()) / steps,
            "fit_wall_s": wall, "raw": str(out),
            "note": "worker_ms_per_step: py-spy samples (idle included) of the Train worker's training thread over the "
                    "whole fit (model building, validation and checkpoints are 'outside the epoch'), per step of the "
                    "epoch; Ray's processes: CPU seconds of raylet, GCS, dashboard, agents and Ray's other workers "
                    "during the fit, per step (processes that ended during it are left out)"}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--stages", nargs="+", default=["student", "teacher"])
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
    cfg = common.bench_config(quick=args.quick)
    common.start_ray(cfg)
    steps = 3 if args.quick else args.steps
    rows = [measure(cfg, stage, steps, 1 if args.quick else args.repeats) for stage in args.stages]
    for row in rows:
        print(f"{row['stage']} ({row['arch']}): loader {row['loader_ratio']:.3f}x, Ray Train "
              f"{row['ray_train_ratio']:.3f}x the in-memory step time; +{row['overhead_ms_per_step']:.1f} ms/step "
              f"(loader +{row['loader_ms_per_step']:.1f})")
        print("  worker profile, ms per step:", {k: round(v, 1) for k, v in
                                                  row["profile"].get("worker_ms_per_step", {}).items()},
              f"Ray's processes {row['profile'].get('ray_processes_cpu_ms_per_step', float('nan')):.1f} CPU ms/step")
    common.save("train_overhead" + ("_quick" if args.quick else ""),
                {"command": "python -m benchmarks.train_overhead" + (" --quick" if args.quick else ""),
                 "rows": rows}, started)


if __name__ == "__main__":
    main()
