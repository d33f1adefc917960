"""One image file read as pixels: a picture (PNG, JPEG, BMP, TIFF), a DICOM file or a NIfTI
volume, its central square resized and its values shown in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dia.data.dicom import DICOM_SUFFIXES, is_dicom, read_dicom_frames
from dia.data.errors import DataError
from dia.data.volumes import PERCENTILES, chosen, is_nifti, read_nifti, slice_name

# Files PIL reads; any other file may be DICOM, which its content tells.
PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
IMAGE_SUFFIXES = PICTURE_SUFFIXES | DICOM_SUFFIXES
# An RGB image whose channels differ by at most this much (out of 255) counts as grayscale:
# JPEG compression leaves a little colour noise in gray pictures.
GRAY_TOLERANCE = 2


def is_image_file(path: Path) -> bool:
    """Whether a file in a data folder is an image: by its suffix, or DICOM by its content."""
    return path.suffix.lower() in IMAGE_SUFFIXES or is_nifti(path) or is_dicom(path)


def read_images(
    path: str | Path,
    size: int,
    dicom_window: tuple[float, float] | None = None,
    selection: range | None = None,
    cache: dict | None = None,
) -> tuple[list[tuple[Path, np.ndarray]], list[str | None]]:
    """The images of one file as float32 in [0,1], (S,S) if grayscale, else (S,S,3), each
    with its name: the file's own for a 2-D file, ``FILE#K`` for slice K of a volume (a NIfTI
    file or a multi-frame DICOM file; ``selection`` picks slices, None all). Also how each
    DICOM file or volume was shown (:func:`~dia.data.dicom.read_dicom`,
    :func:`~dia.data.volumes.read_nifti`; None for pictures). ``cache``, a dict, keeps the last
    DICOM file or volume read, so that the next call for other slices of it reads it no more.
    """
    path = Path(path)
    key = (path.resolve(), dicom_window)
    if cache is not None and key in cache:
        slices, displays = cache[key]
    elif is_nifti(path):
        slices, display = read_nifti(path, dicom_window)
        displays = [display] * len(slices)
    # A picture's suffix settles it without opening the file a second time for the marker.
    elif path.suffix.lower() not in PICTURE_SUFFIXES and is_dicom(path):
        slices, displays = read_dicom_frames(path, dicom_window)
    else:
        if selection is not None:
            raise DataError(f"{path} is a 2-D image, not a volume: it has no slices to choose")
        try:
            with Image.open(path) as img:
                img.load()
                array = _resized_array(img, size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise DataError(f"cannot read image {path}: {err}") from err
        return [(path, _gray_if_alike(array))], [None]
    if cache is not None:
        cache.clear()
        cache[key] = (slices, displays)
    picked = chosen(slices, selection, path)
    named = [
        (slice_name(path, k) if len(slices) > 1 else path, _gray_if_alike(_resized_float(v, size)))
        for k, v in picked
    ]
    return named, [displays[k] for k, _ in picked]


def _gray_if_alike(array: np.ndarray) -> np.ndarray:
    """A colour image whose channels agree (within JPEG's noise) as gray, clipped to [0, 1]."""
    if array.ndim == 3:
        spread = array.max(axis=2) - array.min(axis=2)
        if spread.max() <= GRAY_TOLERANCE / 255 + 1e-6:
            array = array.mean(axis=2)
    return np.clip(array, 0.0, 1.0).astype(np.float32)


def _central_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The central square of a width x height image, as a PIL box.

    Cropping it and resizing it equals scaling the shorter side to the size and then
    centre-cropping; PIL filters with an antialiasing support when it shrinks.
    """
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def _resized_float(values: np.ndarray, size: int) -> np.ndarray:
    """Resize the central square of float (H,W) or (H,W,C) values to (S,S) or (S,S,C)."""
    box = _central_box(values.shape[1], values.shape[0])
    planes = values[..., None] if values.ndim == 2 else values
    resized = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(planes[..., c], dtype=np.float32)).resize(
                (size, size), Image.Resampling.BICUBIC, box=box
            ),
            dtype=np.float32,
        )
        for c in range(planes.shape[-1])
    ]
    return resized[0] if values.ndim == 2 else np.stack(resized, axis=-1)


def _resized_array(img: Image.Image, size: int) -> np.ndarray:
    """Resize the central square of ``img`` to size x size; (S,S) or (S,S,3) in [0,1]."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # High bit depth: scale to [0,1], then resize in float so no precision is lost.
        values = np.asarray(img, dtype=np.float32)
        if img.mode == "F":
            values = _shown_float(values)
        elif img.mode == "I" and (values.min() < 0 or values.max() > 65535):
            # 32-bit integers beyond the 16-bit range (signed Hounsfield units, say): a unit
            # of their own, shown over the image's range as a float image's are.
            values = _shown_float(values / 65535.0)
        else:
            values = values / 65535.0
        return _resized_float(values, size)

    box = _central_box(*img.size)

    if img.mode in ("1", "L", "LA"):
        img = img.convert("L")
    elif img.mode != "RGB":
        # Palette, RGBA, CMYK, YCbCr... all become plain RGB (alpha is dropped).
        img = img.convert("RGB")
    resized = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
    return np.asarray(resized, dtype=np.float32) / 255.0


def _shown_float(values: np.ndarray) -> np.ndarray:
    """Float pixel values in [0,1]: as they are when they lie in [0,1]; else (a unit of their
    own, such as Hounsfield units) over the image's own 0.5 to 99.5 percentile range, as a NIfTI
    volume is shown without a window. Clipping them to [0,1] would leave a CT image black."""
    finite = np.isfinite(values)
    if not finite.any():
        raise DataError("it holds no finite pixel value")
    low, high = float(values[finite].min()), float(values[finite].max())
    if low < 0.0 or high > 1.0:
        low, high = (float(v) for v in np.percentile(values[finite], PERCENTILES))
    else:
        low, high = 0.0, 1.0
    # Not-a-number as the darkest value, infinities as the darkest and brightest.
    values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
    return np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0).astype(np.float32)
