import json
import os

import numpy as np
import pytest

from etc_core.config import DataConfig
from etc_core.data import GeneratedDataset, make_clip, write_dataset
from etc_core.data.synthetic import Look, Scene, class_names
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
    assert class_names(3) == ["background", "disk", "cross"]
    assert len(set(class_names(20))) == 20


def _cfg(tmp_path, **kw):
    base = dict(root=str(tmp_path / "data"), num_videos=4, val_fraction=0.25, test_fraction=0.25, num_frames=5,
                height=24, width=32, num_classes=4, label_every=2, label_offset=1)
    return DataConfig(**{**base, **kw})


def test_write_and_read_roundtrip_with_sparse_labels(tmp_path):
    cfg = _cfg(tmp_path)
    ds = write_dataset(cfg, progress=False)
    assert ds.clip_ids("train") == ["clip_000000", "clip_000001"] and ds.clip_ids("val") == ["clip_000000"]
    assert ds.clip_ids("test") == ["clip_000000"]
    assert ds.labelled_frames("train") == [1, 3]
    assert ds.labelled_frames("val") == ds.labelled_frames("test") == [0, 1, 2, 3, 4]  # every frame
    root = tmp_path / "data"
    assert sorted(os.listdir(root / "train" / "clip_000001" / "labels")) == ["000001.png", "000003.png"]
    clip = ds.read_clip("train", "clip_000001")
    from etc_core.data.generated import clip_seed

    from etc_core.data.generated import look_of, scene_of

    ref = make_clip(clip_seed(0, "train", 1), 5, 24, 32, 4, scene_of(ds.spec), look_of(ds.spec))
    assert np.array_equal(clip.frames, ref.frames) and np.array_equal(clip.flows, ref.flows)
    assert np.array_equal(clip.valid, ref.valid)
    assert np.array_equal(clip.labels[[1, 3]], ref.labels[[1, 3]])
    assert (clip.labels[[0, 2, 4]] == 255).all() and clip.labelled == [1, 3]
    assert "train: 2 clips, 10 frames, 4 labelled" in ds.summary()
    gt_flow, gt_valid = ds.pair_flow("train", "clip_000001", 2, 1)
    assert np.array_equal(gt_flow, clip.flows[2]) and np.array_equal(gt_valid, clip.valid[2])
    # val and test clips differ from train clips and each other; their every frame is labelled
    frames = [ds.read_clip(split, "clip_000000").frames for split in ("train", "val", "test")]
    assert not np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[1], frames[2])
    assert ds.read_clip("test", "clip_000000").labelled == [0, 1, 2, 3, 4]
    assert sorted(os.listdir(root / "test" / "clip_000000" / "labels")) == [f"{t:06d}.png" for t in range(5)]


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
    with pytest.raises(DatasetError, match="no split 'extra'"):
        ds.clip_ids("extra")
    manifest = tmp_path / "data" / "dataset.json"
    manifest.write_text(json.dumps({"format": "other"}))
    with pytest.raises(DatasetError, match="format 'other'"):
        GeneratedDataset(tmp_path / "data")


NUISANCES = {"noise": 0.05, "motion_blur": 0.8, "illumination": 0.4, "shot_noise": 1.0, "read_noise": 4.0,
             "jpeg_quality": (30, 40)}


@pytest.mark.parametrize("knob", sorted(NUISANCES))
def test_each_nuisance_changes_pixels_never_labels_or_flow(knob):
    from dataclasses import replace

    args = dict(seed=9, num_frames=4, height=40, width=64, num_classes=5)
    exact = make_clip(**args, look=Look.exact())
    one = make_clip(**args, look=replace(Look.exact(), **{knob: NUISANCES[knob]}))
    assert np.array_equal(one.labels, exact.labels)
    assert np.array_equal(one.flows, exact.flows) and np.array_equal(one.valid, exact.valid)
    diff = np.abs(one.frames.astype(int) - exact.frames.astype(int))
    assert diff.mean() > 0.3, knob  # the nuisance is there
    again = make_clip(**args, look=replace(Look.exact(), **{knob: NUISANCES[knob]}))
    assert np.array_equal(one.frames, again.frames)  # and deterministic


def test_nuisances_vary_from_frame_to_frame():
    """What makes a per-frame model flicker: the same surface looks different in consecutive frames beyond motion."""
    import torch

    from etc_core.flow import warp

    args = dict(seed=2, num_frames=6, height=48, width=80, num_classes=5, scene=Scene(thin_objects=0))
    residual = {}
    for name, look in (("exact", Look.exact()), ("default", Look())):
        clip = make_clip(**args, look=look)
        frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float()
        err = (warp(frames[1:], torch.from_numpy(clip.flows)) - frames[:-1]).abs().mean(1)
        residual[name] = float(err[torch.from_numpy(clip.valid)].mean())
    assert residual["default"] > 3 * residual["exact"]


