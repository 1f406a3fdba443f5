"""PSPNet (Zhao et al., CVPR 2017) on a dilated ResNet, output stride 8: the ETC teacher and headline student.

docs/method.md (Recipe): plain 7x7 stem, layer3 dilation 2, layer4 dilation 4, PPM bins (1,2,3,6) with C/4 channels per
bin, head conv3x3 + BN + ReLU + dropout 0.1 + 1x1, auxiliary head on layer3 (weighted 0.4 by the loss).
"""
from __future__ import annotations

import logging
from typing import Sequence

import timm.models.resnet as timm_resnet
import torch
import torchvision.models as tvm
from torch import Tensor, nn

from etc_core.models._builder import (PairedDropout2d, SegOutput, conv_bn_relu, dilate_, is_imagenet, load_backbone,
                                      no_pretrained, upsample_to)
from etc_core.models._registry import register_model

log = logging.getLogger(__name__)


class PyramidPooling(nn.Module):
    """Pyramid pooling module: x [B,C,h,w] -> [B,C+len(bins)*reduction,h,w]."""

    def __init__(self, in_ch: int, reduction: int, bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), *conv_bn_relu(in_ch, reduction, kernel=1)) for b in bins)

    def forward(self, x: Tensor) -> Tensor:
        """x [B,C,h,w] -> concat of x and every upsampled pooled branch, [B,C',h,w]."""
        size = x.shape[-2:]
        branches = [x]
        for stage in self.stages:  # a loop, not a comprehension, so TorchScript can compile it
            branches.append(upsample_to(stage(x), size))
        return torch.cat(branches, dim=1)


class SegHead(nn.Sequential):
    """conv3x3 + BN + ReLU + dropout + 1x1 classifier: [B,C,h,w] -> [B,K,h,w]."""

    def __init__(self, in_ch: int, mid_ch: int, num_classes: int, dropout: float = 0.1):
        super().__init__(*conv_bn_relu(in_ch, mid_ch, 3), PairedDropout2d(dropout), nn.Conv2d(mid_ch, num_classes, 1))


class ResNetTrunk(nn.Module):
    """Stem and layer1-4 of a torchvision or timm ResNet (no pooling/fc), layer3/4 dilated: -> (c3, c4) at 1/8."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        act = resnet.relu if hasattr(resnet, "relu") else resnet.act1  # torchvision | timm naming
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, act, resnet.maxpool)
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.layer3, self.layer4 = dilate_(resnet.layer3, 2), dilate_(resnet.layer4, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B,3,H,W] -> layer3 [B,C3,H/8,W/8], layer4 [B,C4,H/8,W/8]."""
        c3 = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return c3, self.layer4(c3)


class PSPNet(nn.Module):
    """PSPNet: trunk -> PPM -> head at 1/8, bilinear upsampling to the input; aux head on layer3 in training."""

    def __init__(self, trunk: nn.Module, c3: int, c4: int, num_classes: int, head_ch: int, aux_ch: int,
                 bins: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1, aux: bool = True):
        super().__init__()
        self.trunk = trunk
        self.ppm = PyramidPooling(c4, c4 // len(bins), bins)
        self.head = SegHead(c4 + len(bins) * (c4 // len(bins)), head_ch, num_classes, dropout)
        self.aux_head = SegHead(c3, aux_ch, num_classes, dropout) if aux else None

    def forward(self, x: Tensor) -> SegOutput:
        """x [B,3,H,W] -> SegOutput(logits [B,K,H,W], features [B,K,H/8,W/8], aux [B,K,H,W] | None)."""
        size = x.shape[-2:]
        c3, c4 = self.trunk(x)
        small = self.head(self.ppm(c4))  # [B,K,H/8,W/8]
        aux = upsample_to(self.aux_head(c3), size) if self.training and self.aux_head is not None else None
        return SegOutput(upsample_to(small, size), small, aux)


def _pspnet_torchvision(name: str, depth: int, num_classes: int, pretrained, **kwargs) -> PSPNet:
    """PSPNet on torchvision ResNet-`depth` (18, 50 or 101), its backbone from `pretrained` (load_backbone)."""
    build = {18: tvm.resnet18, 50: tvm.resnet50, 101: tvm.resnet101}[depth]
    resnet = load_backbone(build(weights=None), name, pretrained)
    c3, c4 = (256, 512) if depth == 18 else (1024, 2048)
    head_ch, aux_ch = (256, 128) if depth == 18 else (512, 256)  # R18 head 256 per docs/method.md
    return PSPNet(ResNetTrunk(resnet), c3, c4, num_classes, head_ch, aux_ch, **kwargs)


@register_model(imagenet=tvm.ResNet101_Weights.IMAGENET1K_V1)
def pspnet101(num_classes: int, pretrained=False, **kwargs) -> PSPNet:
    """PSPNet, dilated ResNet-101 (the ETC teacher)."""
    return _pspnet_torchvision("pspnet101", 101, num_classes, pretrained, **kwargs)


@register_model(imagenet=tvm.ResNet50_Weights.IMAGENET1K_V1)
def pspnet50(num_classes: int, pretrained=False, **kwargs) -> PSPNet:
    """PSPNet, dilated ResNet-50 (a cheaper teacher)."""
    return _pspnet_torchvision("pspnet50", 50, num_classes, pretrained, **kwargs)


@register_model(imagenet=tvm.ResNet18_Weights.IMAGENET1K_V1)
def pspnet18(num_classes: int, pretrained=False, **kwargs) -> PSPNet:
    """PSPNet, dilated ResNet-18 (the paper's headline student)."""
    return _pspnet_torchvision("pspnet18", 18, num_classes, pretrained, **kwargs)


def _pspnet_timm(name: str, width: int, num_classes: int, pretrained, **kwargs) -> PSPNet:
    """PSPNet on a ResNet-18 layout `width` times narrower than ResNet-18 (timm ResNet, channels 64/width-512/width,
    head and aux heads narrowed alike); its backbone from a weights file in this timm ResNet's own format."""
    if is_imagenet(pretrained):
        raise no_pretrained(name, f"the 1/{width}-width ResNet-18 was never trained on ImageNet")
    channels = tuple(c // width for c in (64, 128, 256, 512))
    resnet = timm_resnet.ResNet(timm_resnet.BasicBlock, [2, 2, 2, 2], channels=channels, stem_width=channels[0])
    load_backbone(resnet, name, pretrained)
    return PSPNet(ResNetTrunk(resnet), channels[2], channels[3], num_classes, head_ch=256 // width,
                  aux_ch=128 // width, **kwargs)


@register_model
def pspnet18_slim(num_classes: int, pretrained=False, **kwargs) -> PSPNet:
    """PSPNet on a ResNet-18 layout at 1/4 width (channels 16-128): for tests and the CPU demo."""
    return _pspnet_timm("pspnet18_slim", 4, num_classes, pretrained, **kwargs)


@register_model
def pspnet18_half(num_classes: int, pretrained=False, **kwargs) -> PSPNet:
    """PSPNet on a ResNet-18 layout at 1/2 width (channels 32-256): a CPU-sized teacher for pspnet18_slim."""
    return _pspnet_timm("pspnet18_half", 2, num_classes, pretrained, **kwargs)
