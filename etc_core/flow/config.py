"""The `flow` and `shards` config sections: where training flow comes from (etc_core/flow/sources.py) and the
WebDataset shards the flow stage writes (etc_core/flow/stage.py) and training reads (etc_core/data/shards.py)."""
from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from etc_core.flow.sources import FlowSourceName
from etc_core.section import Section
from etc_core.storage.paths import expand_path


class FlowConfig(Section):
    """Where training flow comes from (etc_core/flow/sources.py): a ptlflow model (checked before Ray starts), OpenCV's
    DIS or the dataset's own."""

    HASH_OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("dis_preset",)  # added later: existing keys stay as they were
    source: FlowSourceName = "ground_truth"  # ground_truth: the generated data's exact flow; dis: OpenCV's, no weights
    model: str = "rapidflow_it1"  # any ptlflow.get_model_names() entry
    weights: str = "none"  # ptlflow checkpoint name (things, sintel, ...), a local checkpoint path, or none = random
    num_actors: int | None = Field(None, ge=1)  # flow-model actors; None: one per gpus_per_actor of the GPUs, else 1
    cpus_per_actor: int = Field(1, ge=1)  # CPUs each flow actor reserves (its torch threads on CPU)
    gpus_per_actor: float = Field(1.0, gt=0, le=1)  # on GPU nodes; 0.5 puts two flow actors on each GPU
    batch_size: int = Field(4, ge=1)  # pairs per flow-model forward pass (what fits in GPU memory)
    half: bool = False  # fp16 autocast for the flow model on CUDA (float32 on CPU)
    max_cpus: int | None = Field(None, ge=1)  # CPUs the stage's Ray Data pipeline may hold at once; None: the cluster's
    # medium: the lowest end-point error of the three on the generated data (docs/benchmarks.md, "DIS flow against
    # the exact flow"), at a few ms per pair on one CPU thread
    dis_preset: Literal["ultrafast", "fast", "medium"] = "medium"  # flow.source=dis: OpenCV DIS preset, faster -> finer


class ShardsConfig(Section):
    """The WebDataset shards the flow stage writes and training reads: a local folder or s3://bucket/prefix."""

    HASH_OMIT: ClassVar[tuple[str, ...]] = ("flow_encoding",)  # how flow is stored, not what it is: in no cache key
    uri: str = "runs/demo/shards"
    k: list[int] = Field(default_factory=lambda: [1])  # frame gaps of training pairs (t, t+k); negative allowed
    max_samples_per_shard: int = Field(64, ge=1)
    max_shard_bytes: int = Field(256 * 2**20, ge=2**16)
    seed: int = 0  # shuffled assignment of videos to shards
    flow_encoding: Literal["png16", "npy"] = Field("png16", description=(
        "how new shard sets store each pair's flow (docs/shards.md, \"Flow encodings\"): png16 = KITTI's 16-bit PNG, "
        "1/64 px steps, within 1/128 px of the estimate, a pair beyond +-512 px kept as npy; npy = float16, what sets "
        "written before this key hold. A set keeps the encoding it was started in; in no cache key"))

    @field_validator("uri")
    @classmethod
    def _absolute_uri(cls, value: str) -> str:
        # webdataset would run `pipe:` URLs through a shell and http/gs/... through external tools: refuse them
        scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]+):", value)
        value = expand_path(value)
        if (scheme and scheme.group(1) not in ("s3", "file")) or ("://" in value and not value.startswith("s3://")):
            name = (scheme.group(1) if scheme else value.split("://")[0]) + ":"
            raise ValueError(f"must be a local path or s3://bucket/prefix (scheme {name!r} refused)")
        return value.rstrip("/") if value.startswith("s3://") else value

    @field_validator("k")
    @classmethod
    def _nonzero_gaps(cls, value: list[int]) -> list[int]:
        if not value or 0 in value:
            raise ValueError("frame gaps must be a non-empty list of non-zero integers")
        return sorted(set(value), key=value.index)
