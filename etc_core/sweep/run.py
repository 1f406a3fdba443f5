"""Driver side of a sweep: one Ray Tune trial per sampled config, each fitting the student with Ray Train (the shared
loop), then the Pareto front, MLflow (parent + one child per trial, pictures) and the best trial's config file. With
a tracking server each trial logs to its child run live (etc_core/tracking/sweep_runs.py).

    summary = run_sweep(cfg)   # Ray already up (etc_core.ray_utils.init_ray)

Rerunning the same config resumes an interrupted sweep with Tuner.restore from
<train.storage_path>/sweep-<hash>; trials that finished are not run again.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback
from ray.tune.integration.ray_train import TuneReportCallback

from etc_core.config import EtcConfig
from etc_core.errors import EtcError
from etc_core.extras import require
from etc_core.section import config_hash, flatten
from etc_core.sweep.space import apply_values, check_space, may_need_teacher, pareto_front, tune_space
from etc_core.tracking import mlflow as tracking
from etc_core.tracking import sweep_runs
from etc_core.train.config import stage_config, trial_resources
from etc_core.train.run import (example_shape, make_trainer, read_manifest, read_pretrained, resolve_init,
                                resolve_teacher)

log = logging.getLogger(__name__)

METRICS = ("val_miou", "val_tc", "val_score")


class SweepError(EtcError):
    """The sweep stopped before every trial finished (interrupted), or no trial produced a usable result."""


def release_orphaned_placement_groups() -> int:
    """Remove this job's placement groups whose creating actor is dead; return how many.

    A trial that ASHA stops is killed with its Ray Train controller. Train's own PlacementGroupCleaner then frees
    the workers' placement group, but it finds the cluster through the state API, which fails when several Ray
    instances run on one host ("Found multiple active Ray instances"), and the next trial waits for CPUs forever.
    Which actor created a group is in the GCS table only (ray.util.placement_group_table and ray.util.state leave
    it out), so this reads Ray's private one; tests/unit/test_sweep_space.py and tests/integration/test_sweep.py
    fail when its names change.
    """
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    job = ray.get_runtime_context().get_job_id()
    removed = 0
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
        by_dead_actor = pg.creator_actor_dead and not ray.ActorID(pg.creator_actor_id).is_nil()  # not the driver's
        if (pg.state == gcs_pb2.PlacementGroupTableData.CREATED and by_dead_actor and not pg.is_detached
                and pg.creator_job_id.hex() == job):
            try:
                remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
                removed += 1
            except Exception as e:  # already removed by Train's cleaner meanwhile
                log.debug("placement group %s: %s", pg.placement_group_id.hex(), e)
    if removed:
        log.info("released %d placement group(s) of stopped trials", removed)
    return removed


class ReleaseStoppedTrials(Callback):
    """Tune callback: every few seconds, free the workers of trials that were stopped (see above)."""

    def __init__(self, every_s: float = 2.0):
        self.every_s = every_s
        self._last = 0.0

    def on_step_begin(self, iteration: int, trials: list, **info):
        if time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            release_orphaned_placement_groups()


@dataclass(frozen=True)
class Trial:
    """One finished trial: its sampled values, full config and per-epoch reports (step, val_*, train_*, ...)."""

    trial_id: str
    values: dict[str, Any]
    config: EtcConfig
    history: list[dict] = field(default_factory=list)
    error: str | None = None

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}

    def value(self, metric: str) -> float:
        v = self.final.get(metric, math.nan)
        return float(v) if isinstance(v, (int, float)) else math.nan

    @property
    def point(self) -> tuple[float, float]:
        """(val mIoU, val TC) of the last report."""
        return self.value("val_miou"), self.value("val_tc")


def sweep_name(cfg: EtcConfig) -> str:
    """`sweep-<hash>` of everything that decides the trials; the same config resumes the same sweep."""
    cfg = stage_config(cfg, "student")  # the trials train the student: train.* with student.train applied
    sweep = cfg.sweep.model_copy(update={"register_best": False})
    return "sweep-" + config_hash(cfg.data, cfg.shards, cfg.train, cfg.student, sweep)


def train_trial(values: dict, base: dict, num_classes: int, teacher, storage_path: str, init=None,
                backbone=None, live_parent: str | None = None, size: tuple[int, int] | None = None) -> None:
    """One Tune trial: the base config with the trial's values, trained as a student by Ray Train. live_parent: the
    sweep's parent run on a tracking server; the trial opens its child run under it and its rank-0 worker logs there
    as it trains (None: the driver logs the trial after the sweep); size: the frame size its rank 0 times the model
    at, for the best trial's model card."""
    import ray
    from ray import tune

    cfg = apply_values(EtcConfig.model_validate(base), values)
    trial_id = tune.get_context().get_trial_id()
    run_id = None
    if live_parent:
        params = {k: v for k, v in flatten(cfg).items() if not k.startswith("sweep.")}
        run_id = sweep_runs.trial_run(cfg.mlflow, live_parent, trial_id, params, cfg.s3.access)
    teacher_ref = ray.put(teacher) if teacher is not None and cfg.student.loss.needs_teacher else None
    trainer = make_trainer(cfg, "student", num_classes, teacher_ref, run_id=run_id, name=trial_id,
                           storage_path=storage_path,
                           callbacks=[TuneReportCallback()],  # rank 0's reports, val_score included, to Tune
                           init=ray.put(init) if init is not None else None,
                           backbone=ray.put(backbone) if backbone is not None else None,
                           score_tc_weight=cfg.sweep.score_tc_weight, size=size)
    try:
        trainer.fit()
    except Exception:
        if run_id:
            sweep_runs.end_trial(cfg.mlflow, run_id, ok=False, s3=cfg.s3.access)
        raise
    if run_id:  # (a trial ASHA stops may end before this: the driver ends its run after the sweep)
        sweep_runs.end_trial(cfg.mlflow, run_id, ok=True, s3=cfg.s3.access)


