"""Shards without Ray: the ptlflow conversion, writing/reading one shard, loaders, corrupt shards, storage, plan."""
from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds

from etc_core.config import load_config
from etc_core.data import shards
from etc_core.errors import ConfigError, ShardError
from etc_core.flow.estimate import from_ptlflow_output, to_ptlflow_input
from etc_core.flow.warp import warp
from etc_core.storage import uri as storage

H, W = 16, 24


def _frames(seed: int, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, H, W, 3), dtype=np.uint8)


def test_ptlflow_input_is_bgr_in_unit_range():
    img0, img1 = _frames(0, 2), _frames(1, 2)
    images = to_ptlflow_input(img0, img1)
    assert images.shape == (2, 2, 3, H, W) and images.dtype == torch.float32
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    np.testing.assert_allclose(images[:, 0, 0].numpy(), img0[..., 2] / 255.0, atol=1e-6)  # B first
    np.testing.assert_allclose(images[:, 1, 2].numpy(), img1[..., 0] / 255.0, atol=1e-6)  # R last, image t+k


def test_ptlflow_output_in_project_convention_warps_back_a_constant_shift():
    # frame t+k is frame t moved by (+3, +2) pixels: ptlflow's forward flow (x first) is (3, 2) everywhere
    dx, dy = 3, 2
    img0 = _frames(2)[0]
    img1 = np.zeros_like(img0)
    img1[dy:, dx:] = img0[:-dy, :-dx]
    flows = torch.zeros(1, 1, 2, H, W)
    flows[:, :, 0], flows[:, :, 1] = dx, dy
    flow = from_ptlflow_output(flows)  # [1,2,H,W]
    assert flow.shape == (1, 2, H, W) and flow.dtype == np.float32
    warped = warp(torch.from_numpy(img1).permute(2, 0, 1)[None].float(), torch.from_numpy(flow))
    inside = (slice(0, H - dy), slice(0, W - dx))
    np.testing.assert_allclose(warped[0].permute(1, 2, 0).numpy()[inside], img0[inside], atol=1e-3)


def _write_local(root, samples_per_shard=(3, 2), labelled=True) -> list[dict]:
    written = []
    entries = []
    for index, n in enumerate(samples_per_shard):
        samples = []
        for j in range(n):
            t = index * 10 + j
            label = np.full((H, W), j, np.uint8) if labelled and j % 2 == 0 else None
            flow = np.random.default_rng(t).normal(size=(2, H, W)).astype(np.float32)
            samples.append(shards.encode_sample(shards.sample_key("clip_000000", t, 1), _frames(t)[0],
                                                _frames(t + 1)[0], flow, label, {"video": "clip_000000", "t": t}))
            written.append({"key": shards.sample_key("clip_000000", t, 1), "flow": flow, "label": label})
        url = storage.join(str(root), shards.shard_name("train", index))
        nbytes = shards.write_shard(samples, url)
        entries.append({"path": shards.shard_name("train", index), "samples": n, "bytes": nbytes})
    manifest = {"format": shards.FORMAT, "config_hash": "x", "config": {}, "versions": {},
                "splits": {"train": {"samples": sum(samples_per_shard), "shards": entries}}}
    shards.write_manifest(str(root), manifest)
    return written


def test_shard_round_trip_and_plain_readers(tmp_path):
    written = _write_local(tmp_path)
    got = list(shards.iter_samples(str(tmp_path), "train"))
    assert [s["__key__"] for s in got] == [w["key"] for w in written]
    for s, w in zip(got, written):
        assert s["img0"].dtype == np.uint8 and s["img0"].shape == (H, W, 3)
        assert s["flow"].dtype == np.float32 and s["flow"].shape == (2, H, W)
        np.testing.assert_allclose(s["flow"], w["flow"], atol=1e-2, rtol=1e-3)  # float16 storage
        assert (s["label"] is None) == (w["label"] is None)
    assert not list(tmp_path.rglob("*.tmp*"))
    first = str(tmp_path / "train" / "shard-000000.tar")
    plain = list(wds.WebDataset(first, shardshuffle=False))
    assert {"img0.png", "img1.png", "flow.npy", "meta.json", "label.png"} <= set(plain[0])
    with tarfile.open(first) as tar:
        assert "clip_000000_000000_1.flow.npy" in tar.getnames()


def test_sidecar_says_a_shard_is_finished_only_beside_a_shard_of_its_size(tmp_path):
    _write_local(tmp_path, samples_per_shard=(3,))
    url = str(tmp_path / "train" / "shard-000000.tar")
    size = (tmp_path / "train" / "shard-000000.tar").stat().st_size
    assert shards.finished_shard(url) == {"samples": 3, "bytes": size}
    with open(url, "ab") as f:  # another size than the sidecar states: not finished
        f.write(b"\0" * 512)
    assert shards.finished_shard(url) is None
    (tmp_path / "train" / "shard-000000.tar.json").unlink()
    assert shards.finished_shard(url) is None and shards.finished_shard(str(tmp_path / "none.tar")) is None


