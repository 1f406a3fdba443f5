"""Flow encodings in the shards (etc_core/data/flow_codec.py): KITTI's 16-bit PNG within 1/128 px, float16 npy for
what it cannot hold, old npy shard sets, the manifest's encoding, a KITTI reader on our PNG, and no cache key moved."""
from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from etc_core.config import load_config
from etc_core.data import flow_codec, shards
from etc_core.data.png import decode_png
from etc_core.storage import uri as storage

H, W = 12, 20


def _flow(low: float, high: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, (2, H, W)).astype(np.float32)


def test_png16_round_trip_is_within_half_a_step_over_the_whole_range():
    flow = _flow(flow_codec.PNG16_MIN, flow_codec.PNG16_MAX)
    flow[:, 0, :3] = [[flow_codec.PNG16_MIN, flow_codec.PNG16_MAX, 0.0]] * 2  # both ends and zero are exact
    field, data = flow_codec.encode_flow(flow, "png16")
    decoded = flow_codec.decode_flow(field, data)
    assert field == "flow.png" and decoded.dtype == np.float32 and decoded.shape == (2, H, W)
    assert np.abs(decoded - flow).max() <= 1 / 128  # KITTI's 1/64 px steps, rounded
    np.testing.assert_array_equal(decoded[:, 0, :3], flow[:, 0, :3])
    bgr = decode_png(data, "unchanged")  # uint16 [H,W,3], BGR: valid = 1, v, u = 64 * flow + 2**15
    assert bgr.dtype == np.uint16 and (bgr[..., 0] == 1).all()
    np.testing.assert_array_equal(bgr[..., 2], np.rint(flow[0] * 64) + 2**15)


def test_flow_beyond_kitti_range_is_kept_as_npy_not_clipped_or_wrapped():
    for value in (flow_codec.PNG16_MAX + 0.01, -600.0, 1000.0):
        flow = _flow(-3, 3)
        flow[1, 4, 5] = value
        assert not flow_codec.png16_fits(flow)
        field, data = flow_codec.encode_flow(flow, "png16")
        assert field == "flow.npy"
        np.testing.assert_allclose(flow_codec.decode_flow(field, data), flow, rtol=1e-3, atol=1e-3)  # float16
    edge = _flow(-3, 3)
    edge[0, 0, 0] = -512.004  # rounds onto -512: still in range, within 1/128 px
    assert flow_codec.encode_flow(edge, "png16")[0] == "flow.png"
    with pytest.raises(ValueError, match="unknown"):
        flow_codec.encode_flow(edge, "jpeg")


def test_a_kitti_reader_decodes_our_png(tmp_path):
    """ptlflow's flow_utils.flow_read hands .png files to its flowpy.flow_read (pypng, RGB = u, v, valid, the KITTI
    devkit's layout); that module is loaded from its file here, without importing ptlflow and its models."""
    path = Path(importlib.util.find_spec("ptlflow").origin).parent / "utils" / "external" / "flowpy.py"
    spec = importlib.util.spec_from_file_location("flowpy", path)
    flowpy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flowpy)
    flow = _flow(-40, 40, seed=1)
    field, data = flow_codec.encode_flow(flow, "png16")
    (tmp_path / "f.png").write_bytes(data)
    kitti = flowpy.flow_read(str(tmp_path / "f.png"))  # [H,W,2], x first; NaN where invalid
    np.testing.assert_array_equal(kitti.transpose(2, 0, 1), flow_codec.decode_flow(field, data))


def _write_set(root: Path, encoding: str | None, flows: list[np.ndarray]) -> None:
    """One shard of the given flows, written as encode_sample writes them; the manifest names the encoding unless
    None (a set written before encodings existed)."""
    frames = np.zeros((H, W, 3), np.uint8)
    samples = [shards.encode_sample(shards.sample_key("clip_000000", t, 1), frames, frames, flow, None, {"t": t},
                                    flow_encoding=encoding or "npy") for t, flow in enumerate(flows)]
    nbytes = shards.write_shard(samples, storage.join(str(root), shards.shard_name("train", 0)))
    manifest = {"format": shards.FORMAT, "config_hash": "x", "config": {},
                "splits": {"train": {"samples": len(flows), "shards": [
                    {"path": shards.shard_name("train", 0), "samples": len(flows), "bytes": nbytes}]}}}
    shards.write_manifest(str(root), manifest if encoding is None else {**manifest, "flow_encoding": encoding})


