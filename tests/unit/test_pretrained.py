"""Backbone initialisation (teacher.pretrained / student.pretrained): a weights file loads tensor for tensor into
the network's backbone, a file that does not fit is one line naming it and its first bad key, the config refuses
other schemes, and the head-LR multiplier follows any pretrained backbone."""
from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm

from etc_core.config import ConfigError, load_config
from etc_core.models import PretrainedWeightsError, create_model
from etc_core.train.loop import build_training

# torchvision ResNet key -> the same tensor inside PSPNet's trunk (ResNetTrunk: stem = conv1, bn1, relu, maxpool)
TRUNK = {"conv1.": "trunk.stem.0.", "bn1.": "trunk.stem.1.", "layer": "trunk.layer"}


def _trunk_key(key: str) -> str:
    prefix = next(p for p in TRUNK if key.startswith(p))
    return TRUNK[prefix] + key[len(prefix):]


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(7)
    state = tvm.resnet18(weights=None).state_dict()  # random, and different from any fresh model below
    path = tmp_path_factory.mktemp("weights") / "resnet18-backbone.pth"
    torch.save(state, path)
    return path, state


def test_backbone_from_a_file_equals_the_files_tensors(resnet18_file):
    path, state = resnet18_file
    model = create_model("pspnet18", 5, pretrained=str(path))
    own = model.state_dict()
    compared = 0
    for key, tensor in state.items():
        if key.startswith("fc."):
            continue  # the ImageNet classifier: torchvision-format files carry it, PSPNet drops it
        assert torch.equal(own[_trunk_key(key)], tensor), key
        compared += 1
    assert compared == len(state) - 2
    fresh = create_model("pspnet18", 5)
    assert not torch.equal(fresh.state_dict()["trunk.stem.0.weight"], own["trunk.stem.0.weight"])


def test_missing_key_is_one_line_naming_file_and_key(resnet18_file, tmp_path):
    _, state = resnet18_file
    broken = {k: v for k, v in state.items() if k != "layer2.0.conv1.weight"}
    path = tmp_path / "missing.pth"
    torch.save(broken, path)
    with pytest.raises(PretrainedWeightsError) as err:
        create_model("pspnet18", 5, pretrained=str(path))
    assert str(err.value) == (f"{path}: not a torchvision-format pspnet18 backbone "
                              f"(layer2.0.conv1.weight: missing from the file)")
    assert err.value.exit_code == 2


def test_mismatched_shape_and_foreign_key_name_the_key(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(tvm.resnet50(weights=None).state_dict(), path)  # a ResNet-50 file for a ResNet-18 backbone
    with pytest.raises(PretrainedWeightsError, match=r"resnet50.pth: not a torchvision-format pspnet18 backbone "
                                                     r"\(layer1.0.conv1.weight: shape \(64, 64, 1, 1\) in the file"):
        create_model("pspnet18", 5, pretrained=str(path))
    extra = tmp_path / "extra.pth"
    torch.save({**tvm.resnet18(weights=None).state_dict(), "head.bias": torch.zeros(3)}, extra)
    with pytest.raises(PretrainedWeightsError, match=r"extra.pth: .*\(head.bias: not in pspnet18's backbone\)$"):
        create_model("pspnet18", 5, pretrained=str(extra))


def test_unreadable_file_is_one_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match=rf"^{path}: cannot read backbone weights \(") as err:
        create_model("mobilenetv2", 5, pretrained=str(path))
    assert "\n" not in str(err.value)
    with pytest.raises(PretrainedWeightsError, match=r"nope.pth: cannot read backbone weights"):
        create_model("mobilenetv2", 5, pretrained=str(tmp_path / "nope.pth"))


def test_config_takes_a_path_or_s3_uri_and_refuses_other_schemes(tmp_path):
    cfg = load_config(None, ["student.pretrained=weights/r18.pth", "teacher.pretrained=s3://bucket/r50.pth"])
    assert cfg.student.pretrained.endswith("/weights/r18.pth") and cfg.student.pretrained.startswith("/")
    assert cfg.teacher.pretrained == "s3://bucket/r50.pth"
    with pytest.raises(ConfigError, match=r"student.pretrained: Value error, must be none, imagenet, a local path "
                                          r"or s3://bucket/key \(scheme 'https' refused\)"):
        load_config(None, ["student.pretrained=https://example.com/r18.pth"])


def test_head_lr_multiplier_follows_a_weights_file(resnet18_file):
    path, _ = resnet18_file
    cfg = load_config(None, ["student.arch=pspnet18", "train.lr=0.01", "train.head_lr_mult=10"])
    _, opt, _, _ = build_training(cfg, "pspnet18", 5, use_amp=False, pretrained=str(path))
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.1]
    _, opt, _, _ = build_training(cfg, "pspnet18", 5, use_amp=False)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]


def test_the_stage_key_holds_the_weights_content_not_only_their_path(resnet18_file, tmp_path):
    """Replace the file at the same path and the stage is another one (its registered model is not reused);
    random init keeps the keys of before (tests/unit/test_stage_hash.py pins them)."""
    import os

    from etc_core.train.run import stage_hash

    path = tmp_path / "backbone.pth"
    torch.save(resnet18_file[1], path)
    cfg = load_config(None, ["student.arch=pspnet18", f"student.pretrained={path}", "data.root=/d", "shards.uri=/s"])
    first = stage_hash(cfg, "student")
    assert stage_hash(cfg, "student") == first
    other = {k: v + 1 if v.is_floating_point() else v for k, v in resnet18_file[1].items()}
    torch.save(other, path)
    os.utime(path, ns=(0, 10**9))  # a different time stamp too, as a real rewrite has
    assert stage_hash(cfg, "student") != first
    plain = load_config(None, ["student.arch=pspnet18", "data.root=/d", "shards.uri=/s"])
    assert stage_hash(plain, "student") not in (first, stage_hash(cfg, "student"))
