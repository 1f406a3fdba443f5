"""The dataset registry (etc_core/data/registry.py): a kind registered in one line is accepted by the config, listed
by the CLI, opened by open_dataset and scored by `evaluate --data`; unknown kinds are one line naming data.kind."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from etc_core.cli import main as cli_main
from etc_core.config import DataConfig, load_config
from etc_core.data.base import Clip
from etc_core.data.registry import (DATASETS, DatasetKind, check_dataset, dataset_kind, list_datasets, open_dataset,
                                    register_dataset)
from etc_core.errors import ConfigError
from etc_core.flow.stage import stage_identity
from etc_core.models import create_model

K, T, H, W = 3, 4, 32, 48


class StripesDataset:
    """A kind of the test's own: vertical class stripes 8 pixels wide moving 1 pixel right per frame, every frame
    labelled, with the exact flow (dx = +1: warp(frame t+1, flow) = frame t)."""

    num_classes = K
    class_names = ["left", "middle", "right"]
    splits = ["train", "val"]

    def __init__(self, root: str):
        self.root = root

    def clip_ids(self, split: str) -> list[str]:
        return ["clip_a", "clip_b"]

    def read_clip(self, split: str, clip_id: str) -> Clip:
        x = np.arange(W)[None, None, :] - np.arange(T)[:, None, None]  # [T,1,W]: column seen at frame t
        labels = np.broadcast_to((x // 8) % K, (T, H, W)).astype(np.uint8)
        palette = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], np.uint8)
        flows = np.zeros((T - 1, 2, H, W), np.float32)
        flows[:, 0] = 1.0
        return Clip(frames=palette[labels], labels=labels, flows=flows)

    def pair_flow(self, split: str, clip_id: str, t: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        flow = np.zeros((2, H, W), np.float32)
        flow[0] = k
        return flow, np.ones((H, W), bool)

    def summary(self) -> str:
        return f"stripes at {self.root}: 2 clips of {T} frames per split"


@pytest.fixture
def stripes():
    """Registers `stripes` as a dataset kind for one test: the one line a new kind adds."""
    register_dataset("stripes", DatasetKind(open=lambda cfg, generate=False: StripesDataset(cfg.root), exact_flow=True))
    yield "stripes"
    DATASETS.remove("stripes")


def test_the_built_in_kinds_are_registered_in_order_with_what_the_pipeline_asks():
    assert list_datasets() == ["synthetic", "cityscapes", "camvid", "folder"]
    assert DataConfig().kind == "synthetic" and DataConfig().model_dump()["kind"] == "synthetic"  # dumped as before
    synthetic, cityscapes = dataset_kind("synthetic"), dataset_kind("cityscapes")
    assert synthetic.generated and synthetic.exact_flow and synthetic.download_help is None
    assert not cityscapes.generated and not cityscapes.exact_flow
    assert "gtFine_trainvaltest.zip" in cityscapes.download_help


def test_an_unknown_kind_is_one_line_naming_the_key_and_the_known_kinds():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.kind=citiscapes"])
    assert str(err.value).startswith("override data.kind=citiscapes: data.kind: Value error, unknown dataset kind "
                                     "'citiscapes' (did you mean cityscapes? known: synthetic, cityscapes, camvid, folder)")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^data.kind: unknown dataset kind 'nope' \(known: synthetic, cityscapes"):
        dataset_kind("nope")
    with pytest.raises(ValueError, match="dataset kind 'camvid' is already registered"):
        register_dataset("camvid", "etc_core.data.camvid:KIND")


def test_a_registered_kind_is_validated_listed_and_opened(stripes, tmp_path, capsys):
    cfg = load_config(None, ["data.kind=stripes", f"data.root={tmp_path}"])
    assert cfg.data.kind == "stripes"
    ds = open_dataset(cfg.data)
    assert isinstance(ds, StripesDataset) and ds.root == str(tmp_path)
    check_dataset(cfg.data)  # no pre-flight of its own: opening it is the check
    assert "resize" in stage_identity(cfg)["data"]  # not generated: data.resize is part of the shards' identity
    with pytest.raises(ConfigError, match=r"did you mean stripes\? known: synthetic, cityscapes, camvid, folder, "
                                          r"stripes\)"):
        load_config(None, ["data.kind=stripe"])
    with pytest.raises(SystemExit) as exit_:
        cli_main(["--help"])
    assert exit_.value.code == 0
    assert "dataset kinds (data.kind): synthetic, cityscapes, camvid, folder, stripes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli_main(["check-dataset", "--kind", "stripes", "--root", str(tmp_path)])
    assert exit_.value.code == 0 and f"stripes at {tmp_path}" in capsys.readouterr().out


def test_evaluate_data_scores_a_registered_kind(stripes, tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("lraspp_mobilenetv3", num_classes=K)
    (tmp_path / "ckpt").mkdir()
    torch.save({"model": model.state_dict(), "arch": "lraspp_mobilenetv3", "num_classes": K},
               tmp_path / "ckpt" / "state.pt")
    report = tmp_path / "eval.json"
    with pytest.raises(SystemExit) as exit_:
        cli_main(["evaluate", "--model", str(tmp_path / "ckpt"), "--data", str(tmp_path), "--kind", "stripes",
                  "--batch-size", "3", "--device", "cpu", "--json", str(report)])
    assert exit_.value.code == 0
    assert f"data {tmp_path} [val], flow ground_truth, {H}x{W}" in capsys.readouterr().out
    result = json.loads(report.read_text())
    assert result["source"]["dataset"] == "stripes" and result["source"]["num_classes"] == K
    assert [r["model"] for r in result["rows"][1:]] == ["ground truth", "stride-8 oracle"]
    student, truth = result["rows"][0], result["rows"][1]
    assert student["frames"] == 2 * T and student["pairs"] == 2 * (T - 1)  # batches of 3 cross the pair borders
    # the labels scored as a prediction with the kind's exact flow: a known answer for the whole path
    assert truth["miou"] == 100 and truth["tc"] == 100 and truth["flicker_interior"] == 0


def test_evaluate_data_without_exact_flow_asks_for_a_flow_model(tmp_path, capsys):
    register_dataset("flowless", DatasetKind(open=lambda cfg, generate=False: _Flowless(cfg.root)))
    try:
        torch.save({"model": create_model("lraspp_mobilenetv3", num_classes=K).state_dict(),
                    "arch": "lraspp_mobilenetv3", "num_classes": K}, tmp_path / "state.pt")
        with pytest.raises(SystemExit) as exit_:
            cli_main(["evaluate", "--model", str(tmp_path / "state.pt"), "--data", str(tmp_path), "--kind",
                      "flowless", "--device", "cpu"])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"InputError: evaluate --data {tmp_path}: flowless clips carry no exact flow; give --flow-model (dis, "
            f"or a ptlflow model) for TC")
    finally:
        DATASETS.remove("flowless")


class _Flowless(StripesDataset):
    def read_clip(self, split: str, clip_id: str) -> Clip:
        clip = super().read_clip(split, clip_id)
        return Clip(frames=clip.frames, labels=clip.labels)
