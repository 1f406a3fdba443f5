"""Cityscapes video: the 30-frame snippets of `leftImg8bit_sequence` with the fine label of their 20th frame.

Layout under data.root (as the official zips unpack; docs/data.md):

    leftImg8bit_sequence/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png   every frame (17 fps)
    gtFine/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelIds.png             the labelled frames

One clip per snippet: the 30 frames n-19 .. n+10 around each labelled frame n (index 19, docs/data.md), so
`aachen_000000_000019` covers frames 000000-000029 and Frankfurt's `frankfurt_000000_001016` covers 000997-001026
(Frankfurt keeps one `seq` number for many snippets). The clip id is the labelled frame's stem. labelIds are
mapped to the 19 train ids (cityscapesScripts' table); every other id, including license plate, becomes 255.
Splits: train and val (required), test when present. Other gtFine files (color, instanceIds, polygons) are ignored.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from etc_core.data._real import ClipIndex, IndexedDataset, image_size, png_names, require_dir
from etc_core.data.registry import DatasetKind
from etc_core.errors import DatasetError

log = logging.getLogger(__name__)

SNIPPET = 30  # frames per snippet
LABELLED_INDEX = 19  # the 20th frame carries the fine label

CLASS_NAMES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
               "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]

# labelId -> trainId of cityscapesScripts' labels.py; ids not listed (0-6 void/flat-ignored, 9 parking,
# 10 rail track, 14 guard rail, 15 bridge, 16 tunnel, 18 polegroup, 29 caravan, 30 trailer) are 255.
LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                  26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def train_id_lut() -> np.ndarray:
    """int16 [256]: labelId -> trainId, 255 for ignored ids."""
    lut = np.full(256, 255, np.int16)
    for label_id, train_id in LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


def _frame_name(city: str, seq: int, frame: int) -> str:
    return f"{city}_{seq:06d}_{frame:06d}_leftImg8bit.png"


def _label_name(city: str, seq: int, frame: int) -> str:
    return f"{city}_{seq:06d}_{frame:06d}_gtFine_labelIds.png"


def _parse(names: list[str], directory: Path, city: str, suffix: str) -> dict[int, set[int]]:
    """{seq: {frame numbers}} from `{city}_{seq}_{frame}{suffix}` names; a .png with another name is an error."""
    pattern = re.compile(re.escape(city) + r"_(\d{6})_(\d{6})" + re.escape(suffix) + "$")
    found: dict[int, set[int]] = {}
    for name in names:
        m = pattern.match(name)
        if m is None:
            if suffix == "_leftImg8bit.png" or name.endswith("_labelIds.png"):
                raise DatasetError(f"{directory / name}: malformed name, expected {city}_SSSSSS_FFFFFF{suffix}")
            continue
        found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return found


def _index_split(root: Path, split: str) -> dict[str, ClipIndex]:
    """Validate one split and return its clips, in (city, seq, frame) order; raise on the first problem."""
    seq_dir = require_dir(root / "leftImg8bit_sequence" / split, "see docs/data.md")
    gt_dir = require_dir(root / "gtFine" / split, "see docs/data.md")
    cities = sorted({p.name for d in (seq_dir, gt_dir) for p in d.iterdir() if p.is_dir()})
    if not cities:
        raise DatasetError(f"{seq_dir}: no city directories")
    clips: dict[str, ClipIndex] = {}
    for city in cities:
        frames = _parse(png_names(seq_dir / city), seq_dir / city, city, "_leftImg8bit.png")
        labels = _parse(png_names(gt_dir / city), gt_dir / city, city, "_gtFine_labelIds.png")
        for seq in sorted(frames.keys() | labels.keys()):
            have, covered = frames.get(seq, set()), set()
            for n in sorted(labels.get(seq, ())):
                label_rel = f"gtFine/{split}/{city}/{_label_name(city, seq, n)}"
                first = n - LABELLED_INDEX
                if first < 0:
                    raise DatasetError(f"{root / label_rel}: labelled frame {n} has fewer than {LABELLED_INDEX} "
                                       f"frames before it")
                for m in range(first, first + SNIPPET):
                    if m not in have:
                        raise DatasetError(f"{seq_dir / city / _frame_name(city, seq, m)}: missing (frame "
                                           f"{m - first} of the snippet around labelled frame {n:06d})")
                size = image_size(seq_dir / city / _frame_name(city, seq, n))
                if image_size(root / label_rel) != size:
                    raise DatasetError(f"{root / label_rel}: size {'x'.join(map(str, image_size(root / label_rel)))}"
                                       f", its frame is {size[0]}x{size[1]}")
                covered.update(range(first, first + SNIPPET))
                clip_id = f"{city}_{seq:06d}_{n:06d}"
                clips[clip_id] = ClipIndex(
                    sequence=clip_id, frame_fmt=f"leftImg8bit_sequence/{split}/{city}/{city}_{seq:06d}_{{:06d}}"
                    "_leftImg8bit.png", first=first, num_frames=SNIPPET, labels=((LABELLED_INDEX, label_rel),),
                    size=size)
            stray = sorted(have - covered)
            if stray:  # a snippet without its label: name the label its 20th frame would have
                f = stray[0]
                raise DatasetError(f"{gt_dir / city / _label_name(city, seq, f + LABELLED_INDEX)}: missing (frame "
                                   f"{_frame_name(city, seq, f)} is in no labelled {SNIPPET}-frame snippet)")
    if not clips:
        raise DatasetError(f"{gt_dir}: no *_gtFine_labelIds.png files")
    return clips


class CityscapesDataset(IndexedDataset):
    """Reader for Cityscapes video snippets; implements etc_core.data.base.VideoDataset (+ clip_layout, counts)."""

    kind = "cityscapes"
    num_classes = len(CLASS_NAMES)
    class_names = list(CLASS_NAMES)

    def __init__(self, root: str | Path, resize: float = 1.0):
        root = Path(root)
        require_dir(root, "set data.root to the folder holding leftImg8bit_sequence/ and gtFine/")
        for sub in ("leftImg8bit_sequence", "gtFine"):
            require_dir(root / sub, "see docs/data.md or `etc-pipeline download-help --kind cityscapes`")
        splits = ["train", "val"] + (["test"] if (root / "leftImg8bit_sequence" / "test").is_dir() else [])
        index = {split: _index_split(root, split) for split in splits}
        super().__init__(root, index, train_id_lut(), resize)
        log.info("cityscapes at %s: %s", root, ", ".join(f"{s} {len(c)} snippets" for s, c in index.items()))


# etc-pipeline download-help --kind cityscapes; {root} is data.root
DOWNLOAD_HELP = """\
Cityscapes video needs a (free) login at https://www.cityscapes-dataset.com/downloads/ . Fetch:
  gtFine_trainvaltest.zip                 (241 MB)  fine labels: gtFine/{{split}}/{{city}}/*_gtFine_labelIds.png
  leftImg8bit_sequence_trainvaltest.zip   (324 GB)  all 30 frames of every snippet: leftImg8bit_sequence/...
(with cityscapesScripts: `pip install cityscapesscripts; csDownload gtFine_trainvaltest.zip
leftImg8bit_sequence_trainvaltest.zip`). Unzip both into {root} so that it holds
  {root}/gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png
  {root}/leftImg8bit_sequence/train/aachen/aachen_000000_000000_leftImg8bit.png ... _000029_leftImg8bit.png
then run: etc-pipeline check-dataset --kind cityscapes --root {root}"""
KIND = DatasetKind(open=lambda cfg, generate=False: CityscapesDataset(cfg.root, resize=cfg.resize),
                   download_help=DOWNLOAD_HELP)
