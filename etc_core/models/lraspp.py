"""LR-ASPP on MobileNetV3-Large (Howard et al., ICCV 2019), as torchvision builds it: OS16 trunk, OS8 output."""
from __future__ import annotations

import logging

import torchvision.models as tvm
from torch import Tensor, nn
from torchvision.models.segmentation.lraspp import LRASPPHead

from etc_core.models._builder import SegOutput, is_imagenet, load_backbone, no_pretrained, upsample_to
from etc_core.models._registry import register_model

log = logging.getLogger(__name__)


class LRASPPMobileNetV3(nn.Module):
    """MobileNetV3-Large (last stage dilated) + LR-ASPP head fusing the stride-8 and stride-16 features; no aux."""

    def __init__(self, backbone: tvm.MobileNetV3, num_classes: int, inter_channels: int = 128):
        super().__init__()
        features = backbone.features
        # the C1..Cn-1 blocks (the strided ones), as in torchvision's _lraspp_mobilenetv3
        stage_indices = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
        self.low_pos = stage_indices[-4]  # C2, output stride 8
        self.low = features[: self.low_pos + 1]
        self.high = features[self.low_pos + 1:]  # up to C5, output stride 16 (dilated last stage)
        low_ch, high_ch = features[self.low_pos].out_channels, features[-1].out_channels
        self.head = LRASPPHead(low_ch, high_ch, num_classes, inter_channels)

    def forward(self, x: Tensor) -> SegOutput:
        """x [B,3,H,W] -> SegOutput(logits [B,K,H,W], features [B,K,H/8,W/8], aux None)."""
        low = self.low(x)  # [B,40,H/8,W/8]
        small = self.head({"low": low, "high": self.high(low)})  # [B,K,H/8,W/8]
        return SegOutput(upsample_to(small, x.shape[-2:]), small, None)


@register_model(imagenet=tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V1)
def lraspp_mobilenetv3(num_classes: int, pretrained=False, width_mult: float = 1.0,
                       **kwargs) -> LRASPPMobileNetV3:
    """LR-ASPP MobileNetV3-Large student; `width_mult` < 1 gives a cheaper net (ImageNet weights only at 1.0)."""
    if is_imagenet(pretrained) and width_mult != 1.0:
        raise no_pretrained("lraspp_mobilenetv3",
                            f"torchvision has ImageNet weights only for width_mult=1.0, not {width_mult}")
    backbone = load_backbone(tvm.mobilenet_v3_large(weights=None, dilated=True, width_mult=width_mult),
                             "lraspp_mobilenetv3", pretrained)
    return LRASPPMobileNetV3(backbone, num_classes, **kwargs)
