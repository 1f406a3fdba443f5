import json
import os

import numpy as np
import pytest

from etc_core.config import DataConfig
from etc_core.data import GeneratedDataset, make_clip, write_dataset
from etc_core.data.synthetic import class_names
from etc_core.errors import DatasetError


def test_clip_shapes_dtypes_and_determinism():
    clip = make_clip(seed=3, num_frames=5, height=40, width=56, num_classes=4)
    assert clip.frames.shape == (5, 40, 56, 3) and clip.frames.dtype == np.uint8
    assert clip.labels.shape == (5, 40, 56) and clip.labels.dtype == np.uint8
    assert clip.flows.shape == (4, 2, 40, 56) and clip.flows.dtype == np.float32
    assert clip.valid.shape == (4, 40, 56) and clip.valid.dtype == bool
    again = make_clip(seed=3, num_frames=5, height=40, width=56, num_classes=4)
    for a, b in [(clip.frames, again.frames), (clip.labels, again.labels), (clip.flows, again.flows)]:
        assert np.array_equal(a, b)
    other = make_clip(seed=4, num_frames=5, height=40, width=56, num_classes=4)
    assert not np.array_equal(clip.frames, other.frames)


def test_every_class_in_every_clip_and_there_is_motion_occlusion_and_border_crossing():
    seen_out_of_frame = seen_occlusion = False
    for seed in range(6):
        clip = make_clip(seed=seed, num_frames=10, height=48, width=64, num_classes=6)
        assert set(np.unique(clip.labels)) == set(range(6)), seed
        assert np.abs(clip.flows).max() > 0.5  # things move
        moving_objects = (clip.labels[:-1] > 0) & (np.hypot(*clip.flows.transpose(1, 0, 2, 3)) > 0.2)
        assert moving_objects.any()
        px = np.arange(64)[None, None] + clip.flows[:, 0]
        py = np.arange(48)[None, :, None] + clip.flows[:, 1]
        in_frame = (px >= 0) & (px <= 63) & (py >= 0) & (py <= 47)
        seen_out_of_frame |= bool((~in_frame).any())
        seen_occlusion |= bool((in_frame & ~clip.valid).any())
    assert seen_out_of_frame and seen_occlusion


def test_any_size_and_bad_arguments():
    assert make_clip(0, 2, 17, 333, 2).frames.shape == (2, 17, 333, 3)
    with pytest.raises(ValueError, match="num_frames"):
        make_clip(0, 1, 32, 32, 3)
    assert class_names(3) == ["background", "disk", "square"]
    assert len(set(class_names(20))) == 20


def _cfg(tmp_path, **kw):
    base = dict(root=str(tmp_path / "data"), num_videos=3, val_fraction=0.3, num_frames=5, height=24, width=32,
                num_classes=4, label_every=2, label_offset=1)
    return DataConfig(**{**base, **kw})


def test_write_and_read_roundtrip_with_sparse_labels(tmp_path):
    cfg = _cfg(tmp_path)
    ds = write_dataset(cfg, progress=False)
    assert ds.clip_ids("train") == ["clip_000000", "clip_000001"] and ds.clip_ids("val") == ["clip_000000"]
    assert ds.labelled_frames == [1, 3]
    root = tmp_path / "data"
    assert sorted(os.listdir(root / "train" / "clip_000001" / "labels")) == ["000001.png", "000003.png"]
    clip = ds.read_clip("train", "clip_000001")
    from etc_core.data.generated import clip_seed

    ref = make_clip(clip_seed(0, "train", 1), 5, 24, 32, 4, noise=cfg.noise)
    assert np.array_equal(clip.frames, ref.frames) and np.array_equal(clip.flows, ref.flows)
    assert np.array_equal(clip.valid, ref.valid)
    assert np.array_equal(clip.labels[[1, 3]], ref.labels[[1, 3]])
    assert (clip.labels[[0, 2, 4]] == 255).all() and clip.labelled == [1, 3]
    assert "train: 2 clips, 10 frames, 4 labelled" in ds.summary()
    gt_flow, gt_valid = ds.pair_flow("train", "clip_000001", 2, 1)
    assert np.array_equal(gt_flow, clip.flows[2]) and np.array_equal(gt_valid, clip.valid[2])
    # val clips differ from train clips
    assert not np.array_equal(ds.read_clip("val", "clip_000000").frames, ds.read_clip("train", "clip_000000").frames)


def test_rerun_reuses_and_completes_and_refuses_other_settings(tmp_path):
    cfg = _cfg(tmp_path)
    write_dataset(cfg, progress=False)
    root = tmp_path / "data"
    # a killed run: manifest missing, one clip half-written
    (root / "dataset.json").unlink()
    stamp = (root / "train" / "clip_000000" / "clip.json").stat().st_mtime_ns
    (root / "train" / "clip_000001.tmp").mkdir()
    (root / "train" / "clip_000001.tmp" / "junk").write_text("x")
    import shutil

    shutil.rmtree(root / "train" / "clip_000001")
    write_dataset(cfg, progress=False)
    assert (root / "train" / "clip_000000" / "clip.json").stat().st_mtime_ns == stamp  # kept, not redone
    assert (root / "train" / "clip_000001" / "clip.json").is_file()
    assert not (root / "train" / "clip_000001.tmp").exists()
    with pytest.raises(DatasetError, match=r"dataset.json: generated with data.height=24, config asks for 40"):
        write_dataset(_cfg(tmp_path, height=40), progress=False)


def test_reader_names_the_missing_or_broken_file(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset.json: not found"):
        GeneratedDataset(tmp_path)
    ds = write_dataset(_cfg(tmp_path), progress=False)
    frame = tmp_path / "data" / "train" / "clip_000000" / "frames" / "000002.png"
    frame.unlink()
    with pytest.raises(DatasetError, match=r"clip_000000/frames/000002.png: missing"):
        ds.read_clip("train", "clip_000000")
    flow = tmp_path / "data" / "val" / "clip_000000" / "flows" / "000000.npy"
    flow.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"flows/000000.npy: unreadable"):
        ds.read_clip("val", "clip_000000")
    with pytest.raises(DatasetError, match="no split 'test'"):
        ds.clip_ids("test")
    manifest = tmp_path / "data" / "dataset.json"
    manifest.write_text(json.dumps({"format": "other"}))
    with pytest.raises(DatasetError, match="format 'other'"):
        GeneratedDataset(tmp_path / "data")
