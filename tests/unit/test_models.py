"""Model registry and every registered network: shapes, gradients, torch.export, offline pretrained errors."""
from __future__ import annotations

import urllib.error

import pytest
import torch

from etc_core.models import (PretrainedWeightsError, SegOutput, create_model, from_weights, is_model, list_models,
                             register_model)
from etc_core.models import _registry

NUM_CLASSES = 5


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_shapes(name):
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES).train()
    images = torch.randn(2, 3, 64, 128)
    out = model(images)
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (2, NUM_CLASSES, 64, 128)
    assert out.features.shape == (2, NUM_CLASSES, 8, 16)  # the 1/8 logits PF distils
    loss = out.logits.square().mean()
    if out.aux is not None:
        assert out.aux.shape == (2, NUM_CLASSES, 64, 128)
        loss = loss + out.aux.square().mean()
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"parameters without gradient (would break DDP): {unused[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_eval_has_no_aux_and_exports(name):
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES).eval()
    size = (64, 64) if name == "pspnet101" else (64, 128)  # keep the teacher's export fast
    images = torch.randn(1, 3, *size)
    with torch.no_grad():
        eager = model(images)
    assert eager.aux is None
    exported = torch.export.export(model, (images,))
    with torch.no_grad():
        logits, features, aux = exported.module()(images)
    torch.testing.assert_close(logits, eager.logits)
    torch.testing.assert_close(features, eager.features)
    assert aux is None


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", list_models())
def test_torchscript(name):
    model = create_model(name, NUM_CLASSES).eval()
    images = torch.randn(1, 3, 64, 64)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        out, eager = scripted(images), model(images)
    torch.testing.assert_close(out.logits, eager.logits)
    torch.testing.assert_close(out.features, eager.features)
    assert out.aux is None


def test_required_models_registered():
    names = list_models()
    assert names == sorted(names)
    for name in ("pspnet101", "pspnet50", "pspnet18", "mobilenetv2", "lraspp_mobilenetv3"):
        assert is_model(name)
    assert not is_model("psp18")


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError) as err:
        create_model("psp18", NUM_CLASSES)
    assert str(err.value) == f"unknown model 'psp18' (known: {', '.join(list_models())})"


def test_register_model_raises_on_duplicate(monkeypatch):
    monkeypatch.setattr(_registry, "_model_entrypoints", dict(_registry._model_entrypoints))

    def tiny_net(num_classes, pretrained=False):
        return torch.nn.Conv2d(3, num_classes, 1)

    register_model(tiny_net)
    assert isinstance(create_model("tiny_net", 3), torch.nn.Conv2d)
    with pytest.raises(ValueError, match="'tiny_net' is already registered"):
        register_model(tiny_net)

    def pspnet18(num_classes, pretrained=False):
        return torch.nn.Identity()

    with pytest.raises(ValueError, match="'pspnet18' is already registered"):
        register_model(pspnet18)


def test_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        create_model("pspnet18_slim", 0)


def test_pretrained_offline_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # nothing cached

    def no_download(url, *args, **kwargs):  # keep the test offline even on a machine that has internet
        raise urllib.error.URLError("no internet")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(PretrainedWeightsError) as err:
        create_model("pspnet18", NUM_CLASSES, pretrained=True)
    message = str(err.value)
    assert isinstance(err.value, RuntimeError)
    assert "\n" not in message
    assert message.startswith("pspnet18: cannot ")
    assert "resnet18-" in message and "internet" in message and str(tmp_path) in message


def test_pretrained_download_failure_after_reachable_host(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("etc_core.models._builder._check_online", lambda *args: None)  # host "reachable"

    def broken_download(url, *args, **kwargs):
        raise urllib.error.URLError("connection reset")

    monkeypatch.setattr(torch.hub, "download_url_to_file", broken_download)
    with pytest.raises(PretrainedWeightsError, match=r"^mobilenetv2: cannot download .*connection reset.*internet"):
        create_model("mobilenetv2", NUM_CLASSES, pretrained=True)


@pytest.mark.parametrize("name, kwargs", [("pspnet18_slim", {}), ("mobilenetv2", {"width_mult": 0.5}),
                                          ("lraspp_mobilenetv3", {"width_mult": 0.5})])
def test_pretrained_without_imagenet_weights(name, kwargs):
    with pytest.raises(PretrainedWeightsError, match=f"^{name}: no ImageNet weights exist"):
        create_model(name, NUM_CLASSES, pretrained=True, **kwargs)


def test_width_mult_makes_smaller_students():
    for name in ("mobilenetv2", "lraspp_mobilenetv3"):
        full = sum(p.numel() for p in create_model(name, NUM_CLASSES).parameters())
        slim_model = create_model(name, NUM_CLASSES, width_mult=0.5).eval()
        slim = sum(p.numel() for p in slim_model.parameters())
        assert slim < full / 2
        assert slim_model(torch.randn(1, 3, 64, 64)).logits.shape == (1, NUM_CLASSES, 64, 64)


def test_from_weights_rebuilds_the_same_network():
    torch.manual_seed(0)
    trained = create_model("pspnet18_slim", NUM_CLASSES)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not the random init create_model would give again
    trained.eval()
    rebuilt = from_weights("pspnet18_slim", str(NUM_CLASSES), trained.state_dict())
    assert not rebuilt.training
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x).logits, trained(x).logits)
    with pytest.raises(RuntimeError, match="size mismatch"):
        from_weights("pspnet18_slim", NUM_CLASSES + 1, trained.state_dict())
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        from_weights("nope", NUM_CLASSES, trained.state_dict())
