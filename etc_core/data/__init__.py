"""Video datasets: the Clip type and reader interface, the generated dataset (writer and reader)."""
from etc_core.data.base import IGNORE_INDEX, Clip, VideoDataset
from etc_core.data.generated import GeneratedDataset, write_dataset
from etc_core.data.synthetic import make_clip

__all__ = ["IGNORE_INDEX", "Clip", "GeneratedDataset", "VideoDataset", "make_clip", "write_dataset"]