def test_stage_identity_keeps_its_hash_unless_half_is_on(tmp_path):
    from etc_core.flow.stage import config_hash, stage_identity

    base = [f"shards.uri={tmp_path}", "flow.source=ptlflow"]
    plain = config_hash(stage_identity(load_config(None, base)))
    speed = ["flow.batch_size=16", "flow.num_actors=3", "flow.max_cpus=8", "flow.gpus_per_actor=0.5"]
    assert config_hash(stage_identity(load_config(None, [*base, *speed]))) == plain  # how fast, not what
    assert config_hash(stage_identity(load_config(None, [*base, "flow.half=true"]))) != plain


def test_truncated_shard_names_the_shard(tmp_path):
    _write_local(tmp_path)
    bad = tmp_path / "train" / "shard-000001.tar"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(ShardError, match="shard-000001.tar"):
        list(shards.iter_samples(str(tmp_path), "train"))
    bad.write_bytes(b"not a tar file at all" * 50)
    with pytest.raises(ShardError, match="shard-000001.tar"):
        list(shards.iter_samples(str(tmp_path), "train"))


def test_missing_member_and_unsafe_names_are_refused(tmp_path):
    _write_local(tmp_path, samples_per_shard=(1,))
    url = str(tmp_path / "train" / "shard-000000.tar")
    with wds.TarWriter(url) as sink:  # a sample without flow.npy
        sink.write({"__key__": "clip_000000_000000_1", "img0.png": _frames(0)[0], "img1.png": _frames(1)[0],
                    "meta.json": {}})
    with pytest.raises(ShardError, match=r"shard-000000.tar: member clip_000000_000000_1.flow.\{png,npy\} missing"):
        list(shards.iter_samples(str(tmp_path), "train"))
    with wds.TarWriter(url) as sink:
        sink.write({"__key__": "../evil", "img0.png": _frames(0)[0], "img1.png": _frames(1)[0],
                    "flow.npy": np.zeros((2, H, W), np.float16), "meta.json": {}})
    with pytest.raises(ShardError, match="refusing member name"):
        list(shards.iter_samples(str(tmp_path), "train"))


def test_missing_manifest_is_one_line(tmp_path):
    with pytest.raises(ShardError, match="manifest.json: not found"):
        list(shards.iter_samples(str(tmp_path / "nothing"), "train"))


def test_train_loader_yields_exact_steps_per_rank(tmp_path):
    _write_local(tmp_path, samples_per_shard=(3, 2, 3))
    seen = []

    def flip(sample: dict) -> dict:
        seen.append(sample["label"].dtype)
        return {**sample, "img0": sample["img0"][:, ::-1]}

    for rank in (0, 1):
        loader = shards.make_loader(str(tmp_path), "train", 2, rank=rank, world_size=2, seed=3, transform=flip,
                                    steps_per_epoch=5)
        batches = list(loader)
        assert len(batches) == 5
        batch = batches[0]
        assert batch["img0"].shape == (2, 3, H, W) and batch["img0"].dtype == torch.uint8
        assert batch["flow"].shape == (2, 2, H, W) and batch["flow"].dtype == torch.float32
        assert batch["label"].shape == (2, H, W) and batch["label"].dtype == torch.int64
        assert len(batch["key"]) == 2 and {255} <= set(torch.cat([b["label"] for b in batches]).unique().tolist())
    assert set(seen) == {np.dtype(np.uint8)}
    two_workers = shards.make_loader(str(tmp_path), "train", 2, num_workers=2, steps_per_epoch=5)
    assert len(list(two_workers)) == 5


def test_train_order_for_a_seed_is_pinned(tmp_path):
    # the sample order of a seed is part of a run's reproducibility (make demo prints the same table): a change
    # in the shard resampler or in webdataset's public shuffle buffer shows up here first
    _write_local(tmp_path, samples_per_shard=(3, 2, 3))
    loader = shards.make_loader(str(tmp_path), "train", 2, seed=7, steps_per_epoch=4)
    epochs = [[int(k.split("_")[2]) for batch in loader for k in batch["key"]] for _ in range(2)]
    assert epochs == [[20, 1, 22, 1, 2, 11, 22, 1], [10, 22, 10, 11, 0, 21, 20, 0]]


def test_eval_loader_reads_each_sample_once_across_ranks(tmp_path):
    written = _write_local(tmp_path, samples_per_shard=(3, 2, 3))
    keys = []
    for rank in (0, 1):
        for batch in shards.make_loader(str(tmp_path), "train", 2, rank=rank, world_size=2, shuffle=False):
            keys += batch["key"]
    assert sorted(keys) == sorted(w["key"] for w in written)


