"""Reproduction (issue 17): ETC trained as defined on the accepted generated video, with controls and power.

Per seed: the per-frame baseline (cross-entropy only, from scratch, checkpoint chosen on val), then four students
fine-tuned from that baseline for the same number of steps: +TL, +TL+KD (from a teacher better by capacity),
and two controls, lambda = 0 (the baseline trained further: equal steps, no ETC term) and TL with zero flow (no
motion compensation). A third control smooths the baseline's logits at test time (Gaussian blur, several sigmas):
its mIoU-TC curve is what blur alone buys, and TL must lie above it. The temporal weight and form were chosen
beforehand by the project's own sweep on val (`--sweep`, results kept in benchmarks/results/reproduce_sweep.json)
and fixed in configs/reproduce.yaml. Every row is scored on test; differences are paired by seed, with 95 % CIs.

    python -m benchmarks.reproduce --sweep ray.num_cpus=3   # once: the sweep of lambda and form, on val (a trial's
                                                            # driver holds a logical CPU beside its 2-CPU worker)
    python -m benchmarks.reproduce                  # seeds 0-4
    python -m benchmarks.reproduce --config configs/reproduce_motion.yaml   # the motion study (MOTION_STUDENTS):
                                                    # benchmarks/results/reproduce_motion.json and its own ledger

Every trained model's test row goes into benchmarks/results/reproduce_ledger.json as soon as it is scored, under a key
of what trained it (common.bench_key): a stopped run, rerun, trains only what has no row, and the rows of several runs
(or sessions) make one result. --remeasure trains everything again and checks that the rows come out the same: CPU
training is deterministic on one CPU model, not across models (every row names its CPU). A student is paired only
with the baseline (and teacher) it started from: the metrics of those, as measured when it was trained, are kept in
its row and compared with theirs. A seed whose baseline came out different on this session's CPU trains again as a
whole with --supersede (its old rows stay in the ledger, set aside with the reason):

    python -m benchmarks.reproduce --seeds 0 1 2 --supersede "trained on another CPU model"
"""
from __future__ import annotations

import math
import statistics
import time
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import common

METRICS = ("miou", "tc", "tc_noc", "flicker_interior", "flicker_boundary")  # compared when a model is measured again
SCORED = (*METRICS, "mvc8")  # every row's metrics (mvc8: VSPW's video consistency; rows measured before it lack it)
NO_KD = {"student.loss.kd_pixel_weight": 0.0, "student.loss.kd_temporal_weight": 0.0}
STUDENTS = {  # name -> overrides of the fine-tuned student (all start from the seed's baseline)
    "+TL": NO_KD,
    "+TL+KD": {},
    "control: lambda=0": {**NO_KD, "student.loss.tc_weight": 0.0, "student.loss.ce_weight": 1.0},
    "control: TL zero flow": {**NO_KD, "student.loss.tc_flow": "zero"},
}
# The motion study (configs/reproduce_motion.yaml, issue 33): does motion compensation matter when the pairs move?
# No teacher; one more arm trains on the flow a user's pipeline would estimate (DIS, flow.source=dis, shards of its
# own) instead of the exact flow. Every arm is scored on the exact-flow test shards.
MOTION_STUDENTS = {name: STUDENTS[name] for name in ("+TL", "control: lambda=0", "control: TL zero flow")}
MOTION_STUDENTS["+TL dis flow"] = {**NO_KD, "flow.source": "dis"}
STUDIES = {"": STUDENTS, "_motion": MOTION_STUDENTS}  # by the bench config's suffix (common.suffix)
# The swept temporal weights, per form: each tuple is one grid sweep (every value tried once), run in order. Logits:
# around the official 0.1. The probability form's squared differences are one to two orders smaller than the
# logits' (probabilities lie in [0, 1]; the baseline's logits have a norm of about 10), so its grid sits higher.
# The first sweep chose the top of the logits grid (and probs rose to the top of its own), so each form's grid was
# extended upward by a second sweep, on val, before any student of the reproduction was trained; the rule is the same.
GRID = {"logits": [(0.03, 0.1, 0.3), (1.0, 3.0)], "probs": [(1.0, 3.0, 10.0), (30.0, 100.0)]}
SIGMAS = (0.5, 1.0, 2.0, 3.0, 5.0)  # test-time Gaussian blur of the baseline's logits, pixels
BLURRED = "control: lambda=0"  # the blur control at equal steps: this row's logits blurred (rows since 2026-12-07)


