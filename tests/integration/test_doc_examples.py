"""Every shell example of README.md, docs/quickstart.md and docs/gpu.md either runs here or is listed below with the
reason it cannot, so that an example cannot rot unnoticed: a new one fails the quick test until it is classified,
and the slow test runs the runnable ones in order, in a temporary directory (configs/ and pipelines/ linked in), with
size and path overrides appended (small generated data, two training steps) and, for some, the lines their output
must hold (EXPECT: the stages one by one on configs/demo.yaml, the student after the teacher, are issue 34's
contract)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY_DATA

pytestmark = pytest.mark.integration

DOCS = ("README.md", "docs/quickstart.md", "docs/gpu.md")
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
        "full.py --config configs/demo.yaml runs below at tiny sizes (every stage, the table, the control), through "
        "`ray job submit` in tests/integration/test_job_submit.py "
        "and starts its own Ray in tests/reliability/test_faults.py",
    "infra/mlflow_server.sh": "a server that runs until stopped (tests/unit/test_infra.py checks its command)",
    "nvidia-smi": "needs an NVIDIA driver",
    ".venv/bin/python pipelines/full.py --config configs/gpu.yaml":
        "needs a GPU: tests/gpu/test_gpu_config.py runs it at tiny sizes; without one, "
        "tests/integration/test_entry_configs.py checks the one line it stops with",
    ".venv/bin/etc-pipeline copy-store --config configs/demo.yaml --to http://":
        "needs the server above (tests/integration/test_copy_store.py copies between two SQLite stores)",
}
# size and path overrides only (the demo's own networks and recipe; issue 34: the stages run alone with these)
TINY = [*TINY_DATA, "ray.num_cpus=2", "train.max_steps=2", "train.steps_per_epoch=2", "train.batch_size=2",
        "train.crop=null", "train.cpus_per_worker=1", "pipeline.ptlflow_timing_pairs=0", "sweep.num_samples=1"]
BASELINE = "student.init_from=baseline: models:/etc-baseline-pspnet18_slim/1"
# what a command's output must show, beyond exit code 0 (the first command starting with the key)
EXPECT = {
    ".venv/bin/python pipelines/train_teacher.py": [
        "Ray dashboard: http://127.0.0.1:", "?workflowType=machine_learning once started with",
        "mlflow ui --backend-store-uri sqlite:///"],
    # the contract of issue 34: the student alone, after the teacher with the same overrides, trains its baseline
    ".venv/bin/python pipelines/train_student.py": [f"{BASELINE} (none from this config: trained now)",
                                                    "registered etc-student-pspnet18_slim version 1"],
    ".venv/bin/python pipelines/train_baseline.py": [
        "baseline: etc-baseline-pspnet18_slim version 1 was trained from this config before; reused"],
    ".venv/bin/python pipelines/sweep.py": [f"{BASELINE} (registered from this config before: reused)"],
    ".venv/bin/python pipelines/full.py --config configs/demo.yaml student.train": [
        "stages run: student, control, evaluate; reused: flow, teacher, baseline",  # the stages' baseline is full.py's
        # the equal-step comparison first, the unequal one second (demo.yaml: pipeline.control)
        "student - control: TC-noc ", "[equal steps", "student - baseline: TC-noc ", "[secondary, unequal steps",
        "evaluate: control:etc-control-pspnet18_slim/1 scored in "],  # a log, not a console: one line per model
}


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


def _recipe(target: str) -> list[str]:
    """The commands of a Makefile target, its variables filled in (PY, TEST_WORKERS at their defaults)."""
    text = (REPO / "Makefile").read_text()
    values = dict(re.findall(r"^(\w+) [?:]?= (.*)$", text, re.M))
    lines = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, re.M).group(1).splitlines()
    while any("$(" in line for line in lines):
        lines = [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], line) for line in lines]
    return [line.strip() for line in lines]


def test_make_lines_say_what_the_makefile_runs():
    """quickstart.md's `make demo` / `make test` comments name the command each target runs."""
    said = re.findall(r"^make (\w+) .*then: (.*)$", (REPO / "docs" / "quickstart.md").read_text(), re.M)
    assert {target for target, _ in said} == {"demo", "test"}
    for target, command in said:
        assert command.strip() in _recipe(target), (target, command, _recipe(target))


@pytest.mark.slow
def test_doc_examples_run_with_tiny_overrides(ray_local, tmp_path):
    join = f"ray.address={ray_local.get_runtime_context().gcs_address}"  # one Ray for all: no start-up per command
    for name in ("configs", "pipelines"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store: runs/mlflow.db in the temporary directory
    seen: set[str] = set()
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
            said = proc.stdout + proc.stderr
            for key in [k for k in EXPECT if command.startswith(k) and k not in seen][:1]:
                seen.add(key)
                assert all(line in said for line in EXPECT[key]), (command, EXPECT[key], said[-3000:])
    assert seen == set(EXPECT), set(EXPECT) - seen  # every expectation met a command

    # demo.yaml's student and its control fine-tune the baseline full.py trained, with the same steps; the control's
    # run says it trained without the ETC terms (its params are the loss it trained, not the student's)
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("etc-pipeline").experiment_id],
                              order_by=["attributes.start_time DESC"])  # the latest student and control: full.py's
    params = {stage: next(r for r in runs if r.data.tags.get("etc.stage") == stage).data.params
              for stage in ("student", "control")}
    assert params["student"]["student.init_from"] == params["control"]["student.init_from"] == \
        "models:/etc-baseline-pspnet18_slim/1"
    assert (float(params["student"]["student.loss.tc_weight"]), float(params["control"]["student.loss.tc_weight"])) \
        == (0.3, 0.0)
    assert params["student"]["train.max_steps"] == params["control"]["train.max_steps"]
