"""A folder of your own labelled videos: one folder per clip, its frames numbered in order, label PNGs for some of them.

Layout under data.root (docs/own_data.md):

    classes.txt                              one class name per line: line 1 is class id 0, line 2 is id 1, ...
    {split}/{clip}/frames/{n}.png (or .jpg)  every frame of the clip, numbered in order without gaps (ffmpeg's %06d)
    {split}/{clip}/labels/{n}.png            class ids of frame n (8-bit, 255 = ignore), for some or all frames

Splits: train and val (required), test when present. Training pairs are (t, t+k) around each labelled frame t of a
train clip; val and test pairs are every (t, t+1), so label val/test frames densely if you can. The clip id is the
folder's name (letters, digits, _ and -: it goes into shard member names). Checked up front: the folders, every name,
the numbering, the size of each clip's first and labelled frames against their labels, the labels' image mode.
When a clip is read: the size of every other frame, and that every label id is a class of classes.txt or 255.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from etc_core.data._real import (ID_MODES, ClipIndex, IndexedDataset, image_header, image_size, png_names,
                                 require_dir)
from etc_core.data.base import IGNORE_INDEX
from etc_core.data.registry import DatasetKind
from etc_core.errors import DatasetError

log = logging.getLogger(__name__)

CLASSES = "classes.txt"
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
_NUMBERED = re.compile(r"^(\d+)(\.[A-Za-z]+)$")
_CLIP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_SEE = "see docs/own_data.md"


def read_classes(root: Path) -> list[str]:
    """The class names of root/classes.txt, one per line (trailing blank lines ignored); DatasetError naming it."""
    path = root / CLASSES
    if not path.is_file():
        raise DatasetError(f"{path}: missing (one class name per line, the first is class id 0; {_SEE})")
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    while names and not names[-1]:
        names.pop()
    if "" in names:
        raise DatasetError(f"{path}: line {names.index('') + 1} is blank (line n names class id n-1)")
    if not 2 <= len(names) <= IGNORE_INDEX:
        raise DatasetError(f"{path}: {len(names)} class names, expected 2 to {IGNORE_INDEX} (id 255 is ignore)")
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise DatasetError(f"{path}: class {twice!r} is named twice")
    return names


def _numbered(directory: Path) -> dict[int, str]:
    """{frame number: file name} of the images in directory; a name that is not a number is an error."""
    found: dict[int, str] = {}
    for name in png_names(directory, FRAME_SUFFIXES):
        m = _NUMBERED.match(name)
        if m is None:
            raise DatasetError(f"{directory / name}: malformed name, expected the frame's number (e.g. 000001.png)")
        n = int(m.group(1))
        if n in found:
            raise DatasetError(f"{directory / name}: frame {n} is also {found[n]}")
        found[n] = name
    return found


def _frame_format(directory: Path, frames: dict[int, str]) -> str:
    """'{:0Nd}.ext' naming every frame of frames/ (one suffix, one zero-padding); DatasetError naming the odd one."""
    first = frames[min(frames)]
    stem, suffix = first.rsplit(".", 1)
    fmt = f"{{:0{len(stem)}d}}.{suffix}"
    for n, name in sorted(frames.items()):
        if name != fmt.format(n):
            raise DatasetError(f"{directory / name}: malformed name, expected {fmt.format(n)} like {first} (one "
                               f"numbering and one image type per clip)")
    gap = next((n for n in range(min(frames), max(frames) + 1) if n not in frames), None)
    if gap is not None:
        raise DatasetError(f"{directory / fmt.format(gap)}: missing (frames are numbered without gaps, "
                           f"{first} to {frames[max(frames)]})")
    if len(frames) < 2:
        raise DatasetError(f"{directory}: {len(frames)} frame, a clip needs at least 2")
    return fmt


def _index_clip(root: Path, split: str, clip: str) -> ClipIndex:
    """Validate one clip folder and return its index entry; raise on the first problem."""
    frames_dir = require_dir(root / split / clip / "frames", f"the clip's numbered frames, {_SEE}")
    frames = _numbered(frames_dir)
    if not frames:
        raise DatasetError(f"{frames_dir}: no frames (.png or .jpg named by their number, e.g. 000001.png)")
    fmt = _frame_format(frames_dir, frames)
    first = min(frames)
    size = image_size(frames_dir / frames[first])
    labels = []
    labels_dir = root / split / clip / "labels"
    for name in png_names(labels_dir, FRAME_SUFFIXES):
        stem, suffix = name.rsplit(".", 1)
        if not stem.isdigit():
            raise DatasetError(f"{labels_dir / name}: malformed name, expected its frame's number (e.g. 000001.png)")
        if suffix.lower() != "png":
            raise DatasetError(f"{labels_dir / name}: a label must be a .png (lossless 8-bit class ids), {_SEE}")
        n = int(stem)
        if n not in frames or frames[n].rsplit(".", 1)[0] != stem:
            raise DatasetError(f"{labels_dir / name}: no frame {stem} in {frames_dir} (a label is named like its "
                               f"frame, e.g. frames/{frames[first]} -> labels/{frames[first].rsplit('.', 1)[0]}.png)")
        frame_size = image_size(frames_dir / frames[n])
        if frame_size != size:
            raise DatasetError(f"{frames_dir / frames[n]}: size {frame_size[0]}x{frame_size[1]}, the clip's first "
                               f"frame is {size[0]}x{size[1]}")
        label_size, mode = image_header(labels_dir / name)
        if label_size != size:
            raise DatasetError(f"{labels_dir / name}: size {label_size[0]}x{label_size[1]}, its frame is "
                               f"{size[0]}x{size[1]}")
        if mode not in ID_MODES:
            raise DatasetError(f"{labels_dir / name}: mode {mode}, expected a single-channel image of class ids "
                               f"(8-bit grey or palette, 255 = ignore; {_SEE})")
        labels.append((n - first, f"{split}/{clip}/labels/{name}"))
    return ClipIndex(sequence=clip, frame_fmt=f"{split}/{clip}/frames/{fmt}", first=first, num_frames=len(frames),
                     labels=tuple(labels), size=size)


def _index_split(root: Path, split: str) -> dict[str, ClipIndex]:
    """Validate one split folder and return its clips in name order; raise on the first problem."""
    directory = require_dir(root / split, f"one folder per clip, {_SEE}")
    clips: dict[str, ClipIndex] = {}
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue
        if not path.is_dir():
            raise DatasetError(f"{path}: a file where clip folders are expected ({split}/CLIP/frames/000001.png; "
                               f"{_SEE})")
        if _CLIP_NAME.match(path.name) is None:
            raise DatasetError(f"{path}: malformed clip folder name, use letters, digits, _ and - (it names the "
                               f"clip in the shards)")
        clips[path.name] = _index_clip(root, split, path.name)
    if not clips:
        raise DatasetError(f"{directory}: no clip folders ({_SEE})")
    if not any(c.labels for c in clips.values()):
        raise DatasetError(f"{directory}: no labelled frame in any clip (labels/NNNNNN.png beside frames/; {_SEE})")
    return clips


class FolderDataset(IndexedDataset):
    """Reader for a folder of the user's own labelled videos; implements etc_core.data.base.VideoDataset."""

    kind = "folder"

    def __init__(self, root: str | Path, resize: float = 1.0):
        root = Path(root)
        require_dir(root, f"set data.root to the folder holding {CLASSES}, train/ and val/ ({_SEE})")
        self.class_names = read_classes(root)
        self.num_classes = len(self.class_names)
        self.label_ids = f"classes.txt has ids 0-{self.num_classes - 1}, and 255 is ignore"
        lut = np.full(256, -1, np.int16)  # identity on the class ids and 255; anything else is an error
        lut[:self.num_classes] = np.arange(self.num_classes)
        lut[IGNORE_INDEX] = IGNORE_INDEX
        splits = ["train", "val"] + (["test"] if (root / "test").is_dir() else [])
        index = {split: _index_split(root, split) for split in splits}
        super().__init__(root, index, lut, resize)
        log.info("folder at %s: %d classes, %s", root, self.num_classes,
                 ", ".join(f"{s} {len(c)} clips" for s, c in index.items()))


KIND = DatasetKind(open=lambda cfg, generate=False: FolderDataset(cfg.root, resize=cfg.resize))
