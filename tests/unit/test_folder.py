"""data.kind=folder (etc_core/data/folder.py, docs/own_data.md): a folder of one's own labelled videos, read, planned
into pairs, counted by check-dataset, and every broken tree one line naming the path."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from etc_core.cli import main as cli_main
from etc_core.config import DataConfig, load_config
from etc_core.data import open_dataset
from etc_core.data.folder import FolderDataset
from etc_core.errors import ConfigError, DatasetError
from etc_core.flow.sources import create_flow_source
from etc_core.flow.stage import plan_shards, stage_identity
from tests.conftest import REPO
from tests.real_trees import (FOLDER_CLASSES, H, W, assert_breakage_named, folder_label, frame_number,
                              make_folder)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("own"))


def test_clips_frames_and_every_label_of_a_clip(root):
    ds = open_dataset(DataConfig(kind="folder", root=str(root)))
    assert isinstance(ds, FolderDataset) and ds.num_classes == 2 and ds.class_names == FOLDER_CLASSES
    assert ds.splits == ["train", "val"] and ds.clip_ids("train") == ["street-2", "walk"]
    assert ds.clip_layout("train", "walk") == (6, H, W, [0, 3])  # frames 000001-000006, labels on 1 and 4
    clip = ds.read_clip("train", "walk")
    assert clip.frames.shape == (6, H, W, 3) and [frame_number(f) for f in clip.frames] == [1, 2, 3, 4, 5, 6]
    assert clip.labelled == [0, 3] and clip.flows is None
    np.testing.assert_array_equal(clip.labels[3], folder_label())
    assert (clip.labels[[1, 2, 4, 5]] == 255).all()
    assert ds.counts() == {"train": {"sequences": 2, "clips": 2, "frames": 12, "labelled": 3},
                           "val": {"sequences": 1, "clips": 1, "frames": 6, "labelled": 6}}


def test_resize_pairs_and_the_flow_sources_it_takes(root, tmp_path):
    cfg = load_config(None, ["data.kind=folder", f"data.root={root}", "data.resize=0.5", "shards.k=[-1, 1, 2]",
                             f"shards.uri={tmp_path}", "flow.source=dis"])
    ds = open_dataset(cfg.data)
    clip = ds.read_clip("val", "park")
    assert clip.frames.shape == (6, H // 2, W // 2, 3) and clip.labels.shape == (6, H // 2, W // 2)
    assert set(np.unique(clip.labels)) == {0, 1, 255} and clip.labelled == [0, 1, 2, 3, 4, 5]
    plan = plan_shards(ds, cfg)
    train = sorted(s for shard in plan["train"] for s in shard)
    assert train == sorted([("walk", 0, 1, True), ("walk", 0, 2, True), ("walk", 3, -1, True), ("walk", 3, 1, True),
                            ("walk", 3, 2, True), ("street-2", 2, -1, True), ("street-2", 2, 1, True),
                            ("street-2", 2, 2, True)])
    assert [s for shard in plan["val"] for s in shard] == [("park", t, 1, True) for t in range(5)]
    assert stage_identity(cfg)["data"]["resize"] == 0.5  # part of the shards' identity, as for the real datasets
    create_flow_source(cfg.flow).check(cfg.data)  # dis: fine
    truth = load_config(None, ["data.kind=folder", f"data.root={root}"])  # flow.source defaults to ground_truth
    with pytest.raises(ConfigError, match=r"^flow.source: ground_truth needs a dataset with exact flow, "
                                          r"data.kind=folder has none"):
        create_flow_source(truth.flow).check(truth.data)


def test_jpeg_frames_and_a_test_split(tmp_path):
    root = make_folder(tmp_path / "own", {"train": {"a": (3, [2])}, "val": {"b": (2, [1])}, "test": {"c": (4, [4])}},
                       suffix=".jpg")
    ds = FolderDataset(root)
    assert ds.splits == ["train", "val", "test"] and ds.clip_layout("test", "c") == (4, H, W, [3])
    assert ds.read_clip("train", "a").frames.shape == (3, H, W, 3)


def _no_classes(root):
    (root / "classes.txt").unlink()
    return r"classes.txt: missing \(one class name per line, the first is class id 0; see docs/own_data.md\)"


def _label_size(root):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "train/walk/labels/000004.png")
    return rf"train/walk/labels/000004.png: size 8x8, its frame is {H}x{W}"


def _no_val(root):
    shutil.rmtree(root / "val")
    return r"/val: directory not found \(one folder per clip, see docs/own_data.md\)"


def _not_numbered(root):
    frames = root / "train/walk/frames"
    (frames / "000002.png").rename(frames / "frame two.png")
    return r"train/walk/frames/frame two.png: malformed name, expected the frame's number"


def _gap(root):
    (root / "train/street-2/frames/000005.png").unlink()
    return r"train/street-2/frames/000005.png: missing \(frames are numbered without gaps, 000001.png to 000006.png\)"


def _padding(root):
    frames = root / "val/park/frames"
    (frames / "000006.png").rename(frames / "6.png")
    return r"val/park/frames/6.png: malformed name, expected 000006.png like 000001.png"


def _orphan_label(root):
    shutil.copy(root / "train/walk/labels/000001.png", root / "train/walk/labels/000009.png")
    return r"train/walk/labels/000009.png: no frame 000009 in \S+/train/walk/frames"


def _colour_label(root):
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "val/park/labels/000002.png")
    return r"val/park/labels/000002.png: mode RGB, expected a single-channel image of class ids"


def _stray_file(root):
    (root / "train/clip.mp4").write_bytes(b"")
    return r"train/clip.mp4: a file where clip folders are expected"


def _no_labels(root):
    shutil.rmtree(root / "val/park/labels")
    return r"/val: no labelled frame in any clip"


@pytest.mark.parametrize("breakage", [_no_classes, _label_size, _no_val, _not_numbered, _gap, _padding,
                                      _orphan_label, _colour_label, _stray_file, _no_labels])
def test_a_broken_folder_names_the_path_in_one_line(root, tmp_path, breakage):
    assert_breakage_named(FolderDataset, root, tmp_path / "own", breakage)


def test_an_id_outside_classes_txt_is_named_when_read(root, tmp_path):
    broken = tmp_path / "own"
    shutil.copytree(root, broken)
    Image.fromarray(np.full((H, W), 2, np.uint8)).save(broken / "train/walk/labels/000004.png")
    (broken / "classes.txt").write_text("background\n\nthing\n")
    with pytest.raises(DatasetError, match=r"classes.txt: line 2 is blank"):
        FolderDataset(broken)
    (broken / "classes.txt").write_text("background\nthing\n\n")  # trailing blank lines are fine
    ds = FolderDataset(broken)
    with pytest.raises(DatasetError, match=r"^\S+/train/walk/labels/000004.png: id 2 is not a folder label id "
                                           r"\(classes.txt has ids 0-1, and 255 is ignore\)$"):
        ds.read_clip("train", "walk")


def test_check_dataset_counts_it_and_exits_2_on_a_broken_tree(root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["check-dataset", "--kind", "folder", "--root", str(root)])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.splitlines() == [
        f"folder at {root}: 2 classes", "train: 2 sequences, 12 frames, 3 labelled frames (2 clips)",
        "val: 1 sequences, 6 frames, 6 labelled frames (1 clips)"]
    broken = tmp_path / "own"
    shutil.copytree(root, broken)
    _label_size(broken)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["check-dataset", "--kind", "folder", "--root", str(broken)])
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and captured.out == ""
    assert captured.err.strip().splitlines() == [
        f"DatasetError: {broken}/train/walk/labels/000004.png: size 8x8, its frame is {H}x{W}"]


def test_the_own_data_config_loads_with_its_root_overridden(tmp_path):
    cfg = load_config(REPO / "configs" / "own_data.yaml", [f"data.root={tmp_path}"])
    assert cfg.data.kind == "folder" and cfg.data.root == str(tmp_path) and cfg.flow.source == "dis"


def test_the_colour_mask_conversion_of_docs_own_data(tmp_path, monkeypatch):
    text = (REPO / "docs" / "own_data.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    colours = np.zeros((4, 6, 3), np.uint8)  # the snippet's colours: black 0, (220, 20, 60) 1, others ignored
    colours[1] = (220, 20, 60)
    colours[2] = (1, 2, 3)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "export").mkdir()
    (tmp_path / "my_videos/train/walk/labels").mkdir(parents=True)
    Image.fromarray(colours).save(tmp_path / "export/walk_000031.png")
    exec(compile(code, "docs/own_data.md", "exec"), {})
    ids = np.asarray(Image.open(tmp_path / "my_videos/train/walk/labels/000031.png"))
    assert ids.dtype == np.uint8 and ids.shape == (4, 6)
    np.testing.assert_array_equal(ids[:, 0], [0, 1, 255, 0])
    assert Image.open(tmp_path / "my_videos/train/walk/labels/000031.png").mode == "L"  # what check-dataset accepts
