"""The whole pipeline: dataset -> flow shards -> teacher -> (sweep) -> baseline, ETC student (and its equal-step
control) -> evaluation.

Each stage is skipped when its output for the same config already exists: the shards manifest (the flow stage
checks it), or a registered model version tagged with the stage's config hash. `force` names stages to redo.
A pipeline killed between stages (or in one) reruns only what is missing; two at once on the same SQLite store
take turns (etc_core.locks).
One MLflow parent run (tag etc.stage=pipeline) holds a child run per stage that ran. Each stage runs through its
driver in etc_core/stages.py, the same one its own entry point (pipelines/*.py) and the benchmarks call.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

from etc_core.config import EtcConfig, apply_values, flatten, load_config
from etc_core.metrics import METRICS
from etc_core.stages import announce, flow_stage, flow_timing_stage, sweep_stage, train_stage
from etc_core.tracking import mlflow as tracking
from etc_core.tracking.registry import Registered

log = logging.getLogger(__name__)

STAGES = ("flow", "teacher", "sweep", "baseline", "student", "control", "evaluate")
MODELS = ("teacher", "baseline", "student", "control")  # the training stages, in the evaluation table's order


@dataclass
class PipelineResult:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    models: dict[str, Registered] = field(default_factory=dict)
    table: str = ""
    evaluation: dict = field(default_factory=dict)
    flow_timing: dict | None = None
    parent_run_id: str = ""


def training_stages(cfg: EtcConfig) -> tuple[str, ...]:
    """The training stages a pipeline run of cfg can start (for the resource check before any work)."""
    baseline = cfg.pipeline.baseline or cfg.student.init_from == "baseline"
    return ("teacher", *(["baseline"] if baseline else []), "student", *(["control"] if cfg.pipeline.control else []))


def run_pipeline(cfg: EtcConfig, force: tuple[str, ...] = ()) -> PipelineResult:
    """Run every stage for cfg (Ray must be up); returns what ran, what was reused and the evaluation table.

    Holds the SQLite MLflow store's lock throughout (and the flow stage the shard prefix's): a second pipeline on
    the same store waits up to pipeline.lock_wait_s, then reuses what this one finished.
    """
    from etc_core import locks

    with locks.hold(locks.store_lock(cfg.mlflow.tracking_uri), cfg.pipeline.lock_wait_s):
        return _run_stages(cfg, force)


def _run_stages(cfg: EtcConfig, force: tuple[str, ...]) -> PipelineResult:
    from etc_core.data.registry import open_dataset

    result = PipelineResult()
    with tracking.stage_run(cfg.mlflow, "pipeline", run_name="pipeline", params=flatten(cfg),
                            s3=cfg.s3.access) as parent:
        result.parent_run_id = parent.info.run_id
        with announce("dataset", f"{cfg.data.kind} at {cfg.data.root}"):
            dataset = open_dataset(cfg.data, generate=True)
        flow = flow_stage(cfg, dataset, force="flow" in force)
        (result.ran if flow.shards_written else result.skipped).append("flow")
        result.flow_timing = flow_timing_stage(cfg)  # None unless asked for beside exact flow

        teacher = _train(cfg, "teacher", "teacher" in force, parent.info.run_id, result)
        cfg = apply_values(cfg, {"student.teacher_uri": teacher.model_uri})  # the teacher this run trained or reused
        if cfg.student.init_from == "baseline":  # the warm start: sweep and student fine-tune this run's baseline
            baseline = _train(cfg, "baseline", "baseline" in force, parent.info.run_id, result)
            cfg = apply_values(cfg, {"student.init_from": baseline.model_uri})
        if cfg.pipeline.sweep:  # a finished sweep of the same config is restored, not rerun; go on with its best
            cfg = load_config(sweep_stage(cfg, parent.info.run_id, force="sweep" in force)["best_yaml"])
            result.ran.append("sweep")
        if cfg.pipeline.baseline and "baseline" not in result.models:
            _train(cfg, "baseline", "baseline" in force, parent.info.run_id, result)
        _train(cfg, "student", "student" in force, parent.info.run_id, result)
        if cfg.pipeline.control:  # after the sweep: the chosen student's init and steps, without the ETC terms
            _train(cfg, "control", "control" in force, parent.info.run_id, result)

        with announce("evaluate", "mIoU, TC, TC-noc, flicker, mVC and speed of every model on the test shards"), \
                tracking.stage_run(cfg.mlflow, "evaluate"):
            result.evaluation, result.table = _evaluate(cfg, result.models)
            for row in result.evaluation["rows"]:
                tracking.log_metrics({f"eval/{row['model']}/{k}": row[k] for k in (*METRICS, "fps")
                                      if row[k] is not None})
            tracking.log_text(result.table, "evaluation.txt")
        result.ran.append("evaluate")
        tracking.set_tags({"etc.ran": ",".join(result.ran), "etc.skipped": ",".join(result.skipped)})
    return result


def _train(cfg: EtcConfig, stage: str, force: bool, parent_run_id: str, result: PipelineResult) -> Registered:
    """The stage's model, reused (same config, not forced) or trained; noted in result."""
    trained = train_stage(cfg, stage, force=force, parent_run_id=parent_run_id)
    (result.skipped if trained.reused else result.ran).append(stage)
    result.models[stage] = trained.registered
    return trained.registered


