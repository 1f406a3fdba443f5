"""MobileNetV2 student (Sandler et al., CVPR 2018), dilated to output stride 8, with a light PSP head."""
from __future__ import annotations

import logging

import torchvision.models as tvm
from torch import Tensor, nn

from etc_core.models._builder import SegOutput, dilate_, is_imagenet, load_backbone, no_pretrained, upsample_to
from etc_core.models._registry import register_model
from etc_core.models.pspnet import PyramidPooling, SegHead

log = logging.getLogger(__name__)

_OS8_END, _OS16_END, _LAST = 7, 14, 18  # torchvision features[i]: 7-13 were stride 16, 14-17 stride 32; 18 = 1x1


class MobileNetV2Seg(nn.Module):
    """MobileNetV2 features 0-17 (the 1280-ch 1x1 conv dropped), blocks 7-13 dilated 2 and 14-17 dilated 4.

    Head: PPM (bins 1,2,3,6, C/4 each) + conv3x3 128 + dropout 0.1 + 1x1; aux head on block 13 in training.
    """

    def __init__(self, features: nn.Sequential, num_classes: int, head_ch: int = 128, aux_ch: int = 64,
                 dropout: float = 0.1, aux: bool = True):
        super().__init__()
        for block in features[_OS8_END:_OS16_END]:
            dilate_(block, 2)
        for block in features[_OS16_END:_LAST]:
            dilate_(block, 4)
        self.stem = features[:_OS16_END]  # -> [B,C13,H/8,W/8]
        self.tail = features[_OS16_END:_LAST]  # -> [B,C17,H/8,W/8]
        c13, c17 = features[_OS16_END - 1].out_channels, features[_LAST - 1].out_channels
        self.ppm = PyramidPooling(c17, c17 // 4)
        self.head = SegHead(c17 + 4 * (c17 // 4), head_ch, num_classes, dropout)
        self.aux_head = SegHead(c13, aux_ch, num_classes, dropout) if aux else None

    def forward(self, x: Tensor) -> SegOutput:
        """x [B,3,H,W] -> SegOutput(logits [B,K,H,W], features [B,K,H/8,W/8], aux [B,K,H,W] | None)."""
        size = x.shape[-2:]
        mid = self.stem(x)
        small = self.head(self.ppm(self.tail(mid)))  # [B,K,H/8,W/8]
        aux = upsample_to(self.aux_head(mid), size) if self.training and self.aux_head is not None else None
        return SegOutput(upsample_to(small, size), small, aux)


@register_model(imagenet=tvm.MobileNet_V2_Weights.IMAGENET1K_V1)
def mobilenetv2(num_classes: int, pretrained=False, width_mult: float = 1.0, **kwargs) -> MobileNetV2Seg:
    """MobileNetV2 student at output stride 8; `width_mult` < 1 gives a cheaper net (ImageNet weights only at 1.0)."""
    if is_imagenet(pretrained) and width_mult != 1.0:
        raise no_pretrained("mobilenetv2",
                            f"torchvision has ImageNet weights only for width_mult=1.0, not {width_mult}")
    backbone = load_backbone(tvm.mobilenet_v2(weights=None, width_mult=width_mult), "mobilenetv2", pretrained)
    return MobileNetV2Seg(backbone.features, num_classes, **kwargs)
