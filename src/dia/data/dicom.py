"""DICOM files: one 2-D image a file, shown the way the file itself asks to be shown.

Grayscale pixels go through the DICOM display chain: the modality LUT (rescale slope and
intercept, which gives Hounsfield units for CT), then a window given by the user (centre and
width in those units, e.g. a lung window for chest CT), else the file's VOI LUT or its first
window, else the whole range the stored bits can hold, so that one scanner's files all map to
[0, 1] the same way and brightness keeps its meaning across images. MONOCHROME1 files (bright =
low value) are inverted so that bright means dense in every file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pydicom.errors
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from dia.data.npz import DataError

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
# Every DICOM file written to the standard's Part 10 starts with a 128-byte preamble and these
# four bytes; scanners often export such files without a suffix.
_MAGIC = b"DICM"
_MAGIC_OFFSET = 128
COLOUR = "colour"  # how colour files are shown: as they are, no window
COMPRESSED_HINT = (
    "compressed DICOM may need a decoder: pip install pylibjpeg pylibjpeg-libjpeg "
    "pylibjpeg-openjpeg"
)


def is_dicom(path: Path) -> bool:
    """Whether ``path`` names a DICOM file: a .dcm/.dicom suffix, or none and the DICM marker.

    A ``DICOMDIR`` (the index of a DICOM medium) holds no image and is not one.
    """
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix or path.name.upper() == "DICOMDIR":
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(_MAGIC_OFFSET)
            return handle.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


def read_dicom(
    path: str | Path, window: tuple[float, float] | None = None
) -> tuple[np.ndarray, str]:
    """The image of a single-frame DICOM file as float32 in [0, 1], (H, W) or (H, W, 3), and
    how it was shown: ``"window C/W"`` (the file's), ``"given window C/W"`` (``window``),
    ``"VOI LUT"``, ``"stored range"`` or ``"colour"``.

    ``window`` (centre, width) overrides the file's own display for grayscale images.
    Raises :class:`DataError` naming the file when it is not DICOM, holds no image, holds
    several frames (a volume or a cine loop: export its slices as files of their own) or
    cannot be decoded.
    """
    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as err:
        raise DataError(f"cannot read DICOM file {path}: {err}") from err
    if "PixelData" not in ds:
        raise DataError(f"DICOM file {path} holds no image (no pixel data)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(
            f"DICOM file {path} holds {frames} frames; dia reads one 2-D image a file: "
            "save each frame (slice) as a file of its own"
        )
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many types for undecodable pixel data
        syntax = getattr(ds.file_meta, "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax) or "unknown"
        raise DataError(
            f"cannot decode the pixel data of DICOM file {path} (transfer syntax {name}): "
            f"{err}; {COMPRESSED_HINT}"
        ) from err
    bits = int(ds.get("BitsStored", 8))
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise DataError(f"DICOM file {path}: colour pixel data of shape {pixels.shape}")
        colour = pixels.astype(np.float64) / (2**bits - 1)
        return colour.astype(np.float32), COLOUR
    if pixels.ndim != 2:
        raise DataError(f"DICOM file {path}: pixel data of shape {pixels.shape}, not 2-D")
    values, display = _display_values(pixels, ds, bits, window)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        values = 1.0 - values
    return values.astype(np.float32), display


def _display_values(
    pixels: np.ndarray, ds: pydicom.Dataset, bits: int, window: tuple[float, float] | None
) -> tuple[np.ndarray, str]:
    """Grayscale stored values through the modality LUT and the VOI, in [0, 1]; the VOI's name."""
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if window is not None:
        return _windowed(values, *window), f"given window {_window_text(window)}"
    if "VOILUTSequence" in ds:
        lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        # A LUT is indexed by whole numbers; the modality output is whole whenever the
        # rescale is (and a LUT is only meaningful then).
        shown = apply_voi_lut(np.rint(values).astype(np.int64), ds, prefer_lut=True)
        shown = np.asarray(shown, dtype=np.float64)
        return np.clip(shown / (2**lut_bits - 1), 0.0, 1.0), "VOI LUT"
    own = _first_window(ds)
    if own is not None:
        return _windowed(values, *own), f"window {_window_text(own)}"
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1])
    low, high = np.sort(np.asarray(apply_modality_lut(stored, ds), dtype=np.float64))
    return np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0), "stored range"


def _windowed(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """The standard's linear window (PS3.3 C.11.2.1.2.1), mapped to [0, 1]."""
    return np.clip((values - (centre - 0.5)) / max(width - 1.0, 1.0) + 0.5, 0.0, 1.0)


def _window_text(window: tuple[float, float]) -> str:
    return "/".join(f"{v:g}" for v in window)


def _first_window(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """The file's first (centre, width) window, or None when it gives none usable."""
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is None or width is None:
        return None
    if isinstance(centre, pydicom.multival.MultiValue):
        centre = centre[0]
    if isinstance(width, pydicom.multival.MultiValue):
        width = width[0]
    if centre == "" or width == "" or float(width) < 1:
        return None
    return float(centre), float(width)
