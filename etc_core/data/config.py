"""The `data` config section: which dataset, and for the generated one its size, scene and nuisances."""
from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import AfterValidator, Field, field_validator, model_validator

from etc_core.data.registry import DATASETS
from etc_core.data.synthetic import Look, Scene
from etc_core.section import Section
from etc_core.storage.paths import expand_path

_SCENE, _LOOK = Scene(), Look()  # the generator's defaults are the config's
DatasetKindName = Annotated[str, AfterValidator(DATASETS.check)]  # a kind registered in etc_core/data/registry.py


class DataConfig(Section):
    """The video dataset. `synthetic` is generated (etc_core/data/synthetic.py, docs/data.md); `cityscapes` and
    `camvid` read the official layouts under root, `folder` your own labelled videos (docs/own_data.md). The keys after
    `resize` apply to synthetic data only."""

    # keys added later: left at their default they stay out of every cache key (stages cached before them stay valid)
    HASH_OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("camera_pan", "camera_zoom")

    kind: DatasetKindName = "synthetic"
    root: str = "runs/demo/data"
    resize: float = Field(1.0, gt=0, le=1)  # real videos: scale frames (bilinear) and labels (nearest) on read
    seed: int = 0
    num_videos: int = Field(10, ge=3)  # clips in all, split into train / val / test by the fractions below
    val_fraction: float = Field(0.2, gt=0, lt=1)  # val: checkpoint and weight selection; every frame labelled
    test_fraction: float = Field(0.2, ge=0, lt=1)  # test: the reported numbers; every frame labelled
    num_frames: int = Field(12, ge=2)
    height: int = Field(96, ge=16)
    width: int = Field(160, ge=16)
    num_classes: int = Field(6, ge=2, le=32)
    label_every: int = Field(1, ge=1)  # train split: keep only every n-th frame's label (Cityscapes keeps 1 in 30)
    label_offset: int = Field(0, ge=0)  # index of the first labelled frame inside a train clip
    # scene (changes labels and flow, exactly)
    object_scale: tuple[float, float] = _SCENE.object_scale  # object radius, fraction of min(height, width)
    thin_objects: int = Field(_SCENE.thin_objects, ge=0)  # thin bars per clip
    lookalike: bool = _SCENE.lookalike  # class pairs share colour and texture, differ in shape and size
    pair_scale: float = Field(_SCENE.pair_scale, gt=0, le=2)  # look-alikes: relative size of a pair's second class
    jitter: float = Field(_SCENE.jitter, ge=0)  # camera jitter, pixels (std per frame; carried by the flow)
    camera_pan: float = Field(_SCENE.camera_pan, ge=0)  # camera pan, pixels per frame (0: a still camera)
    camera_zoom: float = Field(_SCENE.camera_zoom, ge=0, le=0.1)  # camera zoom, |log-scale| per frame at most
    # per-frame nuisances (change pixels only); docs/data.md says why these strengths
    noise: float = Field(_LOOK.noise, ge=0, le=1)  # global gain / offset per frame
    motion_blur: float = Field(_LOOK.motion_blur, ge=0, le=1)  # exposure, fraction of the frame interval
    illumination: float = Field(_LOOK.illumination, ge=0, le=1)  # moving light gradient and shadow
    shot_noise: float = Field(_LOOK.shot_noise, ge=0)  # sensor noise variance per grey level
    read_noise: float = Field(_LOOK.read_noise, ge=0)  # sensor noise std, grey levels
    jpeg_quality: tuple[int, int] | None = _LOOK.jpeg_quality  # JPEG quality range per frame; null: no re-encoding

    @property
    def split_sizes(self) -> dict[str, int]:
        """Clips per split: {"train": n, "val": m, "test": p}; train and val at least 1, test 0 only when
        test_fraction is 0."""
        val = max(1, round(self.num_videos * self.val_fraction))
        test = max(1, round(self.num_videos * self.test_fraction)) if self.test_fraction > 0 else 0
        return {"train": self.num_videos - val - test, "val": val, "test": test}

    @field_validator("root")
    @classmethod
    def _absolute_root(cls, value: str) -> str:
        return expand_path(value)

    @model_validator(mode="after")
    def _consistent(self) -> "DataConfig":
        if self.split_sizes["train"] < 1:
            raise ValueError(f"num_videos={self.num_videos} leaves no train clip after val_fraction="
                             f"{self.val_fraction} and test_fraction={self.test_fraction}")
        lo, hi = self.object_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"object_scale must be 0 < low <= high <= 1, got {list(self.object_scale)}")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality must be 1 <= low <= high <= 100, got {list(self.jpeg_quality)}")
        return self
