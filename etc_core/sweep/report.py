"""After a sweep, into its MLflow parent run (tagged etc.stage=sweep, opened by etc_core/sweep/run.py before the
trials): one child run per trial, pictures of the mIoU-TC trade-off and of the objective against each swept value,
the best trial's config as YAML, and optionally the best trial's model in the registry.

With a tracking server each trial opened its child run and logged to it as it trained (etc_core/tracking/
sweep_runs.py): here it gets its final tags. With a node-local store the trials logged nothing (one writer per SQLite
store: concurrent writers would race on its schema) and their histories are logged here.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from etc_core.section import flatten
from etc_core.tracking import mlflow as tracking
from etc_core.train.checkpoint import load_checkpoint
from etc_core.train.run import best_metrics, register_state

if TYPE_CHECKING:  # only named as a type here
    from etc_core.config import EtcConfig

log = logging.getLogger(__name__)

BEST_YAML = "best.yaml"


def metric_name(key: str) -> str:
    """A trial report's key as the MLflow metric name the training stage uses (`val_miou` -> `val/miou`)."""
    if key.startswith("val_"):
        return f"val/{key[4:]}"
    if key.startswith("train_"):
        return f"train/loss_{key[6:]}"
    return f"train/{key}"


_REPORTED = ("val_", "train_", "samples_per_s")


