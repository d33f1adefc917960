"""Test and validation splits drawn from images that come without them.

A split never cuts a group: a file (the slices of a volume) or a DICOM study (the slices of a CT
series stored one file a slice, the views of one X-ray examination). Its images look alike, so
an image on one side with its neighbours on the other would make the held-out side look more
normal than new scans would. Images that are a group each split one by one, by the same seeded
draws.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

import numpy as np

from dia.data.errors import DataError

if TYPE_CHECKING:
    from dia.data.folder import FileImages, Splits


def held_out_test(
    normal: list[FileImages],
    abnormal: list[FileImages],
    split_seed: int,
    test_fraction: float,
    where: str,
) -> Splits:
    """Splits of images without a split of their own: a seeded ``test_fraction`` of the
    normal files and every abnormal one are the test set, the other normal ones train.

    The slices of a volume listed in several parts stay together, and a volume with abnormal
    slices goes to the test set whole. ``where`` begins the error about too few normal files.
    """
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    with_abnormal = {f.group for f in abnormal}
    files = [key for key in _groups_of(normal) if key not in with_abnormal]
    if len(files) < 2:
        studies = (
            " (the files of one DICOM study count as one; --dicom-studies false counts them one "
            "by one)"
            if any(f.study for f in normal)
            else ""
        )
        raise DataError(
            f"{where} {len(files)} normal image file(s) without abnormal slices{studies}; at "
            "least 2 are needed so that both the train and the test set get a normal image"
        )
    n_test = min(len(files) - 1, max(1, round(test_fraction * len(files))))
    order = np.random.default_rng(split_seed).permutation(len(files))
    train = {files[i] for i in order[n_test:].tolist()}
    return {
        "train": [f for f in normal if f.group in train],
        "test_normal": [f for f in normal if f.group not in train],
        "test_abnormal": abnormal,
    }


def held_out_val(
    splits: Splits, fraction: float, split_seed: int, where: str, info: dict
) -> Splits:
    """``splits`` with a validation split of whole groups (files, DICOM studies) moved out of
    training: a seeded ``fraction`` of the groups with only normal training images and of the
    groups with abnormal ones (a volume's normal training slices go with it); its image
    counts go into
    ``info["val_held_out"]``. Splits that have a validation split already, or no abnormal
    training file, are returned as they are: ``load_data`` refuses those alike for every
    source. ``where`` names the source in the error about too few normal files."""
    abnormal = splits.get("train_abnormal", [])
    if fraction == 0 or "val_normal" in splits or not abnormal:
        return splits
    abnormal_files = list(_groups_of(abnormal))
    with_abnormal = set(abnormal_files)
    normal_files = [key for key in _groups_of(splits["train"]) if key not in with_abnormal]
    normal_picks, abnormal_picks = val_draw(
        len(normal_files), len(abnormal_files), fraction, split_seed, where, "files"
    )
    val = {normal_files[i] for i in normal_picks} | {abnormal_files[i] for i in abnormal_picks}

    def part(key: str, in_val: bool) -> list[FileImages]:
        return [f for f in splits.get(key, []) if (f.group in val) == in_val]

    splits = {
        **splits,
        "train": part("train", False),
        "train_abnormal": part("train_abnormal", False),
        "val_normal": part("train", True),
        "val_abnormal": part("train_abnormal", True),
    }
    info["val_held_out"] = {
        kind: sum(len(f.images) for f in splits[f"val_{kind}"]) for kind in ("normal", "abnormal")
    }
    return splits


def val_draw(
    n_normal: int, n_abnormal: int, fraction: float, split_seed: int, where: str, unit: str
) -> tuple[np.ndarray, np.ndarray]:
    """The sorted indices of the normal and of the abnormal training ``unit`` (images or
    files) that a validation split of ``fraction`` holds out, seeded by ``split_seed``."""
    if n_abnormal == 0:
        raise DataError(
            f"val_fraction={fraction} needs abnormal images outside the test set, but the "
            f"source {where} has none (folder: put them in train/1_abnormal, or give the "
            "folder a val/0_normal + val/1_abnormal split; CSV list: train rows with an "
            "abnormal label, or val rows)"
        )
    n_val_normal = min(n_normal - 1, max(1, round(fraction * n_normal)))
    if n_val_normal < 1:
        raise DataError(
            f"val_fraction={fraction} needs at least 2 normal training {unit} in {where}"
            + (" without abnormal images (slices)" if unit == "files" else "")
        )
    n_val_abnormal = max(1, round(fraction * n_abnormal))
    # A stream apart from contamination's and max_train's.
    rng = np.random.default_rng([split_seed, 2])
    normal_order = rng.permutation(n_normal)
    abnormal_order = rng.permutation(n_abnormal)
    return np.sort(normal_order[:n_val_normal]), np.sort(abnormal_order[:n_val_abnormal])


def _groups_of(files: list[FileImages]) -> dict[Hashable, None]:
    """The groups of ``files`` (:attr:`~dia.data.folder.FileImages.group`) in their first
    order, each once (a volume may be listed in parts, a study is many files)."""
    return dict.fromkeys(f.group for f in files)
