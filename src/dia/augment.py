"""The SimCLR augmentation of CSI (METHOD.md section 3, step 3), on batched tensors."""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn


class SimCLRAugment(nn.Module):
    """Colour jitter, random grayscale and random resized crop, independently per image.

    Input and output: (B, C, H, W) in [0, 1], same shape. On 1-channel images only brightness
    and contrast apply (saturation, hue and grayscale mean nothing there). ``crop_scale`` is the
    (min, max) area fraction of the crop; test-time augmentation fixes it, e.g. (0.54, 0.54).
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        jitter_strength: float = 0.4,
        jitter_prob: float = 0.8,
        gray_prob: float = 0.2,
        flip: bool = False,
    ) -> None:
        super().__init__()
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale={crop_scale}; expected 0 < min <= max <= 1")
        s = jitter_strength
        ops: list[nn.Module] = []
        if flip:
            ops.append(K.RandomHorizontalFlip())
        if channels == 3:
            ops.append(K.ColorJitter(s, s, s, s / 4, p=jitter_prob))
            ops.append(K.RandomGrayscale(p=gray_prob))
        else:
            ops.append(K.ColorJitter(s, s, 0.0, 0.0, p=jitter_prob))
        ops.append(
            K.RandomResizedCrop((image_size, image_size), scale=crop_scale, ratio=(3 / 4, 4 / 3))
        )
        self.ops = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> augmented (B, C, H, W) in [0, 1]."""
        return self.ops(x).clamp_(0.0, 1.0)