def write_best_yaml(trial, name: str, path: Path) -> Path:
    """Write the trial's full config to `path` (atomically) so train_student.py --config path reproduces it."""
    header = (f"# best trial {trial.trial_id} of {name}: {json.dumps(trial.values)}\n"
              f"# reproduce: python pipelines/train_student.py --config {path}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(header + yaml.safe_dump(trial.config.model_dump(mode="json"), sort_keys=False))
    os.replace(tmp, path)
    return path


def best_yaml_path(cfg: EtcConfig, name: str) -> Path:
    """<train.storage_path>/<name>-best.yaml for local storage, else runs/sweeps/<name>-best.yaml."""
    root = cfg.train.storage_path
    base = Path(root) if "://" not in root else Path("runs/sweeps").resolve()
    return base / f"{name}-{BEST_YAML}"


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def pareto_figure(trials, front: list[str], best_id: str):
    """mIoU (x) against TC (y), every trial a dot, the Pareto front joined in red, the best trial starred."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    points = {t.trial_id: t.point for t in trials if all(math.isfinite(v) for v in t.point)}
    ax.scatter([p[0] for p in points.values()], [p[1] for p in points.values()], c="0.6", label="trial")
    on_front = [points[i] for i in front if i in points]
    if on_front:
        ax.plot([p[0] for p in on_front], [p[1] for p in on_front], "o-", c="tab:red", label="Pareto front")
    if best_id in points:
        ax.scatter(*points[best_id], marker="*", s=250, c="gold", edgecolors="k", zorder=3, label="best")
    for trial_id, (x, y) in points.items():
        ax.annotate(trial_id[-5:], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel="val mIoU", ylabel="val TC", title="sweep: mIoU-TC trade-off")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


def value_figure(trials, key: str, metric: str, log_x: bool):
    """The objective (last report) against one swept value, one dot per trial."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    rows = [(t.values.get(key), t.value(metric)) for t in trials if key in t.values]
    xs = [x for x, _ in rows]
    if _numeric(xs):
        ax.scatter(xs, [y for _, y in rows])
        if log_x:
            ax.set_xscale("log")
    else:  # categorical choices: one column per value
        labels = sorted({str(x) for x in xs})
        ax.scatter([labels.index(str(x)) for x in xs], [y for _, y in rows])
        ax.set_xticks(range(len(labels)), labels)
    ax.set(xlabel=key, ylabel=metric, title=f"{metric} vs {key}")
    ax.grid(alpha=0.3)
    return fig


def _log_history(trial) -> None:
    for row in trial.history:
        metrics = {metric_name(k): float(v) for k, v in row.items()
                   if k.startswith(_REPORTED) and isinstance(v, (int, float)) and math.isfinite(v)}
        if metrics and "step" in row:
            tracking.log_metrics(metrics, step=int(row["step"]))


def _register(cfg: EtcConfig, trial, run_id: str, num_classes: int, manifest: dict):
    """Register the trial's kept checkpoint (train.num_to_keep drops the others) with the best val mIoU, read through
    the filesystem Ray Train stored it on (train.storage_path: local, or s3:// at s3.endpoint_url); None when no
    checkpoint is kept."""
    from pyarrow import fs
    from ray.train import Checkpoint

    filesystem = cfg.s3.access.filesystem(cfg.train.storage_path) or fs.LocalFileSystem()
    rows = [r for r in trial.history if isinstance(r.get("checkpoint_path"), str)
            and math.isfinite(r.get("val_miou", math.nan))
            and filesystem.get_file_info(r["checkpoint_path"]).type == fs.FileType.Directory]
    if not rows:
        log.warning("sweep.register_best: trial %s kept no checkpoint at %s; nothing registered", trial.trial_id,
                    cfg.train.storage_path)
        return None
    row = max(rows, key=lambda r: r["val_miou"])
    with Checkpoint(row["checkpoint_path"], filesystem=filesystem).as_directory() as local:
        state = load_checkpoint(local)
    return register_state(trial.config, "student", state, best_metrics(row), num_classes, run_id, manifest,
                          fps=row.get("fps"))


def log_sweep(cfg: EtcConfig, name: str, trials: list, best, front: list[str], num_classes: int,
              manifest: dict, parent_run_id: str) -> dict:
    """Into the active parent run (parent_run_id): a child per trial (the one the trial or an earlier logging of
    this sweep opened, else a new one), the pictures and best.yaml; return run ids, paths, registration."""
    from etc_core.tracking import sweep_runs

    sweep = cfg.sweep
    best_path = write_best_yaml(best, name, best_yaml_path(cfg, name))
    children, registered = {}, None
    tracking.set_tags({"etc.sweep.best_trial": best.trial_id})
    for trial in trials:
        params = {k: v for k, v in flatten(trial.config).items() if not k.startswith("sweep.")}
        tags = {"etc.sweep": name, "etc.trial_id": trial.trial_id, "etc.trial.values": json.dumps(trial.values),
                "etc.trial.status": "error" if trial.error else "ok",
                "etc.trial.epochs": str(len(trial.history)), "etc.pareto": str(trial.trial_id in front)}
        opened = sweep_runs.find_trial(cfg.mlflow, parent_run_id, trial.trial_id, cfg.s3.access)
        with tracking.stage_run(cfg.mlflow, sweep_runs.TRIAL_STAGE, run_name=f"trial-{trial.trial_id}",
                                params=None if opened else params, tags=tags, run_id=opened) as child:
            children[trial.trial_id] = child.info.run_id
            tracking.log_shards_input(trial.config.shards.uri, manifest)
            if opened is None:  # its metrics are not there yet (a node-local store: the trial logged nothing)
                _log_history(trial)
            if trial is best and sweep.register_best:
                registered = _register(cfg, trial, child.info.run_id, num_classes, manifest)
    tracking.log_metrics({f"best/{k}": best.value(k) for k in ("val_miou", "val_tc", "val_score")
                          if math.isfinite(best.value(k))} |
                         {"sweep/trials": len(trials), "sweep/failed": sum(t.error is not None for t in trials),
                          "sweep/pareto_size": len(front)})
    tracking.log_figure(pareto_figure(trials, front, best.trial_id), "sweep/pareto_miou_tc.png")
    for key, spec in sweep.space.items():
        fig = value_figure(trials, key, sweep.metric, log_x=spec.type == "loguniform")
        tracking.log_figure(fig, f"sweep/{sweep.metric}_vs_{key}.png")
    # the local file keeps what it needs to run; the MLflow copy has passwords inside URIs masked
    tracking.log_text(tracking.redact(Path(best_path).read_text()), f"sweep/{BEST_YAML}")
    log.info("best config written to %s (MLflow run %s, artifact sweep/%s)", best_path, parent_run_id, BEST_YAML)
    return {"parent_run_id": parent_run_id, "child_run_ids": children, "best_yaml": str(best_path),
            "registered": registered}
