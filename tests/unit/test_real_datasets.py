"""Cityscapes and CamVid readers on tiny fake trees in the official naming; check-dataset; the real configs."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from etc_core.cli import main as cli_main
from etc_core.config import DataConfig, load_config
from etc_core.data import open_dataset
from etc_core.data.camvid import CamVidDataset
from etc_core.data.cityscapes import CityscapesDataset, train_id_lut
from etc_core.errors import DatasetError
from etc_core.flow.stage import plan_shards
from tests.conftest import REPO, run_python
from tests.real_trees import (H, W, assert_breakage_named, camvid_number, frame_number, label_pattern, make_camvid,
                              make_cityscapes)


@pytest.fixture(scope="module")
def cs_root(tmp_path_factory):
    return make_cityscapes(tmp_path_factory.mktemp("cityscapes"))


@pytest.fixture(scope="module")
def cv_root(tmp_path_factory):
    return make_camvid(tmp_path_factory.mktemp("camvid"))


def test_cityscapes_snippets_labels_and_train_ids(cs_root):
    ds = open_dataset(DataConfig(kind="cityscapes", root=str(cs_root)))
    assert isinstance(ds, CityscapesDataset) and ds.num_classes == 19 and ds.class_names[13] == "car"
    assert ds.splits == ["train", "val"]
    assert ds.clip_ids("train") == ["aachen_000000_000019", "bochum_000001_000019"]
    assert ds.clip_ids("val") == ["frankfurt_000000_000294", "frankfurt_000000_001016"]
    assert ds.clip_layout("val", "frankfurt_000000_001016") == (30, H, W, [19])
    clip = ds.read_clip("val", "frankfurt_000000_001016")  # Frankfurt: frames 000997-001026
    assert clip.frames.shape == (30, H, W, 3) and clip.labels.shape == (30, H, W)
    assert [frame_number(f) for f in clip.frames] == list(range(997, 1027))
    assert clip.labelled == [19] and clip.flows is None
    label_ids = label_pattern(H, W, 34)
    np.testing.assert_array_equal(clip.labels[19], train_id_lut()[label_ids])
    expect = {7: 0, 8: 1, 11: 2, 21: 8, 23: 10, 24: 11, 26: 13, 33: 18, 0: 255, 6: 255, 9: 255, 29: 255, 30: 255}
    for label_id, train_id in expect.items():
        assert set(np.unique(clip.labels[19][label_ids == label_id])) == {train_id}
    assert set(np.unique(clip.labels[19])) == set(range(19)) | {255}
    assert ds.counts()["train"] == {"sequences": 2, "clips": 2, "frames": 60, "labelled": 2}


def test_cityscapes_resize_and_pairs_around_the_labelled_frame(cs_root, tmp_path):
    ds = open_dataset(DataConfig(kind="cityscapes", root=str(cs_root), resize=0.5))
    clip = ds.read_clip("train", "aachen_000000_000019")
    assert clip.frames.shape == (30, H // 2, W // 2, 3) and clip.labels.shape == (30, H // 2, W // 2)
    assert ds.clip_layout("train", "aachen_000000_000019") == (30, H // 2, W // 2, [19])
    assert set(np.unique(clip.labels[19])) <= set(range(19)) | {255}
    cfg = load_config(None, [f"data.root={cs_root}", "data.kind=cityscapes", "shards.k=[-2, -1, 1, 2, 3]",
                             f"shards.uri={tmp_path / 'shards'}"])
    plan = plan_shards(open_dataset(cfg.data), cfg)
    train = sorted(s for shard in plan["train"] for s in shard)
    assert train == sorted((c, 19, k, True) for c in ("aachen_000000_000019", "bochum_000001_000019")
                           for k in (-2, -1, 1, 2, 3))
    val = [s for shard in plan["val"] for s in shard]
    assert len(val) == 2 * 29 and {s[1] for s in val if s[3]} == {19} and {s[2] for s in val} == {1}


def _drop_frame(root):
    (root / "leftImg8bit_sequence/train/bochum/bochum_000001_000005_leftImg8bit.png").unlink()
    return r"leftImg8bit_sequence/train/bochum/bochum_000001_000005_leftImg8bit.png: missing"


def _drop_label(root):
    (root / "gtFine/val/frankfurt/frankfurt_000000_001016_gtFine_labelIds.png").unlink()
    return (r"gtFine/val/frankfurt/frankfurt_000000_001016_gtFine_labelIds.png: missing "
            r"\(frame frankfurt_000000_000997_leftImg8bit.png is in no labelled 30-frame snippet\)")


def _bad_name(root):
    d = root / "leftImg8bit_sequence/train/aachen"
    (d / "aachen_000000_000003_leftImg8bit.png").rename(d / "aachen_0_3_leftImg8bit.png")
    return r"aachen/aachen_0_3_leftImg8bit.png: malformed name"


def _no_gtfine(root):
    shutil.rmtree(root / "gtFine")
    return r"gtFine: directory not found"


def _label_size(root):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(
        root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png")
    return r"aachen_000000_000019_gtFine_labelIds.png: size 8x8, its frame is 64x128"


@pytest.mark.parametrize("breakage", [_drop_frame, _drop_label, _bad_name, _no_gtfine, _label_size])
def test_cityscapes_broken_tree_names_the_path(cs_root, tmp_path, breakage):
    assert_breakage_named(CityscapesDataset, cs_root, tmp_path / "cs", breakage)


def test_camvid_clips_windows_and_void(cv_root, caplog):
    with caplog.at_level(logging.WARNING):
        ds = open_dataset(DataConfig(kind="camvid", root=str(cv_root)))
    assert not caplog.records  # the SegNet images match the extracted frames
    assert isinstance(ds, CamVidDataset) and ds.num_classes == 11 and ds.splits == ["train", "val"]
    assert ds.clip_ids("train") == ["0016E5_00390", "0016E5_00420"]
    assert ds.clip_layout("train", "0016E5_00390") == (30, H, W, [19])  # frames 371..400
    assert ds.clip_layout("val", "Seq05VD_f00000") == (11, H, W, [0])  # cut at the video's first frame
    assert ds.clip_layout("val", "Seq05VD_f00030") == (30, H, W, [19])  # frames 11..40
    clip = ds.read_clip("train", "0016E5_00420")
    assert [frame_number(f) for f in clip.frames] == list(range(401, 431)) and clip.labelled == [19]
    small = label_pattern(H // 2, W // 2, 12)
    want = np.where(small == 11, 255, small).repeat(2, axis=0).repeat(2, axis=1)  # nearest 2x, void -> 255
    np.testing.assert_array_equal(clip.labels[19], want)
    assert (clip.labels[:19] == 255).all() and (clip.labels[20:] == 255).all()
    assert ds.counts()["val"] == {"sequences": 1, "clips": 2, "frames": 41, "labelled": 2}
    assert camvid_number("Seq05VD_f00030") == 30


def test_camvid_bad_ids_misaligned_frames_and_broken_tree(cv_root, tmp_path, caplog):
    root = tmp_path / "cv"
    shutil.copytree(cv_root, root)
    Image.fromarray(np.full((H // 2, W // 2), 12, np.uint8)).save(root / "valannot/Seq05VD_f00030.png")
    segnet_image = root / "train/0016E5_00390.png"
    Image.fromarray(255 - np.asarray(Image.open(segnet_image))).save(segnet_image)  # not the frame it names
    with caplog.at_level(logging.WARNING):
        ds = CamVidDataset(root)
    assert any("0016E5_000390.png differs from" in r.getMessage() for r in caplog.records)
    with pytest.raises(DatasetError, match=r"valannot/Seq05VD_f00030.png: id 12 is not a camvid label id"):
        ds.read_clip("val", "Seq05VD_f00030")
    (root / "frames/0016E5/0016E5_000380.png").unlink()
    with pytest.raises(DatasetError, match=r"frames/0016E5/0016E5_000380.png: missing \(inside the clip around "):
        CamVidDataset(root)
    (root / "trainannot/0016E5_00390.png").rename(root / "trainannot/0016E5 390.png")
    with pytest.raises(DatasetError, match=r"trainannot/0016E5 390.png: malformed name"):
        CamVidDataset(root)
    (root / "trainannot/0016E5 390.png").rename(root / "trainannot/0016E5_00390.png")
    shutil.rmtree(root / "frames/0016E5")
    with pytest.raises(DatasetError, match=r"frames/0016E5: directory not found"):
        CamVidDataset(root)


def test_check_dataset_prints_counts_and_exits_0(cs_root, cv_root, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["check-dataset", "--kind", "cityscapes", "--root", str(cs_root)])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "train: 2 sequences, 60 frames, 2 labelled frames" in out
    assert "val: 2 sequences, 60 frames, 2 labelled frames" in out
    with pytest.raises(SystemExit) as exit_:
        cli_main(["check-dataset", "--kind", "camvid", "--root", str(cv_root)])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "train: 1 sequences, 60 frames, 2 labelled frames" in out and "val: 1 sequences, 41 frames" in out


def test_check_dataset_on_a_broken_tree_exits_2_with_one_line(cs_root, tmp_path):
    root = tmp_path / "cs"
    shutil.copytree(cs_root, root)
    _drop_frame(root)
    proc = run_python("-m", "etc_core.cli", "check-dataset", "--kind", "cityscapes", "--root", str(root), timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"DatasetError: {root}/leftImg8bit_sequence/train/bochum/bochum_000001_000005_leftImg8bit.png: missing "
        f"(frame 5 of the snippet around labelled frame 000019)"]
    with pytest.raises(SystemExit) as exit_:
        cli_main(["check-dataset", "--kind", "camvid", "--root", str(tmp_path / "nowhere")])
    assert exit_.value.code == 2


def test_download_help_and_real_configs_load(capsys, monkeypatch, tmp_path):
    with pytest.raises(SystemExit):
        cli_main(["download-help", "--kind", "cityscapes", "--root", "/data/cs"])
    out = capsys.readouterr().out
    assert "leftImg8bit_sequence_trainvaltest.zip" in out and "/data/cs/gtFine/train/aachen" in out
    for var in ("CITYSCAPES_ROOT", "CAMVID_ROOT", "ETC_BUCKET"):
        monkeypatch.setenv(var, str(tmp_path) if var != "ETC_BUCKET" else "bucket")
    cs = load_config(REPO / "configs" / "cityscapes.yaml")
    assert cs.data.kind == "cityscapes" and cs.train.crop == (769, 769) and cs.shards.k == [-2, -1, 1, 2, 3]
    assert cs.shards.uri == "s3://bucket/etc/cityscapes/shards" and cs.flow.source == "ptlflow"
    assert (cs.train.lr, cs.train.head_lr_mult, cs.train.poly_power, cs.train.optimizer) == (0.01, 10.0, 0.9, "sgd")
    assert cs.train.batch_size * cs.train.workers == 8 and cs.train.max_steps == 200 * cs.train.steps_per_epoch
    cv = load_config(REPO / "configs" / "camvid.yaml")
    assert cv.data.kind == "camvid" and cv.train.crop == (720, 720) and cv.shards.k == [-2, -1, 1, 2, 3]


@pytest.mark.parametrize("error", [DatasetError, ValueError])
def test_open_image_raises_the_callers_error_in_one_line(tmp_path, error):
    from etc_core.storage.images import open_image

    with pytest.raises(error, match=r"^\S*nothing.png: missing$"):
        open_image(tmp_path / "nothing.png", error)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(error, match=r"^\S*broken.png: unreadable image \(cannot identify image file [^\n]*\)$"):
        open_image(tmp_path / "broken.png", error)
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(tmp_path / "ok.png")
    with open_image(tmp_path / "ok.png", error, decode=False) as im:
        assert im.size == (7, 5)
    assert np.asarray(open_image(tmp_path / "ok.png", error)).shape == (5, 7, 3)