def test_old_npy_sets_and_png16_sets_read_back_alike(tmp_path):
    flows = [_flow(-30, 30, seed=s) for s in range(3)]
    flows[2][0, 0, 0] = 700.0  # out of KITTI's range: this sample keeps flow.npy inside the png16 set
    _write_set(tmp_path / "old", None, flows)
    _write_set(tmp_path / "new", "png16", flows)
    assert shards.flow_encoding(shards.read_manifest(str(tmp_path / "old"))) == "npy"
    assert shards.flow_encoding(shards.read_manifest(str(tmp_path / "new"))) == "png16"
    with tarfile.open(tmp_path / "new" / "train" / "shard-000000.tar") as tar:
        assert [n.split(".", 1)[1] for n in tar.getnames() if ".flow." in n] == ["flow.png", "flow.png", "flow.npy"]
    old = list(shards.iter_samples(str(tmp_path / "old"), "train"))
    new = list(shards.iter_samples(str(tmp_path / "new"), "train"))
    for a, b, flow in zip(old, new, flows):
        assert a["flow"].dtype == b["flow"].dtype == np.float32
        np.testing.assert_allclose(a["flow"], flow, atol=1 / 64)  # float16: 1/64 px steps from 16 px
        np.testing.assert_allclose(b["flow"], flow, atol=1 / 128 if np.abs(flow).max() < 512 else 1 / 2)


def test_the_stage_writes_the_configured_encoding_names_it_and_an_old_set_keeps_npy(tmp_path):
    from etc_core.data import write_dataset
    from etc_core.flow.estimate import GroundTruthEstimator
    from etc_core.flow.stage import _claim, plan_shards, run_flow_stage, stage_identity
    from etc_core.flow.work import ShardJob, write_shards_sequentially

    cfg = load_config(None, [f"data.root={tmp_path / 'data'}", f"shards.uri={tmp_path / 'shards'}",
                             "data.num_videos=4", "data.num_frames=3", "data.height=16", "data.width=24"])
    assert cfg.shards.flow_encoding == "png16"
    dataset = write_dataset(cfg.data, progress=False)
    jobs = [ShardJob(split, i, s) for split, shard_list in plan_shards(dataset, cfg).items()
            for i, s in enumerate(shard_list)]
    write_shards_sequentially(cfg, dataset, jobs, GroundTruthEstimator(dataset))
    manifest = run_flow_stage(cfg, dataset, progress=False).manifest  # every shard there: no Ray, manifest only
    assert manifest["flow_encoding"] == "png16"
    assert json.loads((tmp_path / "shards" / "stage.json").read_text())["flow_encoding"] == "png16"
    with tarfile.open(tmp_path / "shards" / shards.shard_name("train", 0)) as tar:
        assert {n.split(".", 1)[1] for n in tar.getnames() if ".flow." in n} == {"flow.png"}
    # a set begun before the key (its stage.json names no encoding) is resumed in npy, whatever the config says
    stamp = tmp_path / "shards" / "stage.json"
    stamp.write_text(json.dumps({k: v for k, v in json.loads(stamp.read_text()).items() if k != "flow_encoding"}))
    (tmp_path / "shards" / "manifest.json").unlink()
    assert _claim(cfg.shards.uri, stage_identity(cfg), cfg) == (None, "npy")


def test_the_encoding_is_in_no_cache_key():
    """Neither the shard set's hash nor a training stage's (etc_core.train.run.stage_hash hashes hash_dump(shards))."""
    from etc_core.flow.stage import config_hash, stage_identity
    from etc_core.section import hash_dump

    png16, npy = (load_config(None, [f"shards.flow_encoding={e}"]) for e in ("png16", "npy"))
    assert config_hash(stage_identity(png16)) == config_hash(stage_identity(npy))
    assert hash_dump(png16.shards) == hash_dump(npy.shards) == hash_dump(load_config().shards)
    assert "flow_encoding" not in hash_dump(npy.shards) and npy.shards.model_dump()["flow_encoding"] == "npy"
