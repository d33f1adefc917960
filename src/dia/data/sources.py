"""``load_data``: the registered source that matches a data spec reads it
(:mod:`dia.data.registry`), then its images are shaped one way."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import dia.data.builtin  # noqa: F401  (registers the built-in sources)
from dia.config import MIN_IMAGE_SIZE, DataConfig
from dia.data.channels import to_channels
from dia.data.errors import DataError
from dia.data.registry import find_source
from dia.data.splits import val_draw
from dia.data.types import ImageData

# Channels within this distance count as equal (uint8 rounding, JPEG colour noise).
_GRAY_TOLERANCE = 2.5 / 255


def load_data(config: DataConfig) -> ImageData:
    """Load the data set of ``config.spec``: float32 (N,C,S,S) images in [0,1], 0/1 labels."""
    _check_config(config)
    data, abnormal_train, abnormal_groups, source = _load_source(config)

    if config.image_size is not None:
        data.train = _resize(data.train, config.image_size)
        data.test = _resize(data.test, config.image_size)
        data.val = None if data.val is None else _resize(data.val, config.image_size)
        abnormal_train = _resize(abnormal_train, config.image_size)
    _check_sizes(data, config)

    parts = [data.train, data.test, abnormal_train] + ([] if data.val is None else [data.val])
    channels = config.channels or (1 if all(_is_gray(p) for p in parts) else 3)
    colour, read = data.info.get("colour_files", 0), data.info.get("files_read", 0)
    if config.channels is None and channels == 3 and 0 < colour < read / 2:
        warnings.warn(
            f"{colour} of {read} image files are in colour, so the detector works in colour "
            "(3 channels); if their colour is incidental (an annotation, an RGB export), "
            "--channels 1 reads every file as gray",
            stacklevel=2,
        )
    data.train = to_channels(data.train, channels)
    data.test = to_channels(data.test, channels)
    data.val = None if data.val is None else to_channels(data.val, channels)
    abnormal_train = to_channels(abnormal_train, channels)

    abnormal_train = _hold_out_val(data, abnormal_train, config)
    if config.max_train is not None and config.max_train < len(data.train):
        rng = np.random.default_rng(config.split_seed)
        keep = torch.from_numpy(
            np.sort(rng.choice(len(data.train), size=config.max_train, replace=False))
        )
        data.train = data.train[keep]
        if data.train_groups is not None:
            data.train_groups = data.train_groups[keep]
    contaminated = _contaminate(data, abnormal_train, abnormal_groups, config)

    _check_result(data, config)
    data.info.update(
        source=source,
        spec=config.spec,
        normal_class=config.normal_class,
        image_size=data.image_size,
        channels=data.channels,
        contamination=config.contamination,
        contaminated=len(contaminated),
        contaminated_indices=contaminated,
        counts=data.counts(),
    )
    return data


def load_test_set(config: DataConfig) -> ImageData:
    """The images a data set holds for testing, to evaluate a detector trained on other data
    (an external test set): a folder's ``test/`` (every image of a flat ``normal/`` +
    ``abnormal/`` layout), a CSV list's test rows (every row when it gives no split), the test
    split of an npz (which needs no other arrays), MedMNIST or synthetic set.
    ``config.image_size`` and ``config.channels`` must be given: the detector's. Its ``train``
    is empty."""
    _check_config(config)
    size, channels = config.image_size, config.channels
    if size is None or channels is None:
        raise ValueError("an external test set needs the detector's image_size and channels")
    found = find_source(config.spec)
    data, source = found.load_test(config), found.name
    if data is None:  # the source's test split, as load_data gives it
        data = load_data(dataclasses.replace(config, val_fraction=0.0, contamination=0.0))
        data.val = data.val_labels = None
    data.test = to_channels(_resize(data.test, size), channels)
    data.train = data.test[:0]
    counts = data.counts()
    if counts["test_normal"] == 0 or counts["test_abnormal"] == 0:
        raise DataError(
            f"one-class test set in {config.spec!r}: {counts['test_normal']} normal and "
            f"{counts['test_abnormal']} abnormal test images; AUROC needs both classes "
            "(dia score scores images of one class)"
        )
    data.info.update(
        source=source,
        spec=config.spec,
        normal_class=config.normal_class,
        image_size=size,
        channels=channels,
        counts=counts,
    )
    return data


def _load_source(
    config: DataConfig,
) -> tuple[ImageData, torch.Tensor, torch.Tensor | None, str]:
    """(data at the source's size, abnormal training images, their groups (files that hold
    several images only), source name) for the spec: the first registered source that
    matches it reads it."""
    source = find_source(config.spec)
    data, abnormal, groups = source.load_with_abnormal(config)
    return data, abnormal, groups, source.name


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N,C,H,W) to (N,C,size,size), bilinear with antialiasing when shrinking."""
    if images.shape[-2:] == (size, size):
        return images
    if len(images) == 0:
        return images.new_zeros((0, images.shape[1], size, size))
    out = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    return out.clamp_(0.0, 1.0)


def _is_gray(images: torch.Tensor) -> bool:
    """True if every image has one channel or three equal ones."""
    if images.shape[1] == 1 or len(images) == 0:
        return True
    spread = images.amax(dim=1) - images.amin(dim=1)
    return bool(spread.max() <= _GRAY_TOLERANCE)