def test_storage_local_put_list_size(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    dest = storage.join(str(tmp_path), "a", "b.bin")
    storage.put_file(str(src), dest)
    assert not src.exists() and storage.size(dest) == 3 and storage.read_bytes(dest) == b"abc"
    assert storage.list_files(str(tmp_path)) == [dest]
    assert storage.size(str(tmp_path / "none")) is None
    assert storage.join("s3://bucket/prefix/", "train/x.tar") == "s3://bucket/prefix/train/x.tar"


def test_shards_config_keys_and_validation(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # the moto_s3 fixture sets it for a whole session
    cfg = load_config(None, ["shards.uri=s3://bucket/flow/", "shards.k=[-2, 1]", "flow.model=raft_small"])
    assert cfg.shards.uri == "s3://bucket/flow" and cfg.shards.k == [-2, 1] and cfg.flow.weights == "none"
    assert cfg.flow.source == "ground_truth" and cfg.s3.endpoint_url is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # resolved once, where the config is loaded
    assert load_config(None).s3.access == ("http://127.0.0.1:9", None)
    assert load_config(None, ["s3.endpoint_url=http://minio:9000"]).s3.endpoint_url == "http://minio:9000"
    with pytest.raises(ConfigError, match="shards.k"):
        load_config(None, ["shards.k=[0, 1]"])
    with pytest.raises(ConfigError, match="flow.source"):
        load_config(None, ["flow.source=farneback"])


def test_plan_pairs_and_deterministic_assignment(tmp_path):
    from etc_core.flow.stage import plan_shards

    class Fake:
        spec = {"num_frames": 5, "height": H, "width": W}
        splits = ["train", "val"]  # no test split: none is planned

        def labelled_frames(self, split):
            return [0, 3]

        def clip_ids(self, split):
            return [f"clip_{i:06d}" for i in range(4 if split == "train" else 1)]

    cfg = load_config(None, [f"shards.uri={tmp_path}", "shards.k=[-1, 2]", "shards.max_samples_per_shard=3"])
    plan = plan_shards(Fake(), cfg)
    train = [s for shard in plan["train"] for s in shard]
    assert sorted({(t, k) for _, t, k, _ in train}) == [(0, 2), (3, -1)]  # t+k must stay inside the clip
    assert len(train) == 8 and all(len(shard) <= 3 for shard in plan["train"])
    val = [(t, k, lab) for shard in plan["val"] for _, t, k, lab in shard]
    assert val == [(0, 1, True), (1, 1, False), (2, 1, False), (3, 1, True)]
    assert plan["test"] == []
    assert plan_shards(Fake(), cfg) == plan
    reseeded = plan_shards(Fake(), load_config(None, [f"shards.uri={tmp_path}", "shards.k=[-1, 2]",
                                                       "shards.max_samples_per_shard=3", "shards.seed=5"]))
    assert sorted(s for shard in reseeded["train"] for s in shard) == sorted(train)  # same samples, other order


def test_ray_storage_goes_to_the_configured_endpoint_without_credentials_inside():
    access = storage.S3Access("http://etc:pw@127.0.0.1:9", "eu-west-1")  # user:password@ is no part of the host
    path, filesystem = storage.storage_location("s3://bucket/ray", access)
    options = filesystem.__reduce__()[1][0]  # what Ray pickles to every node
    assert path == "bucket/ray" and options["region"] == "eu-west-1"
    assert (options["scheme"], options["endpoint_override"]) == ("http", "127.0.0.1:9")
    assert options["access_key"] is None and options["secret_key"] is None  # each node's own chain
    assert storage.storage_location("/shared/ray", access) == ("/shared/ray", None)


def test_the_flow_stage_logs_every_count_and_speed_under_its_names():
    from etc_core.flow.stage import FlowStageResult

    manifest = {"splits": {"train": {"samples": 7, "shards": [{}, {}]}, "val": {"samples": 3, "shards": [{}]}}}
    result = FlowStageResult(manifest, pairs_computed=10, seconds=4.0, shards_written=2, shards_skipped=1,
                             startup_s=1.5, steady_pairs_per_s=3.0)
    assert result.metrics() == {  # what pipelines/precompute_flow.py and full.py's flow run log (etc_core/stages.py)
        "flow/train_shards": 2, "flow/train_samples": 7, "flow/val_shards": 1, "flow/val_samples": 3,
        "flow/pairs_computed": 10, "flow/pairs_per_s": 2.5, "flow/shards_written": 2,
        "flow/steady_pairs_per_s": 3.0, "flow/startup_s": 1.5, "flow/shards_skipped": 1}
