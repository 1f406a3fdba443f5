"""Sweep the ETC loss weights (and lr) with Ray Tune; each trial trains a student with Ray Train; MLflow gets it all.

    python pipelines/sweep.py --config configs/demo.yaml                          # local Ray on 127.0.0.1
    python pipelines/sweep.py --config configs/demo.yaml sweep.num_samples=4 train.max_steps=20 sweep.search=random
    python pipelines/sweep.py --config configs/demo.yaml \
        'sweep.space={student.loss.tc_weight: {type: loguniform, low: 0.01, high: 1}}' sweep.metric=val_score
    infra/submit.sh --entry pipelines/sweep.py --config configs/cityscapes.yaml   # a cluster

Needs the shards of pipelines/precompute_flow.py and, when distillation can be on, a registered teacher
(student.teacher_uri); with `student.init_from: baseline` (the demo's) every trial fine-tunes the baseline registered
from the same config, trained first when there is none (a log line says which). The sweep lives at
<train.storage_path>/sweep-<hash>: rerunning the same command after an interruption resumes it (Tuner.restore);
finished trials are not rerun. Prints the trials, the Pareto front of
(mIoU, TC) and the path of the best trial's config, which `python pipelines/train_student.py --config PATH`
reproduces. MLflow: a parent run tagged etc.stage=sweep with the pictures, one child run per trial.
The stage's driver, shared with pipelines/full.py: etc_core/stages.py, sweep_stage.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from etc_core.config import parse_args  # noqa: E402
from etc_core.entry import run_entry  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(__doc__.splitlines()[0], argv)
    from etc_core.cluster_check import check_cluster
    from etc_core.preflight import check_sweep
    from etc_core.ray_utils import init_ray

    check_sweep(cfg)  # a bad search space, missing shards, a dead store: one line, exit 2, before Ray starts
    ray_info = init_ray(cfg.ray)  # before anything imports Ray (etc_core.ray_utils)
    from etc_core.stages import sweep_stage, with_baseline
    from etc_core.tracking.ui import log_addresses

    warm = cfg.student.init_from == "baseline"
    check_cluster(cfg, ("baseline",) if warm else (), sweep=True)  # one trial (driver, Ray Train workers) must fit
    log_addresses(cfg, ray_info)  # the Ray dashboard and the MLflow UI, to watch the run
    cfg = with_baseline(cfg)  # student.init_from: baseline: the baseline of this config, found or trained first
    summary = sweep_stage(cfg)
    metric = cfg.sweep.metric
    print(f"sweep {summary['name']} ({'resumed' if summary['restored'] else 'new'}): "
          f"{len(summary['trials'])} trials, objective {metric}")
    for trial in summary["trials"]:
        mark = ("*" if trial is summary["best"] else " ") + ("P" if trial.trial_id in summary["front"] else " ")
        status = f"failed: {trial.error}" if trial.error else (
            f"mIoU {trial.value('val_miou'):6.2f}  TC {trial.value('val_tc'):6.2f}  "
            f"score {trial.value('val_score'):6.2f}  epochs {len(trial.history)}")
        values = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.values.items())
        print(f"{mark} {trial.trial_id}  {status}  {values}")
    print("(* best, P on the Pareto front of mIoU and TC)")
    print(f"best config: {summary['best_yaml']}")
    print(f"MLflow parent run {summary['parent_run_id']} ({cfg.mlflow.tracking_uri})")
    if summary["registered"] is not None:
        reg = summary["registered"]
        print(f"registered {reg.name} version {reg.version} ({reg.alias})")
    return 0


if __name__ == "__main__":
    run_entry(main)
