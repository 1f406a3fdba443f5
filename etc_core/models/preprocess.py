"""What every network here takes as input: ImageNet-normalised float frames (`normalize` of uint8 RGB)."""
from __future__ import annotations

import torch

MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB [B,3,H,W] -> float ImageNet-normalised [B,3,H,W] (the network's input)."""
    mean = torch.tensor(MEAN_RGB, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD_RGB, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std
