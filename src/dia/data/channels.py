"""Gray and colour: the one conversion between them that every way of reading images uses."""

from __future__ import annotations

import torch

# Luminance weights of ITU-R BT.601, the ones PIL uses for RGB -> L.
LUMA = (0.299, 0.587, 0.114)


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """(N,C,H,W) images in [0,1] as (N,``channels``,H,W): gray repeated into three channels,
    colour to gray by BT.601 luma.

    A pixel whose three channels are equal keeps that value exactly, so that a gray image
    gives the same pixels whether it was read alone or repeated into a colour set: a detector
    then sees the same file the same way in training, evaluation and ``dia score``.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}; expected 1 or 3")
    if images.shape[1] == channels:
        return images
    if images.shape[1] != (3 if channels == 1 else 1):
        raise ValueError(f"cannot turn {images.shape[1]} channels into {channels}")
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    red, green, blue = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    # Element by element, so a pixel's gray value does not depend on the images beside it.
    luma = (LUMA[0] * red + LUMA[1] * green + LUMA[2] * blue).clamp_(0.0, 1.0)
    return torch.where((red == green) & (green == blue), red, luma)
