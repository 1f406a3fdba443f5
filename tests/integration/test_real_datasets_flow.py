"""A fake Cityscapes tree (official naming) through the flow stage on a real local Ray, with random-init ptlflow."""
from __future__ import annotations

import numpy as np
import pytest

from etc_core.config import load_config
from etc_core.data import open_dataset, shards
from etc_core.flow.stage import run_flow_stage
from tests.real_trees import H, W, make_cityscapes

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_cityscapes_tree_through_the_flow_stage(ray_local, tmp_path):
    # one val snippet keeps the CPU run short: 10 train pairs (k around frame 19) + 29 consecutive val pairs
    root = make_cityscapes(tmp_path / "cs", {"train": [("aachen", 0, 19), ("bochum", 1, 19)],
                                             "val": [("frankfurt", 0, 1016)]})
    cfg = load_config(None, ["data.kind=cityscapes", f"data.root={root}", f"shards.uri={tmp_path / 'shards'}",
                             "shards.k=[-2, -1, 1, 2, 3]", "flow.source=ptlflow", "flow.model=rapidflow_it1",
                             "flow.weights=none", "flow.batch_size=8", "shards.max_samples_per_shard=16"])
    result = run_flow_stage(cfg, progress=False)  # opens the reader itself, through open_dataset(cfg.data)
    manifest = result.manifest
    assert manifest["num_classes"] == 19 and manifest["class_names"][0] == "road"
    assert manifest["splits"]["train"]["samples"] == 10 and manifest["splits"]["val"]["samples"] == 29
    dataset = open_dataset(cfg.data)
    train = list(shards.iter_samples(cfg.shards.uri, "train"))
    assert sorted((s["meta"]["video"], s["meta"]["k"]) for s in train) == sorted(
        (c, k) for c in ("aachen_000000_000019", "bochum_000001_000019") for k in (-2, -1, 1, 2, 3))
    for sample in train:
        meta = sample["meta"]
        clip = dataset.read_clip("train", meta["video"])
        assert meta["t"] == 19 and sample["flow"].shape == (2, H, W) and np.isfinite(sample["flow"]).all()
        np.testing.assert_array_equal(sample["img0"], clip.frames[19])
        np.testing.assert_array_equal(sample["img1"], clip.frames[19 + meta["k"]])
        np.testing.assert_array_equal(sample["label"], clip.labels[19])
    val = list(shards.iter_samples(cfg.shards.uri, "val"))
    assert [s["meta"]["t"] for s in val if s["label"] is not None] == [19]
    assert run_flow_stage(cfg, progress=False).shards_written == 0  # rerun: nothing to do
