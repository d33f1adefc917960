"""Volumes: NIfTI files (CT, MRI) read as their axial slices, and how a slice is named.

A volume gives one 2-D image a slice. Slice K of a file is named ``FILE#K`` (K counts from 0),
in ``dia score``'s output and in a CSV list, where ``FILE#K`` picks one slice and
``FILE#FIRST-LAST`` a range of them (both ends included); ``FILE`` alone means every slice.
Multi-frame DICOM files are volumes too (:func:`~dia.data.dicom.read_dicom_frames`); their
frames are their slices.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dia.data.dicom import window_text, windowed
from dia.data.errors import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Without a window, each volume is shown from this low to this high percentile of its voxels:
# MRI intensities have no fixed unit, and a few extreme voxels should not darken the rest.
PERCENTILES = (0.5, 99.5)
VOLUME_RANGE = f"the volume's own {PERCENTILES[0]:g}-{PERCENTILES[1]:g} percentile range"
_SELECTION = re.compile(r"(\d+)(?:-(\d+))?")


def is_nifti(path: Path) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` or ``.nii.gz``)."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def slice_name(path: Path, index: int) -> Path:
    """How slice ``index`` of the volume ``path`` is named: ``path#index``."""
    return path.with_name(f"{path.name}#{index}")


def split_selection(name: str) -> tuple[str, range | None]:
    """``"scan.nii.gz#3-5"`` as ``("scan.nii.gz", range(3, 6))``, ``"scan.nii.gz#4"`` as
    ``("scan.nii.gz", range(4, 5))``; a name without such an ending is returned whole, with
    None. Raises :class:`DataError` for a range whose last slice comes before its first."""
    base, mark, tail = name.rpartition("#")
    match = _SELECTION.fullmatch(tail) if mark else None
    if not base or match is None:
        return name, None
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) is not None else first
    if last < first:
        raise DataError(f"slice range {tail!r} of {base}: the last slice comes before the first")
    return base, range(first, last + 1)


def chosen(slices: np.ndarray, selection: range | None, path: Path) -> list[tuple[int, np.ndarray]]:
    """(index, slice) of the slices ``selection`` picks (None: all); an error names the file
    when the selection reaches past its last slice."""
    if selection is None:
        return list(enumerate(slices))
    if selection.stop > len(slices):
        raise DataError(
            f"{path} has {len(slices)} slice(s) (0 to {len(slices) - 1}); "
            f"slice {selection.stop - 1} was asked for"
        )
    return [(k, slices[k]) for k in selection]


def read_nifti(
    path: str | Path, window: tuple[float, float] | None = None
) -> tuple[np.ndarray, str]:
    """The axial slices of a NIfTI file as float32 (K, H, W) in [0, 1], and how they were shown.

    The volume is turned to the closest RAS orientation, so that slice K lies at the K-th
    position from the feet up, and each slice is shown as a DICOM viewer shows an axial image:
    anterior at the top, the patient's right on the left, whatever order the file stores its
    axes in. Intensities are the file's after its scaling (``scl_slope``, ``scl_inter``:
    Hounsfield units for most CT). ``window`` (centre, width) shows them through that window
    (``"given window C/W"``); without one, each volume is shown over its own 0.5 to 99.5
    percentile range. Raises :class:`DataError` naming the file when it cannot be read, is 4-D
    (a time series: save the volumes apart) or holds colour or complex values.
    """
    import nibabel  # here: only volumes need it

    path = Path(path)
    try:
        image = nibabel.load(path)
        shape = tuple(int(n) for n in image.shape)
        if len(shape) > 3 and any(n > 1 for n in shape[3:]):
            raise DataError(
                f"NIfTI file {path} is {len(shape)}-D {shape} (a time series or several "
                "volumes); dia reads 3-D volumes: save each volume as a file of its own"
            )
        dtype = image.get_data_dtype()
        if dtype.fields is not None or np.issubdtype(dtype, np.complexfloating):
            kind = "complex" if dtype.fields is None else "colour (RGB)"
            raise DataError(f"NIfTI file {path} holds {kind} voxels; dia reads gray volumes")
        if len(shape) != 3:
            # One slice, or one volume on a 4-D grid: three axes, as reorienting needs.
            three = shape[:3] + (1,) * (3 - min(len(shape), 3))
            voxels = np.asarray(image.dataobj, dtype=np.float32).reshape(three)
            image = nibabel.Nifti1Image(voxels, image.affine)
        image = nibabel.as_closest_canonical(image)
        voxels = np.asarray(image.dataobj, dtype=np.float32)
    except DataError:
        raise
    except Exception as err:  # nibabel raises many types for a damaged or foreign file
        raise DataError(f"cannot read NIfTI file {path}: {err}") from err
    finite = np.isfinite(voxels)
    if not finite.any():
        raise DataError(f"NIfTI file {path} holds no finite voxel value")
    if window is not None:
        low, high = window[0] - window[1], window[0] + window[1]
        display = f"given window {window_text(window)}"
    else:
        low, high = np.percentile(voxels[finite], PERCENTILES)
        display = VOLUME_RANGE
    # Not-a-number as the darkest value, infinities as the darkest and brightest.
    voxels = np.nan_to_num(voxels, nan=low, posinf=high, neginf=low)
    if window is not None:
        shown = windowed(voxels, *window)
    else:
        shown = np.clip((voxels - low) / max(high - low, 1e-12), 0.0, 1.0)
    # (x, y, z) to (z, y, x), one slice per z; y and x reversed: anterior at the top, the
    # patient's right (high x in RAS) on the left.
    slices = shown.transpose(2, 1, 0)[:, ::-1, ::-1]
    return np.ascontiguousarray(slices, dtype=np.float32), display
