"""Train a compact student with the ETC objective (temporal loss + distillation) from the registered teacher.

    python pipelines/train_student.py --config configs/demo.yaml                     # local Ray on 127.0.0.1
    python pipelines/train_student.py --config configs/demo.yaml student.arch=mobilenetv2 \
        student.teacher_uri=models:/etc-teacher/3
    infra/submit.sh --entry pipelines/train_student.py --config configs/cityscapes.yaml   # a cluster

Same loop as the teacher (etc_core/train/loop.py); the teacher comes from student.teacher_uri (default
models:/etc-teacher@champion, what pipelines/train_teacher.py registers). With `student.init_from: baseline` (the
demo's) the student fine-tunes the per-frame baseline registered from the same config, and trains that baseline
first when there is none (pipelines/train_baseline.py alone); a log line says which. Registers
`etc-student-<arch>`; a version already registered from the same config is reused (--force trains again).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from etc_core.entry import run_entry  # noqa: E402
from pipelines.train_teacher import main as train_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return train_main(argv, stage="student", doc=__doc__)


if __name__ == "__main__":
    run_entry(main)
