"""mVC8 / mVC16 in the evaluation table, from shards (clips rebuilt from shuffled pairs) and from a dataset."""
from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from etc_core.config import DataConfig
from etc_core.data import shards
from etc_core.data.generated import GeneratedDataset, write_dataset
from etc_core.infer.evaluate import evaluate_models, format_table
from etc_core.infer.predict import Predictor
from etc_core.metrics import VideoConsistency, stride_oracle
from etc_core.storage import uri as storage

pytestmark = pytest.mark.integration

K = 4


class ColourNet(nn.Module):
    """A fixed 1x1 convolution: class ids that follow the pixels' colours, so they change where frames do."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, K, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1]])[..., None, None])
            self.conv.bias.zero_()

    def forward(self, images):
        return SimpleNamespace(logits=self.conv(images))


def _write_val_shards(root: str, clips: dict) -> None:
    """Every pair (t, t+1) of every clip, shuffled over three shards (a clip's pairs come in any order)."""
    samples = [shards.encode_sample(shards.sample_key(v, t, 1), c.frames[t], c.frames[t + 1], c.flows[t], c.labels[t],
                                    {"video": v, "t": t, "k": 1}, label1=c.labels[t + 1], valid=c.valid[t])
               for v, c in clips.items() for t in range(c.num_frames - 1)]
    random.Random(0).shuffle(samples)
    entries = []
    for index, part in enumerate(np.array_split(np.arange(len(samples)), 3)):
        nbytes = shards.write_shard([samples[i] for i in part], storage.join(root, shards.shard_name("val", index)))
        entries.append({"path": shards.shard_name("val", index), "samples": len(part), "bytes": nbytes})
    shards.write_manifest(root, {"format": shards.FORMAT, "config_hash": "x", "config": {}, "versions": {},
                                 "num_classes": K, "splits": {"val": {"samples": len(samples), "shards": entries}}})


def test_every_table_has_mvc_with_ground_truth_at_100(tmp_path):
    data = DataConfig(root=str(tmp_path / "data"), num_videos=4, val_fraction=0.5, num_frames=18, height=32,
                      width=48, num_classes=K)
    write_dataset(data, progress=False)
    ds = GeneratedDataset(data.root)
    clips = {c: ds.read_clip("val", c) for c in ds.clip_ids("val")}
    _write_val_shards(str(tmp_path / "shards"), clips)
    model = ColourNet().eval()
    preds = {v: Predictor(model, torch.device("cpu"))(c.frames) for v, c in clips.items()}
    want = {}
    for n in (8, 16):  # 18 frames: VSPW's range(18 - n) gives 10 windows of 8 and 2 of 16 per clip
        mine, oracle = VideoConsistency(n), VideoConsistency(n)
        for v, c in clips.items():
            mine.update(preds[v], c.labels)
            oracle.update(stride_oracle(torch.from_numpy(c.labels), K), c.labels)
        want[n] = (mine.compute(), oracle.compute())
    assert min(p.unique().numel() for p in preds.values()) > 1  # not a constant prediction (mVC 100 whatever)
    models = [("colour", model, {"arch": "colournet", "num_classes": K})]
    for source in ({"shards": str(tmp_path / "shards")}, {"data": data}):
        result = evaluate_models(models, **source, split="val", device=torch.device("cpu"), batch_size=4)
        row, truth, oracle = result["rows"]
        assert truth["model"] == "ground truth" and truth["mvc8"] == 100.0 and truth["mvc16"] == 100.0
        for n in (8, 16):
            assert row[f"mvc{n}"] == pytest.approx(want[n][0]) and oracle[f"mvc{n}"] == pytest.approx(want[n][1])
        assert 0 < row["mvc8"] < 100
        assert "mVC8" in format_table(result) and "mVC16" in format_table(result)
    result["rows"] = [{**r, "mvc16": None} for r in result["rows"]]
    assert "mVC16" not in format_table(result)  # shown only where clips are long enough
