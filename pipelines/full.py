"""The whole pipeline on Ray, on the embedded default or a cluster config.

    python pipelines/full.py --config configs/demo.yaml              # starts a local Ray on 127.0.0.1
    ray job submit --working-dir . -- python pipelines/full.py ...   # joins the cluster (RAY_ADDRESS)

Stages so far: the generated video dataset (one Ray task per clip). Later stages (flow shards, teacher,
students, evaluation, registry) are added here as they land.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from etc_core.config import parse_args  # noqa: E402
from etc_core.entry import run_entry  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(__doc__.splitlines()[0], argv)
    from etc_core.data.generated import write_dataset
    from etc_core.ray_utils import init_ray

    init_ray(cfg.ray)
    dataset = write_dataset(cfg.data)
    print(dataset.summary())
    return 0


if __name__ == "__main__":
    run_entry(main)
