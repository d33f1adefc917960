"""The one container every data source returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageData:
    """Images of one data set, split for one-class anomaly detection.

    Every tensor of images is float32, shape (N, C, H, W), values in [0, 1]; every label tensor
    is int64, shape (N,), with 1 = abnormal and 0 = normal. ``train`` holds the images used for
    training (normal ones only, unless contamination was asked for); ``val`` may be None.
    ``train_groups``, for data read from volumes or DICOM studies of several files, holds for
    each training image the number of its group (the slices of one volume, the files of one
    study share one; an abnormal image put in by contamination keeps its own), so that the
    detector chooses its threshold leaving whole groups out; None when no group holds more than
    one training image (normal or abnormal). ``test_names``: for data read from files, each
    test image's file (``FILE#K`` for slice K of a volume); None for arrays.
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    val: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    info: dict = field(default_factory=dict)
    train_groups: torch.Tensor | None = None
    test_names: list[str] | None = None

    @property
    def channels(self) -> int:
        return int(self.train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.shape[-1])

    def counts(self) -> dict:
        """Image counts per split and class, for reports."""
        out = {
            "train": int(self.train.shape[0]),
            "test_normal": int((self.test_labels == 0).sum()),
            "test_abnormal": int((self.test_labels == 1).sum()),
        }
        if self.val is not None and self.val_labels is not None:
            out["val_normal"] = int((self.val_labels == 0).sum())
            out["val_abnormal"] = int((self.val_labels == 1).sum())
        return out
