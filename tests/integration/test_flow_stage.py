"""The flow stage on a real local Ray: ground truth and ptlflow, local and S3 (moto), rerun, failures.

A killed stage and its resume: tests/reliability/test_faults.py.
"""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from etc_core.config import load_config
from etc_core.data import shards
from etc_core.data.generated import GeneratedDataset, write_dataset
from etc_core.errors import ConfigError, DatasetError
from etc_core.flow.stage import run_flow_stage
from tests.conftest import run_python

pytestmark = pytest.mark.integration

TINY = ["data.num_videos=3", "data.num_frames=5", "data.height=32", "data.width=48", "data.label_every=2"]


def _cfg(tmp_path, *extra: str, uri: str | None = None):
    return load_config(None, [f"data.root={tmp_path / 'data'}", *TINY, f"shards.uri={uri or tmp_path / 'shards'}",
                              "shards.k=[-2, -1, 1, 2]", "shards.max_samples_per_shard=4", *extra])


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("flowdata")
    cfg = _cfg(root)
    write_dataset(cfg.data, progress=False)
    return root


def test_ground_truth_round_trip_rerun_and_refusal(ray_local, tiny_data, tmp_path):
    cfg = _cfg(tiny_data, uri=str(tmp_path / "gt"))
    dataset = GeneratedDataset(cfg.data.root)
    result = run_flow_stage(cfg, progress=False)
    manifest = json.loads((tmp_path / "gt" / "manifest.json").read_text())
    assert manifest == result.manifest and manifest["config_hash"]
    for split in ("train", "val", "test"):
        files = sorted(p.name for p in (tmp_path / "gt" / split).iterdir())
        assert files == [f"shard-{i:06d}.tar" for i in range(len(manifest["splits"][split]["shards"]))]
    train = list(shards.iter_samples(cfg.shards.uri, "train"))
    assert {s["meta"]["k"] for s in train} == {-2, -1, 1, 2} and len(train) == manifest["splits"]["train"]["samples"]
    for sample in train:
        meta = sample["meta"]
        clip = dataset.read_clip("train", meta["video"])
        want, _ = dataset.pair_flow("train", meta["video"], meta["t"], meta["k"])
        np.testing.assert_allclose(sample["flow"], want, atol=0.02, rtol=1e-3)  # float16
        np.testing.assert_array_equal(sample["img1"], clip.frames[meta["t"] + meta["k"]])
        np.testing.assert_array_equal(sample["label"], clip.labels[meta["t"]])
        assert sample["__key__"] == f"{meta['video']}_{meta['t']:06d}_{meta['k']}"
    assert all(s["label1"] is None and s["valid"] is None for s in train)  # evaluation fields: val and test only
    for split in ("val", "test"):  # every frame labelled; the next frame's label and the validity mask come along
        val = list(shards.iter_samples(cfg.shards.uri, split))
        assert len(val) == 4 and all(s["label"] is not None and s["label1"] is not None for s in val)
        clip = dataset.read_clip(split, val[1]["meta"]["video"])
        np.testing.assert_allclose(val[1]["flow"], clip.flows[1], atol=0.02, rtol=1e-3)
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
