"""Precompute optical flow for every training/validation pair on Ray and write WebDataset shards.

    python pipelines/precompute_flow.py --config configs/demo.yaml                 # local Ray on 127.0.0.1
    python pipelines/precompute_flow.py --config configs/demo.yaml flow.source=ptlflow flow.model=rapidflow_it1
    python pipelines/precompute_flow.py --config configs/demo.yaml flow.source=dis   # OpenCV's DIS: CPU, no weights
    python pipelines/precompute_flow.py --config configs/demo.yaml shards.uri=s3://etc-demo/shards \
        s3.endpoint_url=http://127.0.0.1:5555                                      # S3 (credentials from env)
    ray job submit --working-dir . -- python pipelines/precompute_flow.py ...      # joins the cluster
    python pipelines/precompute_flow.py --config configs/demo.yaml --verify        # re-read every shard in full

Writes {shards.uri}/{train,val}/shard-{i:06d}.tar (each with a .tar.json sidecar) and {shards.uri}/manifest.json
(last), on Ray Data: this process only plans and commits, Ray workers read, estimate, encode and write. A rerun
with the same config skips complete shards, known from their sidecars without reading them (--verify reads them;
a no-op when all are there); a different config at the same shards.uri is refused.
The generated dataset is written to data.root first when it is not there yet; Cityscapes and CamVid
(data.kind, configs/cityscapes.yaml, configs/camvid.yaml) are read in place after a check of the tree.
The stage's driver, shared with pipelines/full.py: etc_core/stages.py, flow_stage (MLflow run etc.stage=flow with the
shard counts, speeds and one pair's picture).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from etc_core.config import parse_args  # noqa: E402
from etc_core.entry import run_entry  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(__doc__.splitlines()[0], argv, lambda p: p.add_argument(
        "--verify", action="store_true", help="read every existing shard in full instead of trusting its sidecar"))
    from etc_core.cluster_check import check_cluster
    from etc_core.preflight import check_flow
    from etc_core.ray_utils import init_ray

    # a bad flow model, a missing or broken dataset tree, shards of another config, an unreachable store or
    # refused credentials: one line, exit 2, before Ray starts and before any MLflow run exists
    check_flow(cfg)
    ray_info = init_ray(cfg.ray)
    check_cluster(cfg, flow=True)  # relative paths, and paths some node lacks, on a multi-node cluster
    from etc_core.stages import flow_stage
    from etc_core.tracking.ui import log_addresses

    log_addresses(cfg, ray_info)  # the Ray dashboard and the MLflow UI, to watch the run

    result = flow_stage(cfg, verify=args.verify)  # the dataset first: synthetic is generated (on Ray) when missing
    splits = ", ".join(f"{s}: {v['samples']} samples in {len(v['shards'])} shards"
                       for s, v in result.manifest["splits"].items())
    print(f"shards at {cfg.shards.uri} ({splits}); {result.shards_written} written, {result.shards_skipped} "
          f"already there; {result.pairs_per_s:.1f} pairs/s")
    return 0


if __name__ == "__main__":
    run_entry(main)
