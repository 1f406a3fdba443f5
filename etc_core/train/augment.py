"""Paired augmentation of a training sample: frames, label and flow transformed together (docs/method.md, Augmentation).

Scale by s: frames and flow resized, flow vectors multiplied by s. Horizontal flip: everything mirrored and
flow x negated. Crop/pad to the crop size: frames padded with the ImageNet mean colour, labels with 255, and
flow with a vector pointing far outside the frame, so padded pixels count as having no correspondence
(`in_frame_mask` is False there and the temporal loss ignores them).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from etc_core.data.base import IGNORE_INDEX
from etc_core.models.preprocess import MEAN_RGB

NO_FLOW = 1e4  # padded pixels: flow that samples far outside the frame


class PairAugment:
    """Callable on a decoded sample dict (img0/img1 uint8 [H,W,3], flow float32 [2,H,W], label uint8 [H,W])."""

    def __init__(self, crop: tuple[int, int], scale: tuple[float, float] = (0.5, 2.0), flip: bool = True):
        self.crop = crop
        self.scale = scale
        self.flip = flip

    def __call__(self, sample: dict) -> dict:
        img0 = torch.tensor(sample["img0"]).permute(2, 0, 1).float()  # [3,H,W] (a copy: decoded arrays are read-only)
        img1 = torch.tensor(sample["img1"]).permute(2, 0, 1).float()
        flow = torch.tensor(sample["flow"]).float()  # [2,H,W]
        label = sample.get("label")
        label = (torch.full(img0.shape[1:], IGNORE_INDEX, dtype=torch.uint8) if label is None
                 else torch.tensor(label))
        s = float(np.exp(np.random.uniform(np.log(self.scale[0]), np.log(self.scale[1]))))
        height, width = img0.shape[1:]
        size = (max(1, round(height * s)), max(1, round(width * s)))
        if size != (height, width):
            images = F.interpolate(torch.stack([img0, img1]), size=size, mode="bilinear", align_corners=False)
            img0, img1 = images[0], images[1]
            flow = F.interpolate(flow[None], size=size, mode="bilinear", align_corners=False)[0]
            flow = flow * torch.tensor([size[1] / width, size[0] / height]).view(2, 1, 1)
            label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].to(torch.uint8)
        if self.flip and np.random.rand() < 0.5:
            img0, img1, label = img0.flip(-1), img1.flip(-1), label.flip(-1)
            flow = flow.flip(-1) * torch.tensor([-1.0, 1.0]).view(2, 1, 1)
        img0, img1, flow, label = self._crop(img0, img1, flow, label)
        out = {k: v for k, v in sample.items() if k not in ("label1", "valid")}  # evaluation-only fields
        out.update(img0=img0.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy(),
                   img1=img1.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy(),
                   flow=flow.numpy(), label=label.numpy())
        return out

    def _crop(self, img0, img1, flow, label):
        ch, cw = self.crop
        height, width = img0.shape[1:]
        ph, pw = max(ch - height, 0), max(cw - width, 0)
        if ph or pw:
            mean = torch.tensor(MEAN_RGB).view(3, 1, 1) * 255
            pad = (0, pw, 0, ph)
            img0 = F.pad(img0 - mean, pad) + mean
            img1 = F.pad(img1 - mean, pad) + mean
            flow = F.pad(flow, pad, value=NO_FLOW)
            label = F.pad(label, pad, value=IGNORE_INDEX)
            height, width = height + ph, width + pw
        top = np.random.randint(0, height - ch + 1)
        left = np.random.randint(0, width - cw + 1)
        win = (slice(None), slice(top, top + ch), slice(left, left + cw))
        return img0[win], img1[win], flow[win], label[win[1:]]