def _hold_out_val(data: ImageData, abnormal: torch.Tensor, config: DataConfig) -> torch.Tensor:
    """Move a seeded ``val_fraction`` of the normal training images and of the abnormal
    training images into a validation split; returns the abnormal images left over.

    This gives a source without a validation split one to choose settings on, without
    touching its test split. The abnormal images that stay remain available to contamination.
    Folders and CSV lists draw it themselves, by whole files (a volume's slices stay
    together), and say so in ``info["val_held_out"]``.
    """
    fraction = config.val_fraction
    if fraction == 0 or "val_held_out" in data.info:
        return abnormal
    if data.val is not None:
        raise DataError(
            f"val_fraction={fraction}: {config.spec!r} has its own validation split "
            f"({len(data.val)} images); leave val_fraction at 0 to use it"
        )
    picks = val_draw(
        len(data.train), len(abnormal), fraction, config.split_seed, repr(config.spec), "images"
    )
    normal_val, abnormal_val = (torch.from_numpy(p) for p in picks)
    # Sources of grouped images (volumes) drew theirs by file, or val_draw raised.
    assert data.train_groups is None, "grouped images are held out by file"
    normal_kept = torch.ones(len(data.train), dtype=torch.bool)
    normal_kept[normal_val] = False
    abnormal_kept = torch.ones(len(abnormal), dtype=torch.bool)
    abnormal_kept[abnormal_val] = False
    data.val = torch.cat([data.train[normal_val], abnormal[abnormal_val]])
    data.val_labels = torch.cat([torch.zeros(len(normal_val)), torch.ones(len(abnormal_val))])
    data.val_labels = data.val_labels.long()
    data.train = data.train[normal_kept]
    data.info["val_held_out"] = {"normal": len(normal_val), "abnormal": len(abnormal_val)}
    return abnormal[abnormal_kept]


def _contaminate(
    data: ImageData, abnormal: torch.Tensor, groups: torch.Tensor | None, config: DataConfig
) -> list[int]:
    """Replace round(c*N) training images by abnormal ones (an image put in takes its group,
    ``groups``, along); returns the replaced indices."""
    needed = round(config.contamination * len(data.train))
    if needed == 0:
        return []
    held = data.info.get("val_held_out", {}).get("abnormal", 0)
    after_val = f" left after val_fraction took {held} for validation" if held else ""
    if len(abnormal) == 0:
        raise DataError(
            f"contamination={config.contamination} needs abnormal training images, but the "
            f"source {config.spec!r} has none{after_val} (npz: train images of other labels; "
            "folder: train/1_abnormal)"
        )
    if len(abnormal) < needed:
        raise DataError(
            f"contamination={config.contamination} needs {needed} abnormal training images, "
            f"but {config.spec!r} has only {len(abnormal)}{after_val}"
        )
    # A stream apart from max_train's, so the two choices do not correlate.
    rng = np.random.default_rng([config.split_seed, 1])
    targets = np.sort(rng.choice(len(data.train), size=needed, replace=False))
    picks = rng.choice(len(abnormal), size=needed, replace=False)
    train = data.train.clone()
    train[torch.from_numpy(targets)] = abnormal[torch.from_numpy(picks)]
    data.train = train
    if data.train_groups is not None:
        train_groups = data.train_groups.clone()
        train_groups[torch.from_numpy(targets)] = groups[torch.from_numpy(picks)]
        data.train_groups = train_groups
    return targets.tolist()


def _check_config(config: DataConfig) -> None:
    """What the settings (checked on their own as they were built, :mod:`dia.config`) cannot
    say alone: whether the data spec is one the DICOM settings apply to."""
    if config.dicom.window is not None:
        source = Path(config.spec.strip()).expanduser()
        if not (source.is_dir() or source.suffix.lower() == ".csv"):
            raise DataError(
                "dicom_window applies to folders and CSV lists of DICOM files only (and of "
                f"NIfTI files), not to {config.spec!r}"
            )


def _check_sizes(data: ImageData, config: DataConfig) -> None:
    # Found now rather than when the trained detector first scores the test set. (Abnormal
    # training images come from the training split, at its size.)
    parts = {"train": data.train, "val": data.val, "test": data.test}
    sizes = {name: tuple(p.shape[-2:]) for name, p in parts.items() if p is not None}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name} {h}x{w}" for name, (h, w) in sizes.items())
        raise DataError(
            f"the splits of {config.spec!r} differ in image size ({listed}); give an image "
            "size (--image-size N) to resize every split to N x N"
        )
    (h, w), *_ = sizes.values()
    if min(h, w) < MIN_IMAGE_SIZE:
        raise DataError(
            f"the images of {config.spec!r} are {h}x{w} px, too small to hold detail; give an "
            f"image size (--image-size N, at least {MIN_IMAGE_SIZE}) to resize them"
        )


def _check_result(data: ImageData, config: DataConfig) -> None:
    if len(data.train) == 0:
        raise DataError(
            f"no training images in {config.spec!r} (normal_class={config.normal_class})"
        )
    counts = data.counts()
    if counts["test_normal"] == 0 or counts["test_abnormal"] == 0:
        raise DataError(
            f"one-class test set in {config.spec!r}: {counts['test_normal']} normal and "
            f"{counts['test_abnormal']} abnormal test images; AUROC needs both classes"
        )