def expected_trials(cfg: EtcConfig) -> int:
    """num_samples, times the size of every grid entry."""
    n = cfg.sweep.num_samples
    for spec in cfg.sweep.space.values():
        if spec.type == "grid":
            n *= len(spec.values)
    return n


def _concurrency(cfg: EtcConfig) -> int:
    """Trials at once: each holds cpus_per_trial while its Ray Train workers wait for theirs, so more deadlock."""
    import ray

    per_trial = trial_resources(cfg)["CPU"]  # the same request etc_core/cluster_check.py checks
    cpus = ray.cluster_resources().get("CPU", 1)
    fits = max(1, int(cpus // per_trial) if per_trial else int(cpus))
    if cfg.sweep.max_concurrent_trials is None:
        return fits
    if cfg.sweep.max_concurrent_trials > fits:
        log.warning("sweep.max_concurrent_trials=%d: only %d trials of %.1f CPUs fit this cluster; trials may wait "
                    "for CPUs their siblings hold", cfg.sweep.max_concurrent_trials, fits, per_trial)
    return cfg.sweep.max_concurrent_trials


def _searcher(cfg: EtcConfig):
    if cfg.sweep.search == "optuna":
        require("optuna", "sweep.search=optuna")  # Ray's OptunaSearch imports it lazily and asserts
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=cfg.sweep.seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # TuneConfig.max_concurrent_trials is ignored for a given BasicVariantGenerator: pass it here
    return BasicVariantGenerator(random_state=cfg.sweep.seed, max_concurrent=_concurrency(cfg))


def _scheduler(cfg: EtcConfig):
    if cfg.sweep.scheduler == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    epochs = math.ceil(cfg.train.max_steps / cfg.train.steps_per_epoch)  # one Tune iteration per epoch
    return ASHAScheduler(max_t=epochs, grace_period=min(cfg.sweep.grace_period, epochs),
                         reduction_factor=cfg.sweep.reduction_factor)


def make_tuner(cfg: EtcConfig, trainable, name: str):
    """(Tuner, restored): Tuner.restore when <storage_path>/<name> holds an experiment, else a new one."""
    from ray import tune

    from etc_core.storage.uri import storage_location

    root, filesystem = storage_location(cfg.train.storage_path, cfg.s3.access)  # s3: at s3.endpoint_url
    path = f"{root.rstrip('/')}/{name}"
    if tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        log.info("resuming sweep %s from %s/%s", name, cfg.train.storage_path.rstrip("/"), name)
        return tune.Tuner.restore(path, trainable=trainable, storage_filesystem=filesystem), True
    sweep = cfg.sweep
    tuner = tune.Tuner(
        trainable, param_space=tune_space(sweep),
        tune_config=tune.TuneConfig(metric=sweep.metric, mode="max", num_samples=sweep.num_samples,
                                    search_alg=_searcher(cfg), scheduler=_scheduler(cfg),
                                    max_concurrent_trials=_concurrency(cfg)),
        run_config=tune.RunConfig(name=name, storage_path=root, storage_filesystem=filesystem,
                                  verbose=1, callbacks=[ReleaseStoppedTrials()]))  # verbose 1: table every 30 s
    return tuner, False


def collect(grid, cfg: EtcConfig) -> list[Trial]:
    """Trials of a finished ResultGrid, ordered by trial id."""
    trials = []
    for result in grid:
        frame = result.metrics_dataframe
        history = [] if frame is None else [{k: v for k, v in row.items() if _kept(v)}
                                            for row in frame.to_dict("records")]
        values = {k: v for k, v in (result.config or {}).items() if k in cfg.sweep.space}
        trial_id = (result.metrics or {}).get("trial_id") or os.path.basename(str(result.path))
        error = None if result.error is None else (str(result.error).strip().splitlines() or [""])[-1]
        trials.append(Trial(trial_id, values, apply_values(cfg, values), history, error))
    return sorted(trials, key=lambda t: t.trial_id)


def _kept(v) -> bool:
    return isinstance(v, (numbers.Number, str))


def run_sweep(cfg: EtcConfig, parent_run_id: str | None = None, force: bool = False) -> dict:
    """Run (or resume) the sweep in cfg.sweep, log it to MLflow (under parent_run_id, if any), write the best
    config; return a summary. `force` starts a fresh sweep even when this config's sweep exists."""
    from ray import tune

    from etc_core.sweep.report import log_sweep

    check_space(cfg)
    name = sweep_name(cfg) + (time.strftime("-%Y%m%d-%H%M%S") if force else "")
    cfg = stage_config(cfg, "student")  # every trial trains the student
    manifest = read_manifest(cfg)
    num_classes = int(manifest["num_classes"])
    experiment = tracking.setup(cfg.mlflow, cfg.s3.access)  # before resolving models:/ URIs
    teacher = resolve_teacher(cfg, "student", may_need_teacher(cfg))
    init = resolve_init(cfg, "student", num_classes)  # every trial fine-tunes from the same weights
    backbone = read_pretrained(cfg, "student", init)  # read once here: trials and their workers get the object
    earlier = sweep_runs.find_sweep(cfg.mlflow, experiment, name, cfg.s3.access)  # this sweep started before
    with tracking.stage_run(cfg.mlflow, "sweep", run_name=name, params=flatten(cfg), parent_run_id=parent_run_id,
                            tags={"etc.sweep": name, "etc.sweep.metric": cfg.sweep.metric}, s3=cfg.s3.access,
                            run_id=earlier) as parent:
        live = parent.info.run_id if sweep_runs.live(cfg.mlflow) else None
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, base=cfg.model_dump(mode="json"), num_classes=num_classes,
                                 teacher=teacher, storage_path=f"{cfg.train.storage_path.rstrip('/')}/{name}-train",
                                 init=init, backbone=backbone, live_parent=live, size=example_shape(manifest)),
            # Tune refuses a trial that asks for nothing; one byte of memory asks for no CPU (the trial's Ray Train
            # workers take theirs outside the trial's placement group)
            {"cpu": cfg.sweep.cpus_per_trial} if cfg.sweep.cpus_per_trial else {"cpu": 0, "memory": 1})
        tuner, restored = make_tuner(cfg, trainable, name)
        log.info("sweep %s: MLflow run %s%s", name, parent.info.run_id,
                 ", each trial logging to its child run as it trains" if live else
                 " (a node-local store takes one writer: the trials are logged after the sweep)")
        grid = tuner.fit()
        want = expected_trials(cfg)
        done = grid.num_terminated + grid.num_errors
        if done < want:
            raise SweepError(f"sweep {name}: {done} of {want} trials finished; rerun the same command to resume "
                             f"from {cfg.train.storage_path}/{name}")
        trials = collect(grid, cfg)
        ok = [t for t in trials if t.error is None and math.isfinite(t.value(cfg.sweep.metric))]
        if not ok:
            first = next((t.error for t in trials if t.error), "no finite metric")
            raise SweepError(f"sweep {name}: no trial reported a finite {cfg.sweep.metric} ({first})")
        for t in trials:
            if t.error:
                log.warning("trial %s failed: %s", t.trial_id, t.error)
        best = max(ok, key=lambda t: t.value(cfg.sweep.metric))
        front = [trials[i].trial_id for i in pareto_front([t.point for t in trials])]
        logged = log_sweep(cfg, name, trials, best, front, num_classes, manifest, parent.info.run_id)
    log.info("sweep %s: best trial %s %s %.2f (%s); Pareto front %s", name, best.trial_id, cfg.sweep.metric,
             best.value(cfg.sweep.metric), best.values, front)
    return {"name": name, "path": f"{cfg.train.storage_path}/{name}", "restored": restored, "trials": trials,
            "best": best, "front": front, **logged}
