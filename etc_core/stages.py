"""One driver per stage: what pipelines/*.py, pipelines/full.py's sequence (etc_core/pipeline.py) and the benchmarks
call to run a stage. Each announces itself on the console (`== <stage>: ...` when it starts, when it ends), opens its
MLflow stage run (nested under the active run or parent_run_id) and logs what the stage logs, once. Ray must be up.

    flow_stage(cfg, dataset=None, force=False, verify=False) -> FlowStageResult   pipelines/precompute_flow.py
    flow_timing_stage(cfg) -> dict | None                                        (full.py only)
    train_stage(cfg, stage, force=False, parent_run_id=None) -> TrainResult       pipelines/train_teacher.py,
                                                                                 train_baseline.py, train_student.py,
                                                                                 benchmarks
    with_baseline(cfg, parent_run_id=None) -> EtcConfig                           train_student.py, sweep.py
    sweep_stage(cfg, parent_run_id=None, force=False) -> dict                     pipelines/sweep.py

The stages' work is in their packages: etc_core/flow/stage.py (run_flow_stage), etc_core/flow/timing.py,
etc_core/train/run.py (run_training, find_registered), etc_core/sweep/run.py (run_sweep).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from etc_core.config import EtcConfig, apply_values, flatten
from etc_core.tracking import mlflow as tracking
from etc_core.tracking.registry import Registered

if TYPE_CHECKING:
    from etc_core.flow.sources import FlowSource
    from etc_core.flow.stage import FlowStageResult

log = logging.getLogger(__name__)


@contextmanager
def announce(name: str, what: str) -> Iterator[None]:
    """One console line when a stage starts and one when it ends (or fails), with its duration."""
    log.info("== %s: %s", name, what)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        log.info("== %s: failed after %.0f s", name, time.perf_counter() - start)
        raise
    log.info("== %s: finished in %.0f s", name, time.perf_counter() - start)


def flow_stage(cfg: EtcConfig, dataset=None, force: bool = False, verify: bool = False,
               progress: bool = True) -> FlowStageResult:
    """The flow stage in its MLflow run (etc.stage=flow, every config value as a param): write the shards
    (etc_core/flow/stage.py, run_flow_stage: complete shards skipped, `force` deletes the set first, `verify` reads
    every existing shard in full), then log the shard counts, the speeds and one training pair's picture.
    dataset: the opened reader (default: opened here, generated when missing)."""
    from etc_core.flow.sources import create_flow_source
    from etc_core.flow.stage import run_flow_stage

    if dataset is None:
        from etc_core.data.registry import open_dataset

        dataset = open_dataset(cfg.data, generate=True)  # synthetic: generated (on Ray) when missing
    source = create_flow_source(cfg.flow)  # once for the whole stage run
    with announce("flow", f"{cfg.flow.source} flow into shards at {cfg.shards.uri}"), \
            tracking.stage_run(cfg.mlflow, "flow", params=flatten(cfg), s3=cfg.s3.access):
        result = run_flow_stage(cfg, dataset, progress=progress, force=force, verify=verify, source=source)
        tracking.log_metrics(result.metrics())
        tracking.log_image(_pair_picture(cfg, dataset, source), "flow/pair")
    return result


def _pair_picture(cfg: EtcConfig, dataset, source: FlowSource):
    """The first training pair of the shards as pair_picture draws it; with exact flow, its validity mask too."""
    from etc_core.data import shards
    from etc_core.flow.stage import pair_picture

    sample = next(shards.iter_samples(cfg.shards.uri, "train", cfg.s3.access))
    meta = sample["meta"]
    valid = dataset.pair_flow("train", meta["video"], meta["t"], meta["k"])[1] if source.exact else None
    return pair_picture(sample["img0"], sample["img1"], sample["flow"], valid)


def flow_timing_stage(cfg: EtcConfig) -> dict | None:
    """pipeline.ptlflow_timing_pairs: time a ptlflow model (random init) on val pairs of shards of exact flow, in its
    MLflow run (etc.stage=flow-timing); None when there is nothing to time (etc_core/flow/timing.py, timed_flow)."""
    from etc_core.flow.timing import time_flow_model, timed_flow

    flow = timed_flow(cfg)
    if flow is None:
        return None
    with tracking.stage_run(cfg.mlflow, "flow-timing", params={"flow.model": flow.model}, s3=cfg.s3.access):
        timing = time_flow_model(cfg.model_copy(update={"flow": flow}), cfg.pipeline.ptlflow_timing_pairs)
        tracking.log_metrics({"flow_timing/pairs_per_s": timing["pairs_per_s"],
                              "flow_timing/epe_vs_shards": timing["epe_vs_shards"]})
    log.info("ptlflow %s (random init): %.1f pairs/s on %d pairs, EPE %.2f px vs the shards' flow",
             timing["model"], timing["pairs_per_s"], timing["pairs"], timing["epe_vs_shards"])
    return timing


@dataclass(frozen=True)
class TrainResult:
    registered: Registered  # the model version of this stage's exact config
    summary: dict | None = None  # run_training's summary (step, val_miou, val_tc, run_id, ...); None when reused
    seconds: float = 0.0  # training wall time; 0 when reused

    @property
    def reused(self) -> bool:
        return self.summary is None


def train_stage(cfg: EtcConfig, stage: str, force: bool = False, parent_run_id: str | None = None) -> TrainResult:
    """A training stage (teacher | baseline | student): the newest registered version trained from this stage's
    exact config (tag etc.config_hash) is reused; otherwise (or with `force`) run_training trains it on Ray Train in
    its MLflow run (resuming an interrupted run of the same config) and registers it."""
    from etc_core.train.config import stage_config, stage_spec
    from etc_core.train.run import find_registered, run_training

    found = None if force else find_registered(cfg, stage)
    if found is not None:
        log.info("%s: reusing %s version %s (same config)", stage, found.name, found.version)
        return TrainResult(found)
    train = stage_config(cfg, stage).train
    start = time.perf_counter()
    with announce(stage, f"training {stage_spec(cfg, stage).arch} for {train.max_steps} steps on "
                         f"{train.workers} Ray Train worker(s)"):
        summary = run_training(cfg, stage, parent_run_id=parent_run_id, force=force)
    return TrainResult(summary["registered"], summary, time.perf_counter() - start)


def with_baseline(cfg: EtcConfig, parent_run_id: str | None = None) -> EtcConfig:
    """cfg with `student.init_from: baseline` replaced by the URI of the per-frame baseline registered from this
    config (the baseline stage's cache key, tag etc.config_hash), trained first when there is none; one log line
    says which. cfg itself when student.init_from is anything else. The baseline of pipelines/full.py on the same
    config is the same model."""
    if cfg.student.init_from != "baseline":
        return cfg
    trained = train_stage(cfg, "baseline", parent_run_id=parent_run_id)
    reg = trained.registered
    how = "registered from this config before: reused" if trained.reused else "none from this config: trained now"
    log.info("student.init_from=baseline: %s (%s)", reg.model_uri, how)
    return apply_values(cfg, {"student.init_from": reg.model_uri})


def sweep_stage(cfg: EtcConfig, parent_run_id: str | None = None, force: bool = False) -> dict:
    """The loss-weight sweep (etc_core/sweep/run.py, run_sweep): a finished sweep of the same config is restored,
    an interrupted one resumed, `force` starts a fresh one. Returns run_sweep's summary (best_yaml among it)."""
    from etc_core.sweep.run import run_sweep

    with announce("sweep", f"{cfg.sweep.num_samples} trials over {', '.join(cfg.sweep.space)}"):
        return run_sweep(cfg, parent_run_id=parent_run_id, force=force)
