"""Bad input through the real entry points: a wrong config, a missing dataset or shard set, corrupt shards.

Each gives one line naming the key, path, shard or member (the last stderr line, `<ErrorClass>: <message>`), exit
code 2 (bad input: every one here is found before any work starts, docs/failure_modes.md "Exit codes"; a corrupt shard
met during the work is 1), and leaves nothing behind: no shards, manifest, checkpoint,
registered model, and no MLflow run left RUNNING.
"""
from __future__ import annotations

import io
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_dirs
from tests.reliability._inputs import (ETC, assert_one_line_error, closed_port, outputs_under, mlflow_rows, run,
                                       write_checkpoint, write_shard_set)

pytestmark = pytest.mark.integration

PY = sys.executable

# (entry point argv, config file text or None, the fragments the one line must hold)
CONFIG_CASES = {
    "unknown_key_in_file": (["pipelines/train_teacher.py"], "train:\n  max_step: 3\n",
                            ["bad.yaml: line 2: train.max_step: unknown key (did you mean max_steps?)"]),
    "wrong_type": (["pipelines/precompute_flow.py", "flow.batch_size=four"], None,
                   ["override flow.batch_size=four: flow.batch_size: Input should be a valid integer"]),
    "negative_size": ([*ETC[1:], "make-dataset", "data.width=-48"], None,
                      ["override data.width=-48: data.width: Input should be greater than or equal to 16"]),
    "unknown_teacher_model": (["pipelines/train_teacher.py", "teacher.arch=pspnet5"], None,
                              ["teacher.arch: Value error, unknown model 'pspnet5' (did you mean pspnet50?)"]),
    "unknown_student_model": (["pipelines/train_student.py", "student.arch=resnet_tiny"], None,
                              ["student.arch: Value error, unknown model 'resnet_tiny' (known: ", "pspnet18_slim"]),
    "unknown_flow_model_in_full": (["pipelines/full.py", "flow.model=raft_smal"], None,
                                   ["flow.model: unknown ptlflow model 'raft_smal'", "raft_small"]),
}


@pytest.mark.slow
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path):
    def one(name: str):
        argv, text, _ = CONFIG_CASES[name]
        out = tmp_path / name
        out.mkdir()
        extra = []
        if text is not None:
            (out / "bad.yaml").write_text(text)
            extra = ["--config", str(out / "bad.yaml")]
        overrides = [f"data.root={out}/data", f"shards.uri={out}/shards", *run_dirs(out)]
        return run([PY, *argv, *extra, *overrides])

    with ThreadPoolExecutor(max_workers=2) as pool:  # independent processes: two at a time
        procs = dict(zip(CONFIG_CASES, pool.map(one, CONFIG_CASES)))
    for name, proc in procs.items():
        assert_one_line_error(proc, "ConfigError", *CONFIG_CASES[name][2], code=2)
        if "flow_model" not in name:  # importing ptlflow prints notes and warnings of its own first
            assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, (name, proc.stderr)
            assert proc.stdout == "", name
        leftovers = [f for f in outputs_under(tmp_path / name) if f != "bad.yaml"]
        assert leftovers == [], (name, leftovers)


# ------------------------------------------------------------------------------------------------ missing input

def test_missing_real_dataset_dir_fails_before_ray_and_mlflow(tmp_path):
    missing = tmp_path / "no-cityscapes-here"
    proc = run([PY, "pipelines/precompute_flow.py", "data.kind=cityscapes", f"data.root={missing}",
                f"shards.uri={tmp_path}/out/shards", *run_dirs(tmp_path / "out")])
    assert_one_line_error(proc, "DatasetError", str(missing), code=2)
    assert "started a local Ray" not in proc.stderr
    assert outputs_under(tmp_path) == []  # no shards, no stage stamp, no MLflow store


def test_missing_shard_set_fails_training_before_ray(tmp_path):
    proc = run([PY, "pipelines/train_teacher.py", f"shards.uri={tmp_path}/never-made", *run_dirs(tmp_path / "out")])
    assert_one_line_error(proc, "ShardError", f"{tmp_path}/never-made/manifest.json: not found", code=2)
    assert "started a local Ray" not in proc.stderr
    assert outputs_under(tmp_path) == []


# ------------------------------------------------------------------------------------------------ corrupt shards

def _truncate(tar: Path) -> None:
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2 + 100])  # cut inside a member


