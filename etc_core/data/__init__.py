"""Video datasets: the Clip type and reader interface, the generated dataset, Cityscapes and CamVid readers."""
from etc_core.data.base import IGNORE_INDEX, Clip, VideoDataset
from etc_core.data.generated import GeneratedDataset, write_dataset
from etc_core.data.registry import open_dataset
from etc_core.data.synthetic import make_clip

__all__ = ["IGNORE_INDEX", "Clip", "GeneratedDataset", "VideoDataset", "make_clip", "open_dataset",
           "write_dataset"]