def eval_split(manifest: dict) -> str:
    """The split tables report on: `test` when the shards have one (checkpoints were chosen on val), else `val`."""
    return "test" if manifest.get("splits", {}).get("test", {}).get("samples") else "val"


def _evaluate(cfg: EtcConfig, models: dict[str, Registered]) -> tuple[dict, str]:
    """mIoU, TC, tc_noc, flicker, mVC and FPS of every model of this run on the test shards (val when there is no test
    split), with the reference rows: one table. Each model is scored by a Ray task of its own (on a GPU when the
    cluster has one: etc_core/ray_utils.py, on_worker), with a progress bar on a console (a log line elsewhere)."""
    from etc_core.infer.evaluate import format_table
    from etc_core.ray_utils import on_worker
    from etc_core.train.run import read_manifest

    split = eval_split(read_manifest(cfg))
    bars = sys.stdout.isatty()  # redrawn in place on a console; in a log (ray job logs, a file) one line per model
    parts = []
    for i, stage in enumerate(s for s in MODELS if s in models):
        label, start = f"{stage}:{models[stage].name}/{models[stage].version}", time.monotonic()
        parts.append(on_worker(_evaluate_one, cfg, label, models[stage].model_uri, split, references=not i,
                               progress=bars))
        if not bars:
            log.info("evaluate: %s scored in %.0f s", label, time.monotonic() - start)
    evaluation = {"source": parts[0]["source"], "rows": [row for part in parts for row in part["rows"]]}
    evaluation["rows"].sort(key=lambda row: row["arch"] == "reference")  # the models, then the references
    warm = "baseline" in models and cfg.student.init_from == models["baseline"].model_uri
    evaluation["comparisons"] = comparisons(evaluation["rows"], warm)
    return evaluation, "\n".join([format_table(evaluation), *(c["line"] for c in evaluation["comparisons"])])


def comparisons(rows: list[dict], warm: bool) -> list[dict]:
    """The student against its equal-step control first (what isolates the ETC terms), then against the baseline it
    started from (`warm`: the student fine-tuned it, so it trained the student's steps more: secondary); each
    {"name", "delta": {metric: student - other}, "line"} for the pairs present. One seed on the test clips: a
    difference, not a confidence interval."""
    by = {row["model"].split(":")[0]: row for row in rows if row["arch"] != "reference"}
    pairs = [("control", "equal steps (the same init and steps without the ETC terms)"),
             ("baseline", "secondary, unequal steps (the student trained its steps on top of this baseline)" if warm
              else "the per-frame baseline (its own steps)")]
    out = []
    for other, what in pairs:
        if "student" not in by or other not in by:
            continue
        delta = {k: by["student"][k] - by[other][k] for k in ("miou", "tc_noc", "mvc8")
                 if by["student"].get(k) is not None and by[other].get(k) is not None}
        shown = ", ".join(f"{label} {delta[k]:+.2f}" for k, label in (("tc_noc", "TC-noc"), ("mvc8", "mVC8"),
                                                                       ("miou", "mIoU")) if k in delta)
        out.append({"name": f"student - {other}", "delta": delta, "line": f"student - {other}: {shown}   [{what}]"})
    return out


def _evaluate_one(cfg: EtcConfig, label: str, model_uri: str, split: str, references: bool, progress: bool) -> dict:
    """One model's rows on the shards (and the reference rows when asked), in whichever process runs it."""
    from etc_core.infer.evaluate import evaluate_models
    from etc_core.infer.load import pick_device
    from etc_core.tracking.registry import load_model

    tracking.setup(cfg.mlflow, cfg.s3.access)
    model, meta = load_model(model_uri)
    return evaluate_models([(label, model, meta)], shards=cfg.shards.uri, split=split, device=pick_device("auto"),
                           batch_size=cfg.pipeline.eval_batch_size, s3=cfg.s3.access, references=references,
                           progress=label if progress else None)
