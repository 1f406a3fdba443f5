"""Train the teacher on the flow shards with Ray Train; log to MLflow and register `etc-teacher`.

    python pipelines/train_teacher.py --config configs/demo.yaml                     # local Ray on 127.0.0.1
    python pipelines/train_teacher.py --config configs/demo.yaml train.workers=2 train.max_steps=50
    infra/submit.sh --entry pipelines/train_teacher.py --config configs/cityscapes.yaml   # a cluster

The same entry serves pipelines/train_baseline.py and train_student.py (one training loop, etc_core/train/loop.py).
Needs the shards of pipelines/precompute_flow.py at shards.uri. A version already registered from the same config
(tag etc.config_hash) is reused, not trained again; --force trains and registers a new one. Rerunning an
interrupted config resumes its Ray Train run from the last checkpoint (same storage_path and run name). The new
version takes the `champion` alias when it beats the current champion on registry.champion_metric, else
`candidate` (an alias names one version at a time).
The stage's driver, shared with pipelines/full.py and the benchmarks: etc_core/stages.py, train_stage.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from etc_core.config import parse_args  # noqa: E402
from etc_core.entry import run_entry  # noqa: E402

STAGE = "teacher"


def main(argv: list[str] | None = None, stage: str = STAGE, doc: str = __doc__) -> int:
    """Train `stage` (teacher | baseline | student); doc: the calling entry point's docstring (its --help)."""
    cfg, args = parse_args(doc.splitlines()[0], argv, lambda p: p.add_argument(
        "--force", action="store_true", help=f"train and register the {stage} again even when a version from this "
                                             "config exists"))
    from etc_core.cluster_check import check_cluster
    from etc_core.preflight import check_training
    from etc_core.ray_utils import init_ray

    check_training(cfg, stage)  # missing shards, a dead store, a bad teacher URI: one line, exit 2, before Ray
    ray_info = init_ray(cfg.ray)  # before anything imports Ray (etc_core.ray_utils)
    from etc_core.stages import train_stage, with_baseline
    from etc_core.tracking.ui import log_addresses

    warm = stage == "student" and cfg.student.init_from == "baseline"
    check_cluster(cfg, ("baseline", stage) if warm else (stage,))
    log_addresses(cfg, ray_info)  # the Ray dashboard and the MLflow UI, to watch the run
    if warm:  # the baseline registered from this config, or trained now: one log line says which
        cfg = with_baseline(cfg)
    trained = train_stage(cfg, stage, force=args.force)
    reg, summary = trained.registered, trained.summary
    if trained.reused:
        print(f"{stage}: {reg.name} version {reg.version} was trained from this config before; reused, nothing "
              f"trained")
        return 0
    print(f"{stage} {summary['arch']}: step {summary['step']}, val mIoU {summary['val_miou']:.2f}, "
          f"TC {summary['val_tc']:.2f}; registered {reg.name} version {reg.version} ({reg.alias}); "
          f"MLflow run {summary['run_id']}")
    return 0


if __name__ == "__main__":
    run_entry(main)
