"""MedMNIST-style ``.npz`` files: one normal class against all the others."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from dia.data.errors import DataError
from dia.data.types import ImageData

REQUIRED_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
VAL_KEYS = ("val_images", "val_labels")  # both or neither: the validation split is optional
TEST_KEYS = ("test_images", "test_labels")  # all an external test set needs


def load_npz(path: str | Path, normal_class: int = 0) -> tuple[ImageData, torch.Tensor]:
    """Read a MedMNIST ``.npz``: train (N,C,H,W) normals; also the abnormal train images.

    Images keep their native size and channels (1 for (N,H,W), 3 for (N,H,W,3)). Labels equal
    to ``normal_class`` become 0, every other label 1. Multi-label files (ChestMNIST: (N,K)
    labels of 0 and 1, one a finding) call an image normal when it has no finding, abnormal
    otherwise; ``normal_class`` must be 0 for them. The second value holds the abnormal
    training images (possibly empty), used only to contaminate the training set on request.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    arrays = _read_arrays(path, REQUIRED_KEYS, optional=VAL_KEYS)
    present_splits = ("train", "val", "test") if "val_images" in arrays else ("train", "test")

    splits, findings = {}, {}
    for split in present_splits:
        images = _images(arrays[f"{split}_images"], path, split)
        labels, findings[split] = _labels(arrays[f"{split}_labels"], path, split, len(images))
        splits[split] = (images, labels)
    if len(set(findings.values())) > 1:
        forms = ", ".join(f"{split}_labels {_form(k)}" for split, k in findings.items())
        raise DataError(
            f"{path} gives labels in different forms ({forms}); every split needs the same"
        )
    _check_normal_class(normal_class, findings["train"], path)

    present = sorted({int(x) for _, labels in splits.values() for x in np.unique(labels)})
    if normal_class not in present:
        raise DataError(
            f"normal_class={normal_class} does not occur in {path}; labels present: {present}"
        )

    train_images, train_labels = splits["train"]
    is_normal = train_labels == normal_class
    val_images, val_labels = splits.get("val", (train_images[:0], train_labels[:0]))
    test_images, test_labels = splits["test"]
    data = ImageData(
        name=path.stem,
        train=_to_tensor(train_images[is_normal]),
        test=_to_tensor(test_images),
        test_labels=_binary(test_labels, normal_class),
        val=_to_tensor(val_images) if len(val_images) else None,
        val_labels=_binary(val_labels, normal_class) if len(val_images) else None,
        info={"file": str(path), "labels_present": present},
    )
    if findings["train"] is not None:
        data.info["findings"] = findings["train"]
    return data, _to_tensor(train_images[~is_normal])


def load_npz_test(path: str | Path, normal_class: int = 0) -> ImageData:
    """The test split of a MedMNIST-style ``.npz``, for evaluating a detector trained on other
    data: only ``test_images`` and ``test_labels`` need be there. Its ``train`` is empty."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    arrays = _read_arrays(path, TEST_KEYS)
    images = _images(arrays["test_images"], path, "test")
    labels, findings = _labels(arrays["test_labels"], path, "test", len(images))
    _check_normal_class(normal_class, findings, path)
    present = sorted(int(x) for x in np.unique(labels))
    if normal_class not in present:
        raise DataError(
            f"normal_class={normal_class} does not occur in {path}; labels present: {present}"
        )
    test = _to_tensor(images)
    data = ImageData(
        name=path.stem,
        train=test[:0],
        test=test,
        test_labels=_binary(labels, normal_class),
        info={"file": str(path), "labels_present": present},
    )
    if findings is not None:
        data.info["findings"] = findings
    return data


def _read_arrays(
    path: Path, keys: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of the npz at ``path``, and ``optional``, a group of keys that is
    there as a whole or not at all."""
    try:
        with open(path, "rb") as f:
            is_zip = zipfile.is_zipfile(f)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}") from err
    # np.load would take any other file for a .npy array or a pickle, and say so.
    if not is_zip:
        raise DataError(
            f"{path} is not an npz archive (a zip file of .npy arrays, as numpy.savez writes)"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in keys if key not in archive.files]
            if missing:
                raise DataError(
                    f"{path} lacks the keys {missing}; a MedMNIST-style npz needs "
                    f"{list(keys)}{' for a test set' if keys == TEST_KEYS else ''}"
                )
            found = [key for key in optional if key in archive.files]
            if found and len(found) < len(optional):
                lacking = [key for key in optional if key not in found]
                raise DataError(
                    f"{path} has {found} but not {lacking}: give both or neither (the "
                    "validation split is optional)"
                )
            return {key: archive[key] for key in (*keys, *found)}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        # np.load raises ValueError for object arrays, zipfile errors for a damaged zip.
        raise DataError(f"cannot read {path} as an .npz file: {err}") from err


def _images(images: np.ndarray, path: Path, split: str) -> np.ndarray:
    """Validate and return images as (N,H,W) or (N,H,W,3)."""
    is_gray = images.ndim == 3
    is_rgb = images.ndim == 4 and images.shape[-1] == 3
    if not (is_gray or is_rgb):
        raise DataError(
            f"{split}_images in {path} must have shape (N,H,W) or (N,H,W,3), got {images.shape}"
        )
    if images.dtype != np.uint8:
        raise DataError(f"{split}_images in {path} must be uint8, got {images.dtype}")
    return images


def _labels(labels: np.ndarray, path: Path, split: str, n: int) -> tuple[np.ndarray, int | None]:
    """Validate labels and return them flat, as int64, with the number of findings K of a
    multi-label file (else None): class labels of shape (N,) or (N,1) as they are; multi-label
    ones, (N,K) of 0 and 1, as 0 for an image without any finding and 1 otherwise."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    findings = None
    if labels.ndim == 2 and labels.shape[0] == n:
        findings = labels.shape[1]
    elif labels.shape != (n,):
        raise DataError(
            f"{split}_labels in {path} must have shape ({n},) or ({n}, 1) to match "
            f"{split}_images, or ({n}, K) for K findings of a multi-label set, got {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{split}_labels in {path} must be integers, got {labels.dtype}")
    if findings is not None:
        if not np.isin(labels, (0, 1)).all():
            values = np.unique(labels)
            raise DataError(
                f"{split}_labels in {path} has {findings} labels an image (multi-label), which "
                f"must be 0 and 1, got values {values[:8].tolist()}"
            )
        labels = labels.any(axis=1)
    return labels.astype(np.int64), findings


def _form(findings: int | None) -> str:
    return "one label an image" if findings is None else f"{findings} findings an image"


def _check_normal_class(normal_class: int, findings: int | None, path: Path) -> None:
    # Another class than "no finding" has no meaning when an image may have several findings.
    if findings is not None and normal_class != 0:
        raise DataError(
            f"normal_class={normal_class}: {path} is multi-label ({findings} findings an image), "
            "where an image is normal when it has no finding; leave normal_class at 0"
        )


def _binary(labels: np.ndarray, normal_class: int) -> torch.Tensor:
    return torch.from_numpy((labels != normal_class).astype(np.int64))


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N,H,W) or (N,H,W,3) to float32 (N,C,H,W) in [0,1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    if tensor.ndim == 3:
        return tensor.unsqueeze(1)
    return tensor.permute(0, 3, 1, 2).contiguous()
