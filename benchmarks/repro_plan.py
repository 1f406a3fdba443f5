"""The plan of the reproduction's studies (benchmarks/reproduce.py): which models each trains, their ledger keys, and
the result (paired differences with 95 % CIs, gap closure, distance above the blur curve) from the ledger's rows.

A study is its students (name -> overrides of the student fine-tuned from each seed's baseline), the fine-tune
length, and its teacher's data (`Study.teacher`): configs/reproduce.yaml's reproduction, the motion study
(configs/reproduce_motion.yaml) and the distillation study (a teacher trained on every frame labelled).
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field

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
# The distillation study (issue 33): a teacher better by what it can pass on (trained on every frame of the train clips
# labelled, which the generator gives), arms at equal steps, long enough for distillation to act. The KD weights of
# its arms are those the KD sweep chose on val (benchmarks/results/reproduce_kd_sweep.json), set by reproduce.py.
KD_STUDENTS = {"control: lambda=0": STUDENTS["control: lambda=0"], "+TL": NO_KD,
               "KD only": {"student.loss.tc_weight": 0.0}, "+TL+KD": {}}


@dataclass(frozen=True)
class Study:
    """One study: its result and ledger files (reproduce{suffix}.json, reproduce{suffix}_ledger.json), its students,
    how long each fine-tunes, and what its teacher trains on besides the base config (`teacher`: overrides; `folder`:
    the name its data and shards take beside the base's, when the teacher's data differ)."""

    suffix: str
    students: dict[str, dict]
    finetune_steps: int = 600
    teacher: dict = field(default_factory=dict)
    folder: str = ""


STUDIES = {"reproduce": Study("", STUDENTS), "motion": Study("_motion", MOTION_STUDENTS),
           "kd": Study("_kd", KD_STUDENTS, 2000, {"data.label_every": 1}, "every_frame")}


def study_of(config: str) -> str:
    """The study a bench config runs unless --study names another: `motion` for configs/reproduce_motion.yaml."""
    return {"": "reproduce", "_motion": "motion"}.get(common.suffix(config), "reproduce")
BLURRED = "control: lambda=0"  # the blur control at equal steps: this row's logits blurred (rows since 2026-12-07)


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


def gap_closure(by: dict, teacher: dict | None, arm: str, ref: str) -> dict[int, float]:
    """(S_arm - S_ref) / (T - S_ref) in test mIoU per seed with both rows (NaN where the teacher is not above ref)."""
    if teacher is None:
        return {}
    seeds = sorted({s for s, v in by if v == arm} & {s for s, v in by if v == ref})
    return {s: (by[(s, arm)]["miou"] - by[(s, ref)]["miou"]) / (teacher["miou"] - by[(s, ref)]["miou"])
            if teacher["miou"] > by[(s, ref)]["miou"] else float("nan") for s in seeds}


def _same(measured: dict, row: dict | None) -> bool:
    """Whether a model's metrics as measured when another model started from it equal its ledger row."""
    return row is not None and all(abs(measured[k] - row[k]) <= 1e-6 for k in METRICS)


class Plan:
    """Every model of a study and its ledger key (common.bench_key): the teacher (seed 0), and per seed the baseline
    and the study's students, each fine-tuned from that seed's baseline; `extra`: overrides of every student (the KD
    weights the KD sweep chose)."""

    def __init__(self, base, seeds: list[int], tune: dict, study: Study = STUDIES["reproduce"],
                 extra: dict | None = None):
        from etc_core.config import apply_values

        students = {name: {**(extra or {}), **o} for name, o in study.students.items()}
        where = ({"data.root": f"{base.data.root}_{study.folder}", "shards.uri": f"{base.shards.uri}_{study.folder}"}
                 if study.folder else {})
        self.teacher_cfg = apply_values(base, {"train.seed": 0, **study.teacher, **where})
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
                         **{k: row.get(k) for k in SCORED}, **({"val_miou": row["val_miou"]} if "val_miou" in row
                                                                else {})})
            commits.add(row["commit"])
            if name == "baseline":
                curves[seed] = row["smoothing"]
                refs = refs or [{"seed": None, **r} for r in row["references"]]
            if name == BLURRED and "smoothing" in row:
                curves_equal[seed] = row["smoothing"]
        by = {(r["seed"], r["variant"]): r for r in runs}
        teacher = by.get((0, "teacher"))
        gap = gap_closure(by, teacher, "+TL+KD", "+TL")
        # the distillation study's measure: how much of the teacher's lead over the control at equal steps an arm
        # takes, in mIoU, per seed and with its CI
        closure = {arm: gap_closure(by, teacher, arm, "control: lambda=0") for arm in ("KD only", "+TL+KD")
                   if any(v == arm for _, v in by) and any(v == "control: lambda=0" for _, v in by)}
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
                "gap_closure_vs_lambda0": {arm: {"per_seed": {str(s): g for s, g in d.items()},
                                                 **({"ci": ci95([g for g in d.values() if g == g])}
                                                    if sum(g == g for g in d.values()) > 1 else {})}
                                           for arm, d in closure.items()},
                "tc_noc_above_smoothing_curve": {n: {str(s): v for s, v in d.items()} for n, d in above.items()}}
