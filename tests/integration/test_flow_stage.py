"""The flow stage on a real local Ray (Ray Data): ground truth, DIS and ptlflow, local and S3 (moto), the same shards as
the stage before it and as the plain loop, resume from sidecars, failures.

A killed stage and its resume: tests/reliability/test_faults.py.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from etc_core.config import load_config
from etc_core.data import shards
from etc_core.data.generated import GeneratedDataset, write_dataset
from etc_core.errors import ConfigError, DatasetError
from etc_core.flow.estimate import GroundTruthEstimator
from etc_core.flow.stage import plan_shards, run_flow_stage
from etc_core.flow.work import ShardJob, write_shards_sequentially
from tests.conftest import run_python

pytestmark = pytest.mark.integration

TINY = ["data.num_videos=3", "data.num_frames=5", "data.height=32", "data.width=48", "data.label_every=2"]
# the shards of _cfg(tiny_data) as the ActorPool stage before Ray Data wrote them (main at f5063c7), flow as float16
# npy (shards.flow_encoding=npy now): config hash and sha256 of every tar. Same config, same bytes.
BEFORE_HASH = "82b79d8b94007c4d"
BEFORE_TARS = {"test/shard-000000.tar": "e24335bffa2b6df5ecf95eb3fac649b4f05dbee01adf6d98b603ae555860030f",
               "train/shard-000000.tar": "7e50ae0365a4161d4a267d9b5b3fb10e22d2bcdd43b237629ba7c3044349f0b2",
               "train/shard-000001.tar": "ae05136ad8f1adca7849c2fb815ff4145c9e71d2ba0ded6383d9a2f9b6890d8b",
               "val/shard-000000.tar": "24fa1127515b8d9a821ae30827d746720c12d7c1a489b2b3d9a71f100b3d9655"}
# the same shards with flow as KITTI 16-bit PNG (shards.flow_encoding=png16, the default since), same config hash
PNG16_TARS = {"test/shard-000000.tar": "d3ba3e6b83b9aab0d970507ad95ef608a5c924b1ff80e0dc94ce3676454651a1",
              "train/shard-000000.tar": "f77dc21cd0e97b1329b14300a53d31da42f30df387f245a139317f2bbf251406",
              "train/shard-000001.tar": "0cacaefe28ff17311be666af47f36cdd71896048d376c317e969d36d4f88e186",
              "val/shard-000000.tar": "71e860bdc3005aae07381647f15e8aa181ac17d10e6a75838c611e22fd4bf5f3"}


def _cfg(tmp_path, *extra: str, uri: str | None = None):
    return load_config(None, [f"data.root={tmp_path / 'data'}", *TINY, f"shards.uri={uri or tmp_path / 'shards'}",
                              "shards.k=[-2, -1, 1, 2]", "shards.max_samples_per_shard=4", *extra])


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("flowdata")
    cfg = _cfg(root)
    write_dataset(cfg.data, progress=False)
    return root


def _tar_digests(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.glob("*/*.tar"))}


def test_ground_truth_round_trip_rerun_and_refusal(ray_local, tiny_data, tmp_path):
    cfg = _cfg(tiny_data, uri=str(tmp_path / "gt"))
    dataset = GeneratedDataset(cfg.data.root)
    result = run_flow_stage(cfg, progress=False)
    manifest = json.loads((tmp_path / "gt" / "manifest.json").read_text())
    assert manifest == result.manifest and manifest["config_hash"] == BEFORE_HASH
    assert manifest["flow_encoding"] == "png16" and _tar_digests(tmp_path / "gt") == PNG16_TARS
    for split in ("train", "val", "test"):
        files = sorted(p.name for p in (tmp_path / "gt" / split).iterdir())
        count = len(manifest["splits"][split]["shards"])
        assert files == sorted([f"shard-{i:06d}.tar" for i in range(count)] +
                               [f"shard-{i:06d}.tar.json" for i in range(count)])  # each shard and its sidecar
        for shard in manifest["splits"][split]["shards"]:
            sidecar = json.loads((tmp_path / "gt" / f"{shard['path']}.json").read_text())
            assert sidecar == {"samples": shard["samples"], "bytes": shard["bytes"]}
    train = list(shards.iter_samples(cfg.shards.uri, "train"))
    assert {s["meta"]["k"] for s in train} == {-2, -1, 1, 2} and len(train) == manifest["splits"]["train"]["samples"]
    for sample in train:
        meta = sample["meta"]
        clip = dataset.read_clip("train", meta["video"])
        want, _ = dataset.pair_flow("train", meta["video"], meta["t"], meta["k"])
        np.testing.assert_allclose(sample["flow"], want, atol=1 / 128)  # KITTI's 1/64 px steps
        np.testing.assert_array_equal(sample["img1"], clip.frames[meta["t"] + meta["k"]])
        np.testing.assert_array_equal(sample["label"], clip.labels[meta["t"]])
        assert sample["__key__"] == f"{meta['video']}_{meta['t']:06d}_{meta['k']}"
    assert all(s["label1"] is None and s["valid"] is None for s in train)  # evaluation fields: val and test only
    for split in ("val", "test"):  # every frame labelled; the next frame's label and the validity mask come along
        val = list(shards.iter_samples(cfg.shards.uri, split))
        assert len(val) == 4 and all(s["label"] is not None and s["label1"] is not None for s in val)
        clip = dataset.read_clip(split, val[1]["meta"]["video"])
        np.testing.assert_allclose(val[1]["flow"], clip.flows[1], atol=1 / 128)
        np.testing.assert_array_equal(val[1]["label1"], clip.labels[2])
        np.testing.assert_array_equal(val[1]["valid"], clip.valid[1])
        assert not val[1]["valid"].all() or not val[2]["valid"].all() or not val[3]["valid"].all()
    with tarfile.open(tmp_path / "gt" / "test" / "shard-000000.tar") as tar:  # the contract: valid.png, 255 / 0
        names = tar.getnames()
        assert sum(n.endswith(".valid.png") for n in names) == 4
        member = next(n for n in names if n.endswith(".valid.png"))
        values = set(np.unique(np.asarray(Image.open(tar.extractfile(member)))).tolist())
        assert values <= {0, 255}
    assert len(list(wds.WebDataset(str(tmp_path / "gt" / "train" / "shard-000000.tar"), shardshuffle=False))) == 4

    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "gt").rglob("*")}
    again = run_flow_stage(cfg, progress=False)  # rerun: a no-op
    assert again.shards_written == 0 and again.manifest == manifest
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "gt").rglob("*")} == stamp
    with pytest.raises(ConfigError, match=r"shards.k=\[-2, -1, 1, 2\].*choose another shards.uri"):
        run_flow_stage(_cfg(tiny_data, "shards.k=[1]", uri=str(tmp_path / "gt")), progress=False)


@pytest.mark.parametrize("encoding, tars", [("png16", PNG16_TARS), ("npy", BEFORE_TARS)])
def test_the_plain_loop_writes_the_same_shards(tiny_data, tmp_path, encoding, tars):
    # the benchmark's sequential baseline: the same steps in one process, no Ray, the same bytes (npy: the same bytes
    # as before flow encodings existed)
    cfg = _cfg(tiny_data, f"shards.flow_encoding={encoding}", uri=str(tmp_path / "loop"))
    dataset = GeneratedDataset(cfg.data.root)
    jobs = [ShardJob(split, i, s) for split, plan in plan_shards(dataset, cfg).items() for i, s in enumerate(plan)]
    write_shards_sequentially(cfg, dataset, jobs, GroundTruthEstimator(dataset))
    assert _tar_digests(tmp_path / "loop") == tars


def test_resume_trusts_sidecars_without_reading_shards_and_verify_reads_them(ray_local, tiny_data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="etc_core.flow.stage")
    root = tmp_path / "gt"
    cfg = _cfg(tiny_data, uri=str(root))
    run_flow_stage(cfg, progress=False)
    # what a killed run leaves: no manifest, a shard never written, one written without its sidecar; and a shard
    # whose body no longer reads (same size): only a run that reads bodies can tell
    (root / "manifest.json").unlink()
    (root / "train" / "shard-000001.tar").unlink()
    (root / "train" / "shard-000001.tar.json").unlink()
    (root / "test" / "shard-000000.tar.json").unlink()
    garbage = b"\0" * (root / "val" / "shard-000000.tar").stat().st_size
    (root / "val" / "shard-000000.tar").write_bytes(garbage)
    result = run_flow_stage(cfg, progress=False)
    assert "flow stage: 2 shards to write, 2 already complete" in caplog.text
    assert result.shards_written == 2 and result.pairs_computed == 8
    assert (root / "val" / "shard-000000.tar").read_bytes() == garbage  # trusted from its sidecar: never read
    assert {k: v for k, v in _tar_digests(root).items() if not k.startswith("val")} == \
        {k: v for k, v in PNG16_TARS.items() if not k.startswith("val")}

    caplog.clear()
    (root / "manifest.json").unlink()
    run_flow_stage(cfg, progress=False, verify=True)
    assert "flow stage: 1 shards to write, 3 already complete" in caplog.text
    assert _tar_digests(root) == PNG16_TARS
    assert json.loads((root / "manifest.json").read_text())["config_hash"] == BEFORE_HASH


@pytest.mark.slow
def test_ptlflow_random_init_through_the_stage(ray_local, tmp_path):
    # random-init rapidflow_it1 gives NaN below 64x96, so these frames are a little larger
    cfg = _cfg(tmp_path, "flow.source=ptlflow", "flow.model=rapidflow_it1", "flow.weights=none", "shards.k=[1]",
               "data.num_videos=3", "data.num_frames=3", "data.height=64", "data.width=96", uri=str(tmp_path / "pt"))
    write_dataset(cfg.data, progress=False)
    result = run_flow_stage(cfg, progress=False)
    assert result.pairs_computed == sum(v["samples"] for v in result.manifest["splits"].values()) > 0
    sample = next(shards.iter_samples(cfg.shards.uri, "train"))
    assert sample["flow"].shape == (2, 64, 96) and np.isfinite(sample["flow"]).all()
    assert sample["meta"]["source"] == "ptlflow" and sample["meta"]["flow_model"] == "rapidflow_it1"


def _dis_threads() -> int:
    import cv2

    from etc_core.flow.dis import DisEstimator

    DisEstimator()
    return cv2.getNumThreads()


def test_dis_runs_one_cv2_thread_in_a_ray_task_of_one_cpu(ray_local):
    assert ray_local.get(ray_local.remote(num_cpus=1)(_dis_threads).remote()) == 1  # cv2 ignores OMP_NUM_THREADS


@pytest.mark.slow
def test_dis_through_the_stage(ray_local, tiny_data, tmp_path):
    cfg = _cfg(tiny_data, "flow.source=dis", uri=str(tmp_path / "dis"))
    result = run_flow_stage(cfg, progress=False)
    assert result.pairs_computed == sum(v["samples"] for v in result.manifest["splits"].values()) > 0
    assert result.manifest["config"]["flow"] == {"source": "dis", "dis_preset": "medium"} and result.startup_s == 0
    sample = next(shards.iter_samples(cfg.shards.uri, "train"))
    assert sample["flow"].shape == (2, 32, 48) and np.isfinite(sample["flow"]).all() and sample["flow"].any()
    assert (sample["meta"]["source"], sample["meta"]["flow_model"], sample["meta"]["flow_weights"]) == \
        ("dis", "dis", "medium")


def test_flow_actors_that_leave_no_cpu_for_reading_and_writing_are_refused(ray_local, tiny_data, tmp_path):
    cfg = _cfg(tiny_data, "flow.source=ptlflow", "flow.num_actors=2", uri=str(tmp_path / "full"))  # Ray has 2 CPUs
    with pytest.raises(ConfigError, match=r"^flow.num_actors: 2 flow actor\(s\) x flow.cpus_per_actor 1 leave none "
                                          r"of the 2 CPUs") as err:
        run_flow_stage(cfg, progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "full").exists()  # refused before anything is written


def test_s3_round_trip_on_moto(ray_local, moto_s3, tiny_data):
    from etc_core.storage import uri as storage

    storage.s3_client(moto_s3).create_bucket(Bucket="etc-flow")
    cfg = _cfg(tiny_data, f"s3.endpoint_url={moto_s3}", uri="s3://etc-flow/run1/shards")
    result = run_flow_stage(cfg, progress=False)
    listed = storage.list_files("s3://etc-flow/run1/shards", moto_s3)
    assert "s3://etc-flow/run1/shards/manifest.json" in listed
    assert "s3://etc-flow/run1/shards/train/shard-000000.tar" in listed
    train = list(shards.iter_samples(cfg.shards.uri, "train"))  # streamed through the boto3 gopen handler
    assert len(train) == result.manifest["splits"]["train"]["samples"]
    batches = list(shards.make_loader(cfg.shards.uri, "val", 2, shuffle=False))
    assert sum(len(b["key"]) for b in batches) == result.manifest["splits"]["val"]["samples"]
    assert run_flow_stage(cfg, progress=False).shards_written == 0

    # resume on S3: sidecars and HEADs, no shard downloaded (a same-size garbage object stays), --verify reads them
    uri = "s3://etc-flow/run1/shards"
    train0, val0 = f"{uri}/train/shard-000000.tar", f"{uri}/val/shard-000000.tar"
    assert storage.exists(f"{train0}.json", moto_s3) and storage.exists(f"{val0}.json", moto_s3)
    garbage = b"\0" * storage.size(train0, moto_s3)
    storage.put_bytes(garbage, train0, moto_s3)
    for path in (f"{uri}/manifest.json", val0):
        storage.remove(path, moto_s3)
    assert run_flow_stage(cfg, progress=False).shards_written == 1
    assert storage.read_bytes(train0, moto_s3) == garbage and storage.exists(val0, moto_s3)
    storage.remove(f"{uri}/manifest.json", moto_s3)
    assert run_flow_stage(cfg, progress=False, verify=True).shards_written == 1
    assert storage.read_bytes(train0, moto_s3) != garbage
    assert len(list(shards.iter_samples(cfg.shards.uri, "train"))) == result.manifest["splits"]["train"]["samples"]


def test_missing_or_broken_dataset_is_one_line(ray_local, tiny_data, tmp_path):
    with pytest.raises(DatasetError, match="dataset.json: not found") as err:
        run_flow_stage(_cfg(tmp_path, uri=str(tmp_path / "none")), progress=False)
    assert "\n" not in str(err.value)
    broken = tmp_path / "broken"
    cfg = _cfg(broken)
    write_dataset(cfg.data, progress=False)
    (broken / "data" / "train" / "clip_000000" / "frames" / "000002.png").unlink()
    with pytest.raises(DatasetError, match="000002.png: missing"):
        run_flow_stage(cfg, progress=False)


def _entry_args(data_root, uri, mlflow_dir, *extra):
    return ["pipelines/precompute_flow.py", f"data.root={data_root}", *TINY, f"shards.uri={uri}",
            f"mlflow.tracking_uri=sqlite:///{mlflow_dir}/mlflow.db", f"mlflow.artifact_root={mlflow_dir}/art", *extra]


def test_bad_flow_model_name_exits_2_with_one_line(tiny_data, tmp_path):
    proc = run_python(*_entry_args(tiny_data / "data", tmp_path / "s", tmp_path, "flow.source=ptlflow",
                                   "flow.model=raft_smal"), timeout=120)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ConfigError: flow.model: unknown ptlflow model 'raft_smal'") and "raft_small" in last
