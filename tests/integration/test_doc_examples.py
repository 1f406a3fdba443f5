"""Every shell example of README.md and docs/quickstart.md either runs here or is listed below with the reason it
cannot, so that an example cannot rot unnoticed: a new one fails the quick test until it is classified, and the
slow test runs the runnable ones in order, in a temporary directory (configs/ and pipelines/ linked in), with tiny
overrides appended (small generated data, two training steps, small networks)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY_DATA

pytestmark = pytest.mark.integration

DOCS = ("README.md", "docs/quickstart.md")
# first words of the examples not run here, and why
NOT_HERE = {
    "make demo": "the demo itself: its time is measured by hand (README)",
    "make test": "the whole suite",
    ".venv/bin/python -m pytest": "the test suite, from inside itself",
    ".venv/bin/mlflow ui": "a server that runs until stopped",
    "mlflow models serve": "a server that runs until stopped (tests/integration/test_serving.py serves a model)",
    "curl": "needs the server above",
    "export PATH": "shell set-up for the lines after it",
    "etc-pipeline predict --model models:/etc-student-pspnet18_slim@champion --input clip.mp4":
        "needs a video of your own (tests/integration/test_infer.py runs predict)",
    "etc-pipeline evaluate --model": "needs models and a video of your own (tests/integration/test_infer.py)",
    "etc-pipeline export --model": "tests/integration/test_infer.py runs export",
    ".venv/bin/python pipelines/full.py --config configs/demo.yaml data.num_videos=40":
        "full.py --config configs/demo.yaml runs in tests/integration/test_job_submit.py (every stage, the table) "
        "and starts its own Ray in tests/reliability/test_faults.py",
}
TINY = [*TINY_DATA, "ray.num_cpus=2", "teacher.arch=pspnet18_slim", "student.arch=lraspp_mobilenetv3",
        "train.max_steps=2", "train.steps_per_epoch=2", "train.batch_size=2", "train.crop=null",
        "train.cpus_per_worker=1", "pipeline.ptlflow_timing_pairs=0", "sweep.num_samples=1"]


def shell_examples(doc: str) -> list[str]:
    """The commands of the ```bash blocks of doc: continuation lines joined, comments and blank lines dropped."""
    text = (REPO / doc).read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def _skipped(command: str) -> bool:
    return any(command.startswith(prefix) for prefix in NOT_HERE)


def _runnable(command: str) -> list[str] | None:
    """The argv that runs command here (the venv's tools as this interpreter), or None when it is not a command
    this test knows how to run."""
    words = shlex.split(command.replace("$PWD", "."))
    if words[0] == ".venv/bin/python" or words[0] == "python":
        return [sys.executable, *words[1:]]
    if words[0] in (".venv/bin/etc-pipeline", "etc-pipeline"):
        return [sys.executable, "-m", "etc_core.cli", *words[1:]]
    return None


def test_every_doc_example_is_run_or_says_why_not():
    unknown = [c for doc in DOCS for c in shell_examples(doc) if not _skipped(c) and _runnable(c) is None]
    assert unknown == [], f"doc examples neither run by this test nor listed in NOT_HERE: {unknown}"
    assert len([c for doc in DOCS for c in shell_examples(doc) if not _skipped(c)]) >= 8


@pytest.mark.slow
def test_doc_examples_run_with_tiny_overrides(ray_local, tmp_path):
    join = f"ray.address={ray_local.get_runtime_context().gcs_address}"  # one Ray for all: no start-up per command
    for name in ("configs", "pipelines"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store: runs/mlflow.db in the temporary directory
    for doc in DOCS:
        for command in shell_examples(doc):
            if _skipped(command):
                continue
            argv = _runnable(command)
            if any(w.endswith(".py") and w.startswith("pipelines/") for w in argv) or "make-dataset" in argv:
                argv = [*argv, *TINY, join]
            # a stage's own step count (e.g. student.train.max_steps=100) outranks train.max_steps: keep it tiny too
            argv = [re.sub(r"^((?:teacher|student)\.train\.max_steps)=\d+$", r"\1=3", w) for w in argv]
            if "data.root=/tmp/etc-data" in argv:  # keep the example's absolute path inside the test's folder
                argv[argv.index("data.root=/tmp/etc-data")] = f"data.root={tmp_path}/etc-data"
            proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, (doc, command, proc.stderr[-3000:])
