"""Dataset kinds (data.kind) by name: register, list, and the one door to a dataset, `open_dataset(cfg.data)`.

A kind's file ends with `KIND = DatasetKind(...)`: how to open its reader from the data section, and what else the
pipeline asks of it. Adding one: that file, its test, and one `register_dataset` line at the bottom of this module
(docs/architecture.md, "Add a dataset"). Light on purpose: the config validates data.kind against these names, and
a kind's module is imported when it is first opened.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from etc_core.errors import ConfigError
from etc_core.registry import Registry

if TYPE_CHECKING:
    from etc_core.data.base import VideoDataset
    from etc_core.data.config import DataConfig


@dataclass(frozen=True)
class DatasetKind:
    """What the pipeline asks of a dataset kind, beside its reader (etc_core/data/base.py, VideoDataset)."""

    open: Callable[[DataConfig, bool], VideoDataset]  # (data section, generate) -> the reader; generate: write it first
    check: Callable[[DataConfig], object] | None = None  # pre-flight, before Ray; None: open it (checks the tree)
    download_help: str | None = None  # what to fetch and where ({root}: data.root); None: nothing to download
    generated: bool = False  # made from the data.* generator keys; data.resize does not apply
    exact_flow: bool = False  # its reader has pair_flow(split, clip_id, t, k): flow.source=ground_truth works


DATASETS = Registry("dataset kind")


def register_dataset(name: str, kind: DatasetKind | str) -> DatasetKind | str:
    """Register dataset kind `name`: a DatasetKind, or "module:attr" naming one (imported when first used)."""
    return DATASETS.register(name, kind)


def list_datasets() -> list[str]:
    """The registered dataset kinds, the default (synthetic) first."""
    return DATASETS.names()


def dataset_kind(name: str) -> DatasetKind:
    """The DatasetKind registered as `name`; ConfigError naming data.kind and the known kinds."""
    try:
        return DATASETS.get(name)
    except ValueError as e:
        raise ConfigError(f"data.kind: {e}") from None


def open_dataset(cfg: DataConfig, generate: bool = False) -> VideoDataset:
    """The reader of dataset cfg.kind at cfg.root; generated data is written first when generate=True.

    Real datasets are validated when opened (DatasetError naming the first missing or malformed path).
    """
    return dataset_kind(cfg.kind).open(cfg, generate)


def check_dataset(cfg: DataConfig) -> None:
    """Pre-flight: a real dataset's tree is complete; generated data at cfg.root was made with these settings (or is
    absent). DatasetError in one line otherwise."""
    kind = dataset_kind(cfg.kind)
    if kind.check is not None:
        kind.check(cfg)
    else:
        kind.open(cfg, False)


def download_help(kind: str, root: str) -> str:
    """What to fetch for dataset `kind` and where to put it under root (nothing is downloaded)."""
    if kind not in downloadable():
        raise ConfigError(f"--kind: {kind!r} has no download (known: {', '.join(downloadable())})")
    return dataset_kind(kind).download_help.format(root=root)


def downloadable() -> list[str]:
    """The registered kinds that are downloaded by hand (they have download help)."""
    return [name for name in list_datasets() if dataset_kind(name).download_help]


register_dataset("synthetic", "etc_core.data.generated:KIND")
register_dataset("cityscapes", "etc_core.data.cityscapes:KIND")
register_dataset("camvid", "etc_core.data.camvid:KIND")
register_dataset("folder", "etc_core.data.folder:KIND")
