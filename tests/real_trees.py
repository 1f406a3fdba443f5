"""Tiny fake Cityscapes and CamVid trees in the official naming, and a folder of one's own labelled videos
(docs/own_data.md), for the reader, CLI, flow-stage and end-to-end tests.

Frame n of a video carries n in pixel (0, 0): red = n % 256, green = n // 256, so a test can tell which file a
clip frame came from. Label images hold every id of the dataset in a fixed pattern (`label_pattern`).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 64, 128  # large enough for random-init rapidflow (NaN below 64x96)

# split -> [(city, seq, labelled frame)]: Frankfurt keeps seq 000000 for snippets far apart (docs/data.md)
CITYSCAPES = {"train": [("aachen", 0, 19), ("bochum", 1, 19)],
              "val": [("frankfurt", 0, 294), ("frankfurt", 0, 1016)]}
# split -> [(seq, label name)]; frames of 0016E5 are 360..450, of Seq05VD 0..40
CAMVID = {"train": [("0016E5", "0016E5_00390"), ("0016E5", "0016E5_00420")],
          "val": [("Seq05VD", "Seq05VD_f00000"), ("Seq05VD", "Seq05VD_f00030")]}
CAMVID_FRAMES = {"0016E5": range(360, 451), "Seq05VD": range(0, 41)}


def frame_image(n: int, h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(n)
    base = np.random.default_rng(0).integers(0, 200, (h, w, 3), dtype=np.uint8)  # shared texture, shifted per frame
    img = np.roll(base, n % w, axis=1) + rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
    img[0, 0] = (n % 256, n // 256, 0)
    return img


def frame_number(frame: np.ndarray) -> int:
    """The n that frame_image(n) wrote into pixel (0, 0) of a decoded frame [H,W,3]."""
    return int(frame[0, 0, 0]) + 256 * int(frame[0, 0, 1])


def label_pattern(h: int, w: int, num_ids: int) -> np.ndarray:
    """uint8 [h,w] cycling through ids 0..num_ids-1."""
    return (np.arange(h * w).reshape(h, w) % num_ids).astype(np.uint8)


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_cityscapes(root: Path, splits: dict = CITYSCAPES) -> Path:
    """leftImg8bit_sequence/ (30 frames per snippet) and gtFine/ (labelIds 0..33 on the 20th frame)."""
    for split, snippets in splits.items():
        for city, seq, n in snippets:
            for m in range(n - 19, n + 11):
                _save(frame_image(m), root / "leftImg8bit_sequence" / split / city /
                      f"{city}_{seq:06d}_{m:06d}_leftImg8bit.png")
            gt = root / "gtFine" / split / city
            _save(label_pattern(H, W, 34), gt / f"{city}_{seq:06d}_{n:06d}_gtFine_labelIds.png")
            _save(np.zeros((H, W, 3), np.uint8), gt / f"{city}_{seq:06d}_{n:06d}_gtFine_color.png")  # ignored
    return root


def camvid_number(name: str) -> int:
    return int(name.rsplit("_", 1)[1].lstrip("f"))


def make_camvid(root: Path, splits: dict = CAMVID) -> Path:
    """frames/{seq}/{seq}_{n:06d}.png plus SegNet-style {split}/ and {split}annot/ (labels at half size, ids 0..11)."""
    for seq, numbers in CAMVID_FRAMES.items():
        for n in numbers:
            _save(frame_image(n), root / "frames" / seq / f"{seq}_{n:06d}.png")
    for split, labels in splits.items():
        for seq, name in labels:
            _save(label_pattern(H // 2, W // 2, 12), root / f"{split}annot" / f"{name}.png")
            small = Image.fromarray(frame_image(camvid_number(name))).resize((W // 2, H // 2), Image.BILINEAR)
            _save(np.asarray(small), root / split / f"{name}.png")
    return root


# split -> {clip: (frames, numbers of the labelled frames)}; frames are numbered from 1, as ffmpeg does
FOLDER = {"train": {"walk": (6, [1, 4]), "street-2": (6, [3])}, "val": {"park": (6, [1, 2, 3, 4, 5, 6])}}
FOLDER_CLASSES = ["background", "thing"]


def folder_label(h: int = H, w: int = W) -> np.ndarray:
    """The label of every labelled frame of make_folder: ids 0..K-1 in 8x8 blocks (every class survives data.resize),
    its first two rows 255 (ignore)."""
    label = label_pattern(h // 8 + 1, w // 8 + 1, len(FOLDER_CLASSES)).repeat(8, 0).repeat(8, 1)[:h, :w]
    label[:2] = 255
    return label


def make_folder(root: Path, splits: dict = FOLDER, h: int = H, w: int = W, suffix: str = ".png") -> Path:
    """classes.txt, {split}/{clip}/frames/{n:06d}{suffix} and labels/{n:06d}.png (folder_label)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(FOLDER_CLASSES) + "\n")
    label = folder_label(h, w)
    for split, clips in splits.items():
        for clip, (num_frames, labelled) in clips.items():
            for n in range(1, num_frames + 1):
                _save(frame_image(n, h, w), root / split / clip / "frames" / f"{n:06d}{suffix}")
            for n in labelled:
                _save(label, root / split / clip / "labels" / f"{n:06d}.png")
    return root


def assert_breakage_named(reader, tree: Path, copy: Path, breakage) -> None:
    """Copy `tree` to `copy`, break the copy with breakage(copy) (which returns the regex of the expected message),
    and check that opening it with reader(copy) is one DatasetError line matching it and naming the copy."""
    import pytest

    from etc_core.errors import DatasetError

    shutil.copytree(tree, copy)
    message = breakage(copy)
    with pytest.raises(DatasetError, match=message) as err:
        reader(copy)
    assert "\n" not in str(err.value) and str(copy) in str(err.value)
