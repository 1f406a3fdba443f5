"""The whole ETC pipeline on Ray: generated (or real) video -> flow shards -> teacher -> students -> evaluation.

    python pipelines/full.py --config configs/demo.yaml            # starts a local Ray on 127.0.0.1
    python pipelines/full.py --config configs/demo.yaml --force student
    ray job submit --working-dir . -- python pipelines/full.py --config configs/demo.yaml   # joins the cluster

Every stage is skipped when its output for the same config exists (shards manifest, registered model version
tagged with the stage's config hash), so a rerun after a crash continues where it stopped; --force STAGE redoes
one. Ends with the evaluation table, the MLflow UI command and the three ways to pick up the champion student
(mlflow.pyfunc, mlflow models serve, etc-pipeline predict).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from etc_core.config import parse_args  # noqa: E402
from etc_core.entry import run_entry  # noqa: E402

FORCEABLE = ("flow", "teacher", "sweep", "baseline", "student", "control")  # every stage with an output to redo


def main(argv: list[str] | None = None) -> int:
    def add(parser) -> None:
        parser.add_argument("--force", action="append", default=[], choices=FORCEABLE, metavar="STAGE",
                            help=f"redo a stage even if its output exists ({', '.join(FORCEABLE)}); repeatable")

    cfg, args = parse_args(__doc__.splitlines()[0], argv, add)
    from etc_core import locks
    from etc_core.cluster_check import check_cluster
    from etc_core.pipeline import run_pipeline, training_stages
    from etc_core.preflight import check_full
    from etc_core.ray_utils import init_ray
    from etc_core.tracking.mlflow import redact, setup
    from etc_core.tracking.ui import log_addresses, ui_lines

    check_full(cfg, tuple(args.force))  # bad input of any kind: one line, exit 2, before Ray and any run
    # one pipeline at a time per SQLite MLflow store, from its first use (a fresh store's tables are made there)
    with locks.hold(locks.store_lock(cfg.mlflow.tracking_uri), cfg.pipeline.lock_wait_s):
        ray_info = init_ray(cfg.ray)
        check_cluster(cfg, training_stages(cfg), sweep=cfg.pipeline.sweep, flow=True)  # a request it can never hold
        log_addresses(cfg, ray_info)  # the Ray dashboard and the MLflow UI, to watch the run
        result = run_pipeline(cfg, force=tuple(args.force))
    print()
    print(f"stages run: {', '.join(result.ran) or '-'}; reused: {', '.join(result.skipped) or '-'}")
    if result.flow_timing:
        t = result.flow_timing
        print(f"ptlflow {t['model']} (random init, timing only): {t['pairs_per_s']:.1f} pairs/s on {t['pairs']} "
              f"pairs; EPE {t['epe_vs_shards']:.1f} px against the ground-truth flow the models trained with")
    print(result.table)
    student = result.models["student"].name
    uri = redact(cfg.mlflow.tracking_uri)  # the commands printed never show a password inside the URI
    print()
    print("\n".join(ui_lines(cfg.mlflow, setup(cfg.mlflow, cfg.s3.access))))  # runs, metrics, pictures, registry
    name, (h, w) = f"models:/{student}@champion", (cfg.data.height, cfg.data.width)
    print("Pick up the champion student (uint8 RGB frames [N,H,W,3] in, class ids [N,H,W] out):")
    print(f"  MLFLOW_TRACKING_URI={uri} python -c \"import mlflow, numpy as np; "
          f"m = mlflow.pyfunc.load_model('{name}'); print(m.predict(np.zeros((2, {h}, {w}, 3), np.uint8)).shape)\"")
    print(f"  MLFLOW_TRACKING_URI={uri} mlflow models serve -m {name} --env-manager local -h 127.0.0.1 -p 5001")
    print(f"  etc-pipeline predict --model {name} --input VIDEO --out OUT_DIR mlflow.tracking_uri={uri}")
    return 0


if __name__ == "__main__":
    run_entry(main)
