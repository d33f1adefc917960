"""What a detector's ``fit`` and scoring take: images as float32 (N, C, H, W) in [0, 1], and
the group (file, volume, patient) of each training image, checked and brought to tensors."""

from __future__ import annotations

import warnings

import numpy as np
import torch


def as_images(x, channels: int | None = None, size: int | None = None) -> torch.Tensor:
    """Bring images to float32 (N, C, H, W) in [0, 1].

    Accepts tensors or arrays shaped (N, H, W), (N, C, H, W) or (N, H, W, C) with C in 1 or 3
    and H = W; uint8 values are divided by 255. ``channels`` and ``size``, when given, must match.
    """
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(
            "images must be (N, H, W), (N, C, H, W) or (N, H, W, C) with C in 1 or 3, "
            f"N > 0; got shape {tuple(x.shape)}"
        )
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"images must be square; got {x.shape[-2]}x{x.shape[-1]} (height x width): resize "
            "or crop them first (dia's loaders resize every file to --image-size)"
        )
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError("float images must hold finite values in [0, 1] (uint8 in [0, 255])")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"images have {x.shape[1]} channels; this detector was fit on {channels}")
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        raise ValueError(
            f"images are {tuple(x.shape[-2:])}; this detector was fit on "
            f"{size}x{size}: resize them first"
        )
    return x.contiguous()


# Fewer groups than this leave each training image only a small part of the bank to match.
FEW_GROUPS = 5


def group_numbers(groups, n: int) -> torch.Tensor | None:
    """``groups`` (any labels: numbers, patient IDs, file names) as (n,) int64 group numbers,
    or None when every image is its own group or all are in one (no other group to score
    against). A warning says what one group, or few, cost the threshold."""
    if groups is None:
        return None
    labels = np.asarray(groups.cpu() if isinstance(groups, torch.Tensor) else groups)
    if labels.shape != (n,) or labels.dtype.kind in "fc":
        raise ValueError(
            f"groups must be {n} labels (integers or strings), one an image; got "
            f"{labels.dtype} of shape {labels.shape}"
        )
    index = torch.from_numpy(np.unique(labels, return_inverse=True)[1].reshape(n)).long()
    count = int(index.max()) + 1
    if count == n:
        return None
    if count == 1:
        warnings.warn(
            "every training image is in one group (one volume or patient), so the decision "
            "threshold is chosen on images scored against their own neighbours (slices of one "
            "volume look alike): new normal scans may be called abnormal more often than fpr "
            "says; train on several volumes (or, where an anonymiser gave every DICOM file one "
            "StudyInstanceUID, pass --dicom-studies false)",
            stacklevel=3,
        )
        return None
    if count < FEW_GROUPS:
        warnings.warn(
            f"the training images are in only {count} groups (volumes or patients), and each "
            "is scored against the others alone, a small part of what a new scan is scored "
            "against: new normal scans may be called abnormal less often than fpr says",
            stacklevel=3,
        )
    return index
