"""The whole pipeline: dataset -> flow shards -> teacher -> (sweep) -> baseline and ETC student -> evaluation.

Each stage is skipped when its output for the same config already exists: the shards manifest (the flow stage
checks it), or a registered model version tagged with the stage's config hash. `force` names stages to redo.
A pipeline killed between stages (or in one) reruns only what is missing; two at once on the same SQLite store
take turns (etc_core.locks).
One MLflow parent run (tag etc.stage=pipeline) holds a child run per stage that ran.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from etc_core.config import EtcConfig, apply_values, flatten
from etc_core.metrics import METRICS
from etc_core.tracking import mlflow as tracking
from etc_core.tracking.registry import Registered

log = logging.getLogger(__name__)

STAGES = ("flow", "teacher", "sweep", "baseline", "student", "evaluate")


@dataclass
class PipelineResult:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    models: dict[str, Registered] = field(default_factory=dict)
    table: str = ""
    evaluation: dict = field(default_factory=dict)
    flow_timing: dict | None = None
    parent_run_id: str = ""


@contextmanager
def _stage(name: str, what: str) -> Iterator[None]:
    """One console line when a stage starts and one when it ends (or fails), with its duration."""
    log.info("== %s: %s", name, what)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        log.info("== %s: failed after %.0f s", name, time.perf_counter() - start)
        raise
    log.info("== %s: finished in %.0f s", name, time.perf_counter() - start)


def training_stages(cfg: EtcConfig) -> tuple[str, ...]:
    """The training stages a pipeline run of cfg can start (for the resource check before any work)."""
    baseline = cfg.pipeline.baseline or cfg.student.init_from == "baseline"
    return ("teacher", *(["baseline"] if baseline else []), "student")


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
    from etc_core.flow.stage import run_flow_stage

    result = PipelineResult()
    with tracking.stage_run(cfg.mlflow, "pipeline", run_name="pipeline", params=flatten(cfg)) as parent:
        result.parent_run_id = parent.info.run_id
        with _stage("dataset", f"{cfg.data.kind} at {cfg.data.root}"):
            dataset = open_dataset(cfg.data, generate=True)
        with _stage("flow", f"{cfg.flow.source} flow into shards at {cfg.shards.uri}"), \
                tracking.stage_run(cfg.mlflow, "flow", params={"flow.source": cfg.flow.source}):
            flow = run_flow_stage(cfg, dataset, force="flow" in force)
            tracking.log_metrics({"flow/pairs_per_s": flow.pairs_per_s, "flow/shards_written": flow.shards_written,
                                  "flow/shards_skipped": flow.shards_skipped})
        (result.ran if flow.shards_written else result.skipped).append("flow")
        if cfg.pipeline.ptlflow_timing_pairs and cfg.flow.source != "ptlflow":
            result.flow_timing = _flow_timing(cfg)

        teacher = _train(cfg, "teacher", "teacher" in force, parent.info.run_id, result)
        cfg = apply_values(cfg, {"student.teacher_uri": teacher.model_uri})  # the teacher this run trained or reused
        if cfg.student.init_from == "baseline":  # the warm start: sweep and student fine-tune this run's baseline
            baseline = _train(cfg, "baseline", "baseline" in force, parent.info.run_id, result)
            cfg = apply_values(cfg, {"student.init_from": baseline.model_uri})
        if cfg.pipeline.sweep:  # a finished sweep of the same config is restored, not rerun
            cfg = _sweep(cfg, parent.info.run_id, result, force="sweep" in force)
        if cfg.pipeline.baseline and "baseline" not in result.models:
            _train(cfg, "baseline", "baseline" in force, parent.info.run_id, result)
        _train(cfg, "student", "student" in force, parent.info.run_id, result)

        with _stage("evaluate", "mIoU, TC, TC-noc, flicker and speed of every model on the test shards"), \
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
    from etc_core.train.run import find_registered, run_training

    found = None if force else find_registered(cfg, stage)
    if found is not None:
        log.info("%s: reusing %s version %s (same config)", stage, found.name, found.version)
        result.skipped.append(stage)
        result.models[stage] = found
        return found
    from etc_core.train.config import stage_config, stage_spec

    train = stage_config(cfg, stage).train
    with _stage(stage, f"training {stage_spec(cfg, stage).arch} for {train.max_steps} steps on "
                       f"{train.workers} Ray Train worker(s)"):
        summary = run_training(cfg, stage, parent_run_id=parent_run_id, force=force)
    result.ran.append(stage)
    result.models[stage] = summary["registered"]
    return summary["registered"]


def _sweep(cfg: EtcConfig, parent_run_id: str, result: PipelineResult, force: bool = False) -> EtcConfig:
    """Run (or resume; with force, redo) the loss-weight sweep; continue with its best trial's config (best.yaml)."""
    from etc_core.config import load_config
    from etc_core.sweep.run import run_sweep

    with _stage("sweep", f"{cfg.sweep.num_samples} trials over {', '.join(cfg.sweep.space)}"):
        summary = run_sweep(cfg, parent_run_id=parent_run_id, force=force)
    result.ran.append("sweep")
    return load_config(summary["best_yaml"])


def _flow_timing(cfg: EtcConfig) -> dict:
    from etc_core.flow.timing import time_flow_model

    with tracking.stage_run(cfg.mlflow, "flow-timing", params={"flow.model": cfg.flow.model}):
        timing = time_flow_model(apply_values(cfg, {"flow.weights": "none"}), cfg.pipeline.ptlflow_timing_pairs)
        tracking.log_metrics({"flow_timing/pairs_per_s": timing["pairs_per_s"],
                              "flow_timing/epe_vs_shards": timing["epe_vs_shards"]})
    log.info("ptlflow %s (random init): %.1f pairs/s on %d pairs, EPE %.2f px vs the shards' flow",
             timing["model"], timing["pairs_per_s"], timing["pairs"], timing["epe_vs_shards"])
    return timing


def eval_split(manifest: dict) -> str:
    """The split tables report on: `test` when the shards have one (checkpoints were chosen on val), else `val`."""
    return "test" if manifest.get("splits", {}).get("test", {}).get("samples") else "val"


def _evaluate(cfg: EtcConfig, models: dict[str, Registered]) -> tuple[dict, str]:
    """mIoU, TC, tc_noc, flicker and FPS of every model of this run on the test shards (val when there is no test
    split), with the reference rows: one table."""
    from etc_core.infer.evaluate import evaluate_models, format_table
    from etc_core.infer.load import pick_device
    from etc_core.tracking.registry import load_model

    loaded = []
    for stage in ("teacher", "baseline", "student"):
        if stage in models:
            model, meta = load_model(models[stage].model_uri)
            loaded.append((f"{stage}:{models[stage].name}/{models[stage].version}", model, meta))
    from etc_core.train.run import read_manifest

    evaluation = evaluate_models(loaded, shards=cfg.shards.uri, split=eval_split(read_manifest(cfg)),
                                 device=pick_device("auto"), batch_size=cfg.pipeline.eval_batch_size,
                                 s3=cfg.s3.access)
    return evaluation, format_table(evaluation)
