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
from etc_core.entry import check_pretrained, check_shared_tracking, check_stores, run_entry  # noqa: E402

FORCEABLE = ("flow", "teacher", "baseline", "student")


def main(argv: list[str] | None = None) -> int:
    def add(parser) -> None:
        parser.add_argument("--force", action="append", default=[], choices=FORCEABLE, metavar="STAGE",
                            help=f"redo a stage even if its output exists ({', '.join(FORCEABLE)}); repeatable")

    cfg, args = parse_args(__doc__.splitlines()[0], argv, add)
    from etc_core import locks
    from etc_core.flow.estimate import check_ptlflow
    from etc_core.pipeline import run_pipeline
    from etc_core.ray_utils import init_ray
    from etc_core.tracking.mlflow import redact

    if cfg.flow.source == "ptlflow" or cfg.pipeline.ptlflow_timing_pairs:  # a bad flow.model: one line, exit 2
        check_ptlflow(cfg.flow.model, cfg.flow.weights if cfg.flow.source == "ptlflow" else "none")
    check_pretrained(cfg, ("teacher", "student"))  # offline ImageNet or a bad weights file: one line, exit 2
    # one pipeline at a time per SQLite MLflow store, from its first use (a fresh store's tables are made there)
    with locks.hold(locks.store_lock(cfg.mlflow.tracking_uri), cfg.pipeline.lock_wait_s):
        check_stores(cfg)  # a dead endpoint, refused credentials or MLflow: one line, before Ray and any run
        init_ray(cfg.ray)
        check_shared_tracking(cfg)  # a SQLite store on a cluster of several nodes: one line, before any work
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
    if uri.startswith(("http://", "https://")):
        print(f"\nMLflow UI (runs, metrics, pictures, registry): {uri}")
    else:
        print("\nMLflow UI (runs, metrics, pictures, registry):")
        print(f"  mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    name, (h, w) = f"models:/{student}@champion", (cfg.data.height, cfg.data.width)
    print("Pick up the champion student (uint8 RGB frames [N,H,W,3] in, class ids [N,H,W] out):")
    print(f"  MLFLOW_TRACKING_URI={uri} python -c \"import mlflow, numpy as np; "
          f"m = mlflow.pyfunc.load_model('{name}'); print(m.predict(np.zeros((2, {h}, {w}, 3), np.uint8)).shape)\"")
    print(f"  MLFLOW_TRACKING_URI={uri} mlflow models serve -m {name} --env-manager local -h 127.0.0.1 -p 5001")
    print(f"  etc-pipeline predict --model {name} --input VIDEO --out OUT_DIR mlflow.tracking_uri={uri}")
    return 0


if __name__ == "__main__":
    run_entry(main)