class Smoothed(nn.Module):
    """A model whose logits are blurred with a Gaussian of std `sigma` pixels at test time (a control)."""

    def __init__(self, model: nn.Module, sigma: float):
        super().__init__()
        self.model, self.sigma = model, sigma
        radius = max(1, math.ceil(3 * sigma))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        self.register_buffer("kernel", torch.exp(-x**2 / (2 * sigma**2)) / torch.exp(-x**2 / (2 * sigma**2)).sum())

    def forward(self, x: torch.Tensor):
        out = self.model(x)
        k, r = out.logits.shape[1], len(self.kernel) // 2
        z = F.pad(out.logits, (r, r, r, r), mode="replicate")
        z = F.conv2d(z, self.kernel.view(1, 1, 1, -1).expand(k, 1, 1, -1), groups=k)
        z = F.conv2d(z, self.kernel.view(1, 1, -1, 1).expand(k, 1, -1, 1), groups=k)
        return out._replace(logits=z)


T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262)  # Student's t, 97.5 %, 1..9 df


def ci95(values: list[float]) -> dict:
    """Mean and the half-width of its 95 % confidence interval (Student's t), with the values."""
    n = len(values)
    mean = statistics.fmean(values)
    t = T975[n - 2] if 1 < n <= len(T975) + 1 else 1.96
    half = t * statistics.stdev(values) / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "ci95": half, "n": n, "values": values}


def paired(runs: list[dict], a: str, b: str) -> dict | None:
    """Mean and 95 % CI of the per-seed differences a - b of the first four metrics, over the seeds with both rows."""
    by = {(r["seed"], r["variant"]): r for r in runs if r["seed"] is not None}
    seeds = sorted({s for s, v in by if v == a} & {s for s, v in by if v == b})
    return {k: ci95([by[(s, a)][k] - by[(s, b)][k] for s in seeds]) for k in METRICS[:4]} if seeds else None


def smoothing_curve(cfg, registered) -> list[dict]:
    """The baseline's test mIoU / TC / tc_noc / flicker under test-time Gaussian blur of its logits (SIGMAS; the
    reproduction puts the unblurred baseline, sigma 0, at the curve's top)."""
    from etc_core.infer.evaluate import evaluate_models
    from etc_core.tracking.registry import load_model

    model, meta = load_model(registered.model_uri)
    models = [(f"blur {s}", Smoothed(model, s), meta) for s in SIGMAS]
    rows = evaluate_models(models, shards=cfg.shards.uri, split="test", device=torch.device("cpu"), s3=cfg.s3.access,
                           batch_size=cfg.pipeline.eval_batch_size)["rows"][:len(SIGMAS)]
    return [{"sigma": s, **{k: r[k] for k in METRICS}} for s, r in zip(SIGMAS, rows)]


def above_curve(point: dict, curve: list[dict], key: str = "tc_noc") -> float | None:
    """point[key] minus the curve's `key` at point's mIoU (linear interpolation). Beyond the curve's top (a point
    more accurate than the unblurred baseline): the margin over the top when the point is above it there too (it
    then beats every point of the curve on both axes), else None; None below the curve's lowest mIoU."""
    pts = sorted((c["miou"], c[key]) for c in curve)
    for (m0, v0), (m1, v1) in zip(pts, pts[1:]):
        if m0 <= point["miou"] <= m1:
            return point[key] - (v0 + (v1 - v0) * (point["miou"] - m0) / max(m1 - m0, 1e-9))
    top_miou, top = pts[-1]
    return point[key] - top if point["miou"] > top_miou and point[key] > top else None