def test_jitter_and_thin_bars_are_geometry_and_stay_exact():
    """Camera jitter moves every layer (the flow carries it); thin bars are real objects with exact labels."""
    from etc_core.data.synthetic import pair_flow

    args = dict(seed=4, num_frames=5, height=64, width=96, num_classes=5)
    still = make_clip(**args, scene=Scene(jitter=0.0, thin_objects=0), look=Look.exact())
    shaky = make_clip(**args, scene=Scene(jitter=2.0, thin_objects=0), look=Look.exact())
    assert not np.array_equal(still.flows, shaky.flows)  # the jitter is in the flow ...
    flow, valid = pair_flow(**args, t=1, k=2, scene=Scene(jitter=2.0, thin_objects=0))
    lab = torch_warp_nearest(shaky.labels[3], flow)
    ok = valid & (lab >= 0)
    assert (lab[ok] == shaky.labels[1][ok]).mean() > 0.97  # ... and labels warp onto labels (up to edge rounding)
    bars = make_clip(**args, scene=Scene(thin_objects=3, jitter=0.0), look=Look.exact())
    none = make_clip(**args, scene=Scene(thin_objects=0, jitter=0.0), look=Look.exact())
    assert not np.array_equal(bars.labels, none.labels)


def torch_warp_nearest(labels: np.ndarray, flow: np.ndarray) -> np.ndarray:
    import torch

    from etc_core.metrics import warp_labels

    out = warp_labels(torch.from_numpy(labels)[None].long(), torch.from_numpy(flow)[None])[0].numpy()
    return np.where(out == 255, -1, out)


def test_lookalike_pairs_share_colour_and_differ_in_shape():
    from etc_core.data.synthetic import _class_hue

    assert _class_hue(1, 7, True) == _class_hue(2, 7, True) != _class_hue(3, 7, True)
    assert len({_class_hue(c, 7, False) for c in range(1, 7)}) == 6
    assert class_names(7)[1:] == ["disk", "cross", "square", "ring", "triangle", "diamond"]  # pairs differ in shape
    # ... and in size, and a thin bar always takes the first class of its pair
    from etc_core.data.synthetic import _make_layers

    layers = _make_layers(np.random.default_rng(0), 4, 64, 96, 7, Scene(thin_objects=4, pair_scale=0.5))
    assert {layer.label % 2 for layer in layers if layer.shape == "bar"} == {1}
    first = [layer.radius for layer in layers if layer.shape not in (None, "bar") and layer.label % 2 == 1]
    second = [layer.radius for layer in layers if layer.shape not in (None, "bar") and layer.label % 2 == 0]
    assert max(second) <= min(first) + 1e-9  # object_scale 0.1-0.2: firsts >= 0.1, seconds <= 0.2 * 0.5


def test_camera_motion_moves_the_whole_picture_keeps_every_class_and_leaves_a_still_camera_as_it_was():
    args = dict(num_frames=8, height=64, width=112, num_classes=5)
    still, moving = Scene(thin_objects=0), Scene(thin_objects=0, camera_pan=6.0, camera_zoom=0.01)
    for seed in range(4):
        a = make_clip(seed, **args, scene=still, look=Look.exact())
        b = make_clip(seed, **args, scene=moving, look=Look.exact())
        assert set(np.unique(b.labels)) == set(range(5)), seed  # objects of every class stay in frame
        speed_a, speed_b = (np.median(np.hypot(*c.flows.transpose(1, 0, 2, 3))) for c in (a, b))
        assert speed_b > 4.0 > speed_a, (seed, speed_a, speed_b)  # 0.75-1.25 x 6 px per frame, about the median
        background = b.labels[:-1] == 0
        assert np.median(np.hypot(*b.flows.transpose(1, 0, 2, 3))[background]) > 4.0  # the background pans too
    # a still camera: the clips of before, byte for byte (the camera draws from a stream of its own)
    c = make_clip(3, **args, scene=Scene(thin_objects=0, camera_pan=0.0, camera_zoom=0.0))
    d = make_clip(3, **args, scene=still)
    assert np.array_equal(c.frames, d.frames) and np.array_equal(c.flows, d.flows)


def test_camera_settings_are_in_the_spec_only_when_set(tmp_path):
    from etc_core.data.generated import _spec, scene_of

    assert "camera_pan" not in _spec(_cfg(tmp_path))  # datasets written before the setting existed stay valid
    spec = _spec(_cfg(tmp_path, camera_pan=3.0))
    assert spec["camera_pan"] == 3.0 and "camera_zoom" not in spec
    assert scene_of(spec).camera_pan == 3.0 and scene_of(spec).camera_zoom == 0.0
    write_dataset(_cfg(tmp_path), progress=False)
    with pytest.raises(DatasetError, match=r"data.camera_pan=0.0, config asks for 3.0"):
        write_dataset(_cfg(tmp_path, camera_pan=3.0), progress=False)