def _rewrite(tar: Path, change) -> None:
    """Rewrite a shard member by member; change(name, bytes) returns new bytes, or None to leave the member out."""
    with tarfile.open(tar) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers() if m.isreg()]
    with tarfile.open(tar, "w") as dst:
        for member, data in members:
            data = change(member.name, data)
            if data is not None:
                member.size = len(data)
                dst.addfile(member, io.BytesIO(data))


def _bad_npy(tar: Path) -> None:
    def change(name: str, data: bytes) -> bytes:
        if name == "clip_000000_000001_1.flow.npy":  # an object array: needs pickle, which np.load refuses
            buf = io.BytesIO()
            np.save(buf, np.array([{"not": "flow"}], dtype=object), allow_pickle=True)
            return buf.getvalue()
        return data

    _rewrite(tar, change)


def _missing_field(tar: Path) -> None:
    _rewrite(tar, lambda name, data: None if name == "clip_000000_000002_1.img1.png" else data)


CORRUPT = {"truncated": (_truncate, ["val/shard-000000.tar: unreadable shard (ReadError"]),
           "bad_npy": (_bad_npy, ["val/shard-000000.tar: member clip_000000_000001_1.flow.npy unreadable (ValueError"]),
           "missing_field": (_missing_field, ["val/shard-000000.tar: member clip_000000_000002_1.img1.png missing"])}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.mark.parametrize("kind", CORRUPT)
def test_corrupt_shard_is_one_line_naming_shard_and_member(kind, checkpoint, tmp_path):
    uri = write_shard_set(str(tmp_path / "shards"))
    corrupt, fragments = CORRUPT[kind]
    corrupt(tmp_path / "shards" / "val" / "shard-000000.tar")
    out = tmp_path / "table.json"
    proc = run([*ETC, "evaluate", "--model", str(checkpoint), "--shards", uri, "--json", str(out)])
    assert_one_line_error(proc, "ShardError", *fragments)
    assert not out.exists()  # no partial table


@pytest.mark.slow
def test_corrupt_shard_in_training_leaves_no_checkpoint_model_or_running_run(tmp_path):
    """Ray Train on a truncated shard: one line naming it, no checkpoint, nothing registered, the run FAILED."""
    uri = write_shard_set(str(tmp_path / "shards"))
    _truncate(tmp_path / "shards" / "train" / "shard-000000.tar")
    out = tmp_path / "out"
    proc = run([PY, "pipelines/train_teacher.py", f"shards.uri={uri}", *run_dirs(out), "teacher.arch=pspnet18_slim",
                "train.max_steps=2", "train.steps_per_epoch=2", "train.batch_size=2", "train.val_batch_size=2",
                "train.max_failures=0", "train.pictures=0", "ray.num_cpus=2"], timeout=400)
    assert_one_line_error(proc, "TrainingError", "teacher training failed",
                          "train/shard-000000.tar: unreadable shard (ReadError")
    assert not [f for f in outputs_under(out / "ray_results") if "checkpoint" in f or f.endswith(".pt")]
    db = out / "mlflow.db"
    assert mlflow_rows(db, "SELECT status FROM runs") == [("FAILED",)]
    assert mlflow_rows(db, "SELECT name FROM registered_models") == []
    assert mlflow_rows(db, "SELECT name FROM model_versions") == []


@pytest.mark.parametrize("entry", ["pipelines/full.py", "pipelines/train_teacher.py"])
def test_offline_imagenet_weights_are_one_line_before_ray(entry, tmp_path):
    """teacher.pretrained=imagenet with an empty torch hub cache and the weights host unreachable (every HTTPS
    request goes to a proxy on a closed port, as torchvision's own download would): one line naming the URL and
    how to pre-seed the cache, exit 2, before Ray or any store starts."""
    proxy = f"http://127.0.0.1:{closed_port()}"
    out = tmp_path / "out"
    proc = run([PY, entry, f"shards.uri={out}/shards", *run_dirs(out), "teacher.arch=pspnet18",
                "teacher.pretrained=imagenet"],
               env={"TORCH_HOME": str(tmp_path / "torch"), "HTTPS_PROXY": proxy, "https_proxy": proxy},
               drop=("NO_PROXY", "no_proxy"), timeout=120)
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert_one_line_error(proc, "PretrainedWeightsError", f"pspnet18: cannot reach ImageNet weights {url}",
                          f"pre-seed the torch hub cache with `curl -fLo {cached} {url}`", "TORCH_HOME", code=2)
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [proc.stderr.strip()]  # no Ray lines
    assert outputs_under(out) == []  # no MLflow store, no shards, no Ray results