def run_sweep(base, tune: dict, quick: bool) -> dict:
    """The project's sweep (etc_core.sweep, Ray Tune) of the temporal weight, once per form (each its own grid),
    every trial fine-tuning seed 0's baseline (trained on the full schedule of `base`) with the `tune` schedule.
    The choice, on val only: the highest val tc_noc among the trials whose val mIoU is at least the baseline's - 0.5
    (else the highest val mIoU). Every trial is kept."""
    from etc_core.config import ParamSpace, apply_values
    from etc_core.sweep.run import run_sweep as sweep

    baseline, _ = common.train_or_reuse(apply_values(base, {"train.seed": 0}), "baseline")
    base_val = max(v for _, v in common.val_curve(base, baseline))
    trials = []
    grids = [(form, grid) for form, sweeps in GRID.items() for grid in (sweeps[:1] if quick else sweeps)]
    for form, grid in grids:  # a grid already swept resumes from its Tune directory: its finished trials are kept
        # every trial sets tc_weight; its base value is pinned (reproduce.yaml's value when the sweeps were first run)
        # so that fixing the choice in reproduce.yaml does not change the sweeps' identity (their Tune directories)
        cfg = apply_values(base, {**tune, **NO_KD, "train.seed": 0, "student.init_from": baseline.model_uri,
                                  "student.loss.tc_weight": 0.1, "student.loss.tc_on": form, "sweep.search": "random",
                                  "sweep.scheduler": "fifo", "sweep.num_samples": 1, "sweep.max_concurrent_trials": 1})
        cfg = cfg.model_copy(update={"sweep": cfg.sweep.model_copy(update={"space": {
            "student.loss.tc_weight": ParamSpace(type="grid", values=list(grid[1:2] if quick else grid))}})})
        for t in sweep(cfg)["trials"]:
            trials.append({"tc_on": form, "tc_weight": t.values["student.loss.tc_weight"], "error": t.error,
                           **{k: t.value(f"val_{k}") for k in METRICS}})
    ok = [t for t in trials if t["error"] is None and math.isfinite(t["miou"])]
    fair = [t for t in ok if t["miou"] >= base_val - 0.5]
    chosen = max(fair, key=lambda t: t["tc_noc"]) if fair else max(ok, key=lambda t: t["miou"])
    return {"baseline_val_miou": base_val, "rule": "max val tc_noc s.t. val mIoU >= baseline - 0.5",
            "chosen": {"tc_on": chosen["tc_on"], "tc_weight": chosen["tc_weight"], "within_rule": bool(fair)},
            "trials": trials}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], config=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--finetune-steps", type=int, default=600, help="train.max_steps of every fine-tuned student")
    p.add_argument("--sweep", action="store_true", help="run the sweep of the temporal weight and form, then stop")
    p.add_argument("--from-ledger", action="store_true", help="train nothing: write the result from the ledger's "
                   "rows as they are (a run in progress, or one stopped before the end)")
    p.add_argument("--remeasure", action="store_true", help="train every model again, even those with a ledger row "
                   "(the ledger keeps its rows and notes any difference: a check that the figures reproduce)")
    p.add_argument("--supersede", metavar="REASON", help="set the ledger rows of --seeds aside (the teacher's stays; "
                   "they are kept in the ledger with REASON) and train those models again, e.g. to pair a KD student "
                   "with a baseline trained on this CPU model")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, as for the pipelines")
    args, base, _, started = common.begin(p)
    if args.supersede and (args.from_ledger or args.sweep):
        p.error("--supersede trains models again: it cannot go with --from-ledger or --sweep")
    from etc_core.config import apply_values

    tune = {"train.max_steps": 4 if args.quick else args.finetune_steps,
            "train.steps_per_epoch": 2 if args.quick else max(1, args.finetune_steps // 3)}
    suffix = common.suffix(args.config) + ("_quick" if args.quick else "")
    # the command line as run, defaults spelled out (the sweep's fine-tune schedule included)
    flags = [*(["--quick"] if args.quick else []), "--config", args.config, "--finetune-steps", str(args.finetune_steps), *args.overrides]
    if args.sweep:
        result = run_sweep(base, tune, args.quick)
        command = " ".join(["python -m benchmarks.reproduce --sweep", *flags])
        common.save("reproduce_sweep" + suffix, {"command": command, **result}, started)
        return
    ledger = common.Ledger("reproduce" + common.suffix(args.config) + "_ledger" + ("_quick" if args.quick else ""))
    plan = Plan(base, args.seeds, tune, STUDIES[common.suffix(args.config)])
    if args.supersede:
        ledger.supersede([plan.baseline[s] for s in args.seeds]
                         + [key for s in args.seeds for _, key in plan.students[s].values()], args.supersede)
    done = {}  # bench key -> (registered model in this run's store, its row as measured in this run)

    def model(cfg, stage: str, key: str, seed: int, variant: str, started_from: dict | None = None):
        """The model of `key`, trained (or reused from the store) and scored on test into the ledger once per run.
        started_from: the rows (as measured in this run) of the models it starts from or distils from."""
        if key not in done:
            registered, secs = common.train_or_reuse(cfg, stage)
            secs = secs or common.training_seconds(cfg, registered)  # trained by an earlier run into this store
            began = time.perf_counter()
            rows = common.score(base, registered)  # on the exact-flow test shards, whatever flow it trained with
            row = {"seed": seed, "variant": variant, "train_s": secs, **{k: rows[0].get(k) for k in SCORED},
                   **{name: {k: r[k] for k in METRICS} for name, r in (started_from or {}).items()}}
            if stage == "baseline":
                row["references"] = [{"variant": r["model"], **{k: r.get(k) for k in SCORED}} for r in rows[1:]]
            if stage == "baseline" or variant == BLURRED:  # the blur control: on the baseline, and at equal steps
                unblurred = {"sigma": 0.0, **{k: row[k] for k in METRICS}}
                row["smoothing"] = [unblurred, *smoothing_curve(cfg, registered)]
            row["score_s"] = round(time.perf_counter() - began, 1)
            ledger.put(key, row, compare=METRICS)
            done[key] = registered, row
            print(f"seed {seed} {variant}: " + " ".join(f"{k} {row[k]:.2f}" for k in SCORED if row[k] is not None),
                  flush=True)
        return done[key]

    def student(seed: int, name: str, teacher=None) -> None:
        cfg, key = plan.students[seed][name]
        if cfg.shards.uri != base.shards.uri:  # trains on flow of another source: its own shards, made once
            common.ensure_shards(cfg)
        baseline, b_row = model(plan.seeds[seed], "baseline", plan.baseline[seed], seed, "baseline")
        cfg = apply_values(cfg, {"student.init_from": baseline.model_uri,
                                 **({"student.teacher_uri": teacher[0].model_uri} if teacher else {})})
        model(cfg, "student", key, seed, name, {"baseline": b_row, **({"teacher": teacher[1]} if teacher else {})})

    known = {} if args.remeasure else ledger.rows  # what needs no training: the ledger's rows, or nothing
    # Without the teacher first, seed by seed (the claim and its controls), then the teacher and the KD students.
    for seed in [] if args.from_ledger else args.seeds:
        if plan.baseline[seed] not in known:
            model(plan.seeds[seed], "baseline", plan.baseline[seed], seed, "baseline")
        for name in plan.missing(known, seed, kd=False):
            student(seed, name)
    if not args.from_ledger and any(plan.missing(known, seed, kd=True) for seed in args.seeds):
        teacher = model(plan.teacher_cfg, "teacher", plan.teacher, 0, "teacher")
        from etc_core.train.run import find_registered

        # seeds whose baseline this store already holds first: the others train theirs again (a session's store is
        # lost with it; the ledger keeps rows, not weights)
        for seed in sorted(args.seeds, key=lambda s: find_registered(plan.seeds[s], "baseline") is None):
            for name in plan.missing(known, seed, kd=True):
                student(seed, name, teacher)
    common.save("reproduce" + suffix, {
        "command": " ".join(["python -m benchmarks.reproduce --seeds", *map(str, args.seeds), *flags]),
        "finetune_steps": tune["train.max_steps"], **plan.result(ledger), "config": {
            k: v for k, v in base.model_dump(mode="json").items() if k in ("data", "shards", "train", "teacher",
                                                                           "student")}}, started)


def _same(measured: dict, row: dict | None) -> bool:
    """Whether a model's metrics as measured when another model started from it equal its ledger row."""
    return row is not None and all(abs(measured[k] - row[k]) <= 1e-6 for k in METRICS)


class Plan:
    """Every model of the reproduction and its ledger key (common.bench_key): the teacher (seed 0), and per seed the
    baseline and the students of STUDENTS, each fine-tuned from that seed's baseline."""

    def __init__(self, base, seeds: list[int], tune: dict, students: dict[str, dict] = STUDENTS):
        from etc_core.config import apply_values

        self.teacher_cfg = apply_values(base, {"train.seed": 0})
        self.teacher = common.bench_key(self.teacher_cfg, "teacher")
        self.seeds = {s: apply_values(base, {"train.seed": s}) for s in seeds}
        self.baseline = {s: common.bench_key(cfg, "baseline") for s, cfg in self.seeds.items()}
        self.students: dict[int, dict] = {s: {} for s in seeds}
        for s, cfg in self.seeds.items():
            for name, overrides in students.items():
                if overrides.get("flow.source", cfg.flow.source) != cfg.flow.source:  # its flow: shards of its own
                    overrides = {**overrides, "shards.uri": f"{cfg.shards.uri}_{overrides['flow.source']}"}
                student = apply_values(cfg, {**tune, **overrides})
                refs = {"init_from": self.baseline[s],
                        **({"teacher": self.teacher} if student.student.loss.needs_teacher else {})}
                self.students[s][name] = (student, common.bench_key(student, "student", refs))

    def missing(self, known: dict, seed: int, kd: bool) -> list[str]:
        """The students of `seed` (with KD, or without) whose key is not in `known` (the ledger's rows)."""
        return [name for name, (cfg, key) in self.students[seed].items()
                if cfg.student.loss.needs_teacher == kd and key not in known]

    def result(self, ledger) -> dict:
        """reproduce.json's body from the ledger rows of this plan: every row found, what is missing, the paired
        differences, KD's gap closure and the distance above the blur curve, over the seeds that have the rows."""
        runs, curves, curves_equal, refs, missing, commits = [], {}, {}, None, [], set()
        # the teacher is one model (seed 0): one row, the reference of every seed's KD student (when there is one)
        kd = any(cfg.student.loss.needs_teacher for students in self.students.values() for cfg, _ in students.values())
        entries = [(0, "teacher", self.teacher)] if kd else []
        for seed in self.seeds:
            entries += [(seed, "baseline", self.baseline[seed])]
            entries += [(seed, name, key) for name, (_, key) in self.students[seed].items()]
        for seed, name, key in entries:
            row = ledger.get(key)
            if row is None:
                missing.append({"seed": seed, "variant": name})
                continue
            other = [ref for ref, ref_key in (("baseline", self.baseline.get(seed)), ("teacher", self.teacher))
                     if ref in row and not _same(row[ref], ledger.get(ref_key))]
            if other:  # its baseline or teacher was trained again since and came out different: not paired
                missing.append({"seed": seed, "variant": name, "reason": f"trained from another {other[0]}"})
                continue
            runs.append({"seed": seed, "variant": name, "train_s": row["train_s"], "measured": row["commit"],
                         **{k: row.get(k) for k in SCORED}})
            commits.add(row["commit"])
            if name == "baseline":
                curves[seed] = row["smoothing"]
                refs = refs or [{"seed": None, **r} for r in row["references"]]
            if name == BLURRED and "smoothing" in row:
                curves_equal[seed] = row["smoothing"]
        by = {(r["seed"], r["variant"]): r for r in runs}
        teacher = by.get((0, "teacher"))
        seeds = [s for s in self.seeds if teacher and all((s, v) in by for v in ("+TL", "+TL+KD"))]
        gap = {s: (by[(s, "+TL+KD")]["miou"] - by[(s, "+TL")]["miou"]) / (teacher["miou"] - by[(s, "+TL")]["miou"])
               if teacher["miou"] > by[(s, "+TL")]["miou"] else float("nan") for s in seeds}
        # above the blur curve of the lambda=0 control (equal steps) where the row has one, else of the baseline
        blur = {**curves, **curves_equal}
        above = {name: {s: above_curve(by[(s, name)], blur[s]) for s in blur if (s, name) in by}
                 for name in ("+TL", "+TL+KD", "+TL dis flow") if any(v == name for _, v in by)}
        # First the comparisons at an equal number of steps, which isolate the method: the ETC terms against lambda=0
        # (the baseline trained as long without them), motion compensation against zero flow, estimated flow against
        # exact. Then, secondary, against the baseline, which every student out-trains by the fine-tune steps.
        pairs = (("+TL", "control: lambda=0"), ("+TL+KD", "control: lambda=0"), ("+TL", "control: TL zero flow"),
                 ("control: TL zero flow", "control: lambda=0"), ("+TL dis flow", "control: lambda=0"),
                 ("+TL dis flow", "+TL"), ("+TL+KD", "+TL"),
                 ("+TL", "baseline"), ("+TL+KD", "baseline"), ("control: lambda=0", "baseline"))
        diffs = {f"{a} - {b}": d for a, b in pairs if (d := paired(runs, a, b)) is not None}
        used = {k: ledger.get(k) for k in [*([self.teacher] if kd else []), *self.baseline.values()]
                + [k for students in self.students.values() for _, k in students.values()]}
        compute = sum(r["train_s"] + r.get("score_s", 0.0) for r in used.values() if r)
        aside: dict[tuple, dict] = {}  # rows set aside (Ledger.supersede), one group per call: reason and date
        for s in ledger.superseded:
            group = aside.setdefault((s["reason"], s["date"]), {"reason": s["reason"], "date": s["date"], "rows": []})
            group["rows"].append({"seed": s["row"]["seed"], "variant": s["row"]["variant"],
                                  "measured": s["row"]["commit"], **{k: s["row"][k] for k in METRICS}})
        return {"seeds": list(self.seeds), "split": "test", "complete": not missing, "missing": missing,
                "compute_s": round(compute, 1),
                "cpus": dict(Counter(r.get("cpu", "an unrecorded CPU") for r in used.values() if r)),
                "superseded": list(aside.values()),
                "measured_at": sorted(commits), "runs": runs + (refs or []),
                "smoothing": {str(s): c for s, c in curves.items()},
                "smoothing_lambda0": {str(s): c for s, c in curves_equal.items()}, "paired": diffs,
                "kd_gap_closure": {str(s): g for s, g in gap.items()},
                "tc_noc_above_smoothing_curve": {n: {str(s): v for s, v in d.items()} for n, d in above.items()}}

if __name__ == "__main__":
    main()
