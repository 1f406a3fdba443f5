"""Train the per-frame baseline: the student's network and schedule without the ETC terms; registers it.

    python pipelines/train_baseline.py --config configs/demo.yaml                    # local Ray on 127.0.0.1
    python pipelines/train_baseline.py --config configs/demo.yaml student.arch=mobilenetv2
    infra/submit.sh --entry pipelines/train_baseline.py --config configs/cityscapes.yaml   # a cluster

The control the ETC student is compared with, and with `student.init_from: baseline` the model it fine-tunes from.
Same loop as the teacher (etc_core/train/loop.py) on the student section with every ETC weight 0 and no teacher;
needs only the shards of pipelines/precompute_flow.py. Registers `etc-baseline-<arch>`, tagged with the stage's
config hash: pipelines/train_student.py, sweep.py and full.py on the same config find it and train no other.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from etc_core.entry import run_entry  # noqa: E402
from pipelines.train_teacher import main as train_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return train_main(argv, stage="baseline", doc=__doc__)


if __name__ == "__main__":
    run_entry(main)
