"""DICOM files: 2-D images, or volumes of frames, shown the way the file itself asks.

Grayscale pixels go through the DICOM display chain: the modality LUT (rescale slope and
intercept, which gives Hounsfield units for CT), then a window given by the user (centre and
width in those units, e.g. a lung window for chest CT), else the file's VOI LUT or its first
window (linear, linear-exact or sigmoid, as the file says), else the whole range the stored bits
can hold, so that one scanner's files all map to [0, 1] the same way and brightness keeps its
meaning across images. MONOCHROME1 files (bright = low value) are inverted so that bright means
dense in every file. Colour files (RGB, YBR, palette colour) are shown in their colours. The
frames of a multi-frame file (the slices of an enhanced CT or MR volume, a cine loop) each go
through the same chain, with the rescale and window of the frame's functional groups where the
file gives them there, and the slices of a volume come in the order of their position.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.errors
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dia.data.errors import DataError

# .ima: Siemens' name for its DICOM exports.
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".ima"})
# Every DICOM file written to the standard's Part 10 starts with a 128-byte preamble and these
# four bytes; scanners and archives often name such files by a number or a UID instead.
_MAGIC = b"DICM"
_MAGIC_OFFSET = 128
COLOUR = "colour"  # how colour files are shown: as they are, no window
COMPRESSED_HINT = (
    "compressed DICOM may need a decoder: pip install pylibjpeg pylibjpeg-libjpeg "
    "pylibjpeg-openjpeg"
)
WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def is_dicom(path: Path) -> bool:
    """Whether ``path`` names a DICOM file: a .dcm/.dicom/.ima suffix, or the DICM marker of
    the standard's file format whatever the name (``1.2.840.113619.2.55``, ``IM0001``).

    A ``DICOMDIR`` (the index of a DICOM medium) holds no image and is not one.
    """
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.name.upper() == "DICOMDIR":
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(_MAGIC_OFFSET)
            return handle.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


def dicom_study(path: str | Path) -> str | None:
    """The StudyInstanceUID of a DICOM file (its header only is read), or None when it has
    none or the header cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"], force=True
            )
        uid = str(ds.get("StudyInstanceUID", "") or "").strip()
    except Exception:  # the pixel read, which comes first, reports unreadable files
        return None
    return uid or None


def read_dicom(
    path: str | Path, window: tuple[float, float] | None = None
) -> tuple[np.ndarray, str]:
    """The image of a single-frame DICOM file as float32 in [0, 1], (H, W) or (H, W, 3), and
    how it was shown: ``"window C/W"`` (the file's; a non-linear function named after it),
    ``"given window C/W"`` (``window``), ``"VOI LUT ..."``, ``"stored range LOW to HIGH"`` or
    ``"colour"``.

    ``window`` (centre, width) overrides the file's own display for grayscale images.
    Raises :class:`DataError` naming the file when it is not DICOM, holds no image, holds
    several frames (read those with :func:`read_dicom_frames`) or cannot be decoded.
    """
    frames, displays = read_dicom_frames(path, window)
    if len(frames) > 1:
        raise DataError(
            f"DICOM file {path} holds {len(frames)} frames, not one image; in a folder or a "
            "CSV list each frame is read as an image of its own"
        )
    return frames[0], displays[0]


def read_dicom_frames(
    path: str | Path, window: tuple[float, float] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Every frame of a DICOM file as float32 in [0, 1], (F, H, W) or (F, H, W, 3), and how
    each was shown (as in :func:`read_dicom`); a single-frame file gives F = 1.

    Frames that are planes of one orientation at known positions (enhanced CT and MR) come in
    the order of their position along the planes' normal (for axial slices: feet to head, as
    NIfTI slices come), whatever order the file stores them in; other frames (a cine loop)
    come in the order stored.
    """
    ds = _dataset(Path(path))
    frames, displays = _frames_as_stored(ds, path, window)
    order = _spatial_order(ds, len(frames))
    return frames[order], [displays[k] for k in order]


def _frames_as_stored(
    ds: pydicom.Dataset, path: str | Path, window: tuple[float, float] | None
) -> tuple[np.ndarray, list[str]]:
    """:func:`read_dicom_frames` of the file's data set, its frames in the order stored."""
    if "PixelData" not in ds:
        raise DataError(f"DICOM file {path} holds no image (no pixel data)")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many types for undecodable pixel data
        syntax = ds.file_meta.get("TransferSyntaxUID")
        name = getattr(syntax, "name", syntax) or "unknown"
        hint = f"; {COMPRESSED_HINT}" if getattr(syntax, "is_compressed", False) else ""
        raise DataError(
            f"cannot decode the pixel data of DICOM file {path} (transfer syntax {name}): "
            f"{err}{hint}"
        ) from err
    if count == 1:
        pixels = pixels[None]
    bits = int(ds.get("BitsStored", 8))
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        colour = apply_color_lut(pixels, ds).astype(np.float64) / (2**lut_bits - 1)
        return np.clip(colour, 0.0, 1.0).astype(np.float32), [COLOUR] * len(pixels)
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        if pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise DataError(f"DICOM file {path}: colour pixel data of shape {pixels.shape}")
        colour = pixels.astype(np.float64) / (2**bits - 1)
        return np.clip(colour, 0.0, 1.0).astype(np.float32), [COLOUR] * len(pixels)
    if pixels.ndim != 3:
        shape = pixels.shape[1:] if count == 1 else pixels.shape
        raise DataError(f"DICOM file {path}: pixel data of shape {shape}, not 2-D")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and len(per_frame) != len(pixels):
        raise DataError(
            f"DICOM file {path}: {len(per_frame)} per-frame functional group items for "
            f"{len(pixels)} frames; the standard asks for one a frame"
        )
    frames, displays = [], []
    for k in range(len(pixels)):
        groups = {key: _functional_item(ds, k, key) for key in _FRAME_GROUPS}
        values, display = _display_values(pixels[k], ds, bits, window, path, groups)
        frames.append(1.0 - values if photometric == "MONOCHROME1" else values)
        displays.append(display)
    return np.stack(frames).astype(np.float32), displays


# Functional groups of enhanced multi-frame files that hold what a frame's display needs.
_FRAME_GROUPS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")


def _spatial_order(ds: pydicom.Dataset, count: int) -> np.ndarray:
    """The frames' order along the normal of their planes (towards the patient's left, back or
    head), from the plane position and orientation functional groups; the stored order when a
    frame lacks either or has a malformed one, when the frames lie in planes of different
    orientations, or when two share a position."""
    stored = np.arange(count)
    if count < 2 or not ds.get("PerFrameFunctionalGroupsSequence"):
        return stored
    positions, orientations = [], []
    for k in range(count):
        plane = _functional_item(ds, k, "PlanePositionSequence")
        facing = _functional_item(ds, k, "PlaneOrientationSequence")
        try:
            position = [float(v) for v in plane.ImagePositionPatient]
            orientation = [float(v) for v in facing.ImageOrientationPatient]
        except (AttributeError, TypeError, ValueError):
            return stored
        if len(position) != 3 or len(orientation) != 6:
            return stored
        positions.append(position)
        orientations.append(orientation)
    positions, orientations = np.array(positions), np.array(orientations)
    if not np.allclose(orientations, orientations[0], atol=1e-4):
        return stored
    normal = np.cross(orientations[0, :3], orientations[0, 3:])
    # Along the patient axis the normal is closest to, in DICOM's direction (x to the
    # patient's left, y to the back, z to the head): axial slices run feet to head whichever
    # way the rows run.
    if normal[np.argmax(np.abs(normal))] < 0:
        normal = -normal
    depth = positions @ normal
    if not np.isfinite(depth).all() or len(np.unique(np.round(depth, 4))) < count:
        return stored
    return np.argsort(depth, kind="stable")


def _functional_item(ds: pydicom.Dataset, frame: int, keyword: str) -> pydicom.Dataset | None:
    """The first item of functional group ``keyword`` for ``frame``: the frame's own, else the
    one its file shares between frames, else None."""
    for groups, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        sequence = ds.get(groups)
        if sequence and len(sequence) > index:
            item = sequence[index].get(keyword)
            if item:
                return item[0]
    return None


def _dataset(path: Path) -> pydicom.Dataset:
    """The file's data set. A file named as DICOM but lacking the standard's preamble and file
    meta (older exports) is read all the same, its encoding guessed from its first elements."""
    try:
        return pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError as err:
        if path.suffix.lower() not in DICOM_SUFFIXES:
            raise DataError(f"cannot read DICOM file {path}: {err}") from err
        first_error = err
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"cannot read DICOM file {path}: {err}") from err
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's notes on what it had to guess
            ds = pydicom.dcmread(path, force=True)
    except Exception as err:  # whatever the bytes were, they were not DICOM
        raise DataError(f"cannot read DICOM file {path}: {first_error}") from err
    if len(ds) == 0 or "PixelData" not in ds:
        raise DataError(f"cannot read DICOM file {path}: {first_error}")
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit
            else ExplicitVRLittleEndian
            if little
            else ExplicitVRBigEndian
        )
    return ds


def _display_values(
    pixels: np.ndarray,
    ds: pydicom.Dataset,
    bits: int,
    window: tuple[float, float] | None,
    path: str | Path,
    groups: dict[str, pydicom.Dataset | None],
) -> tuple[np.ndarray, str]:
    """Grayscale stored values through the modality LUT and the VOI, in [0, 1]; the VOI's name.
    ``groups``: the frame's functional group items (:data:`_FRAME_GROUPS`), used where the
    file's own elements give no rescale or window."""
    transform = groups["PixelValueTransformationSequence"]

    def modality(stored: np.ndarray) -> np.ndarray:
        own = ds.get("RescaleSlope") is not None or ds.get("ModalityLUTSequence")
        if transform is not None and not own:
            try:
                slope = float(transform.get("RescaleSlope", 1) or 1)
                intercept = float(transform.get("RescaleIntercept", 0) or 0)
            except (ValueError, TypeError) as err:
                raise DataError(f"DICOM file {path}: unreadable rescale: {err}") from err
            return stored * slope + intercept
        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)

    values = modality(pixels)
    if window is not None:
        return windowed(values, *window), f"given window {window_text(window)}"
    lut = ds.get("VOILUTSequence")
    if lut:
        item = lut[0]
        lut_bits = int(item.LUTDescriptor[2])
        # A LUT is indexed by whole numbers; the modality output is whole whenever the
        # rescale is (and a LUT is only meaningful then).
        shown = apply_voi_lut(np.rint(values).astype(np.int64), ds, prefer_lut=True)
        shown = np.asarray(shown, dtype=np.float64) / (2**lut_bits - 1)
        entries, first = int(item.LUTDescriptor[0]) or 65536, int(item.LUTDescriptor[1])
        name = str(item.get("LUTExplanation", "")).strip()
        text = f"VOI LUT {name or f'of {entries} entries from {first}, {lut_bits} bits'}"
        return np.clip(shown, 0.0, 1.0), text
    own = _first_window(ds, path)
    if own is None and groups["FrameVOILUTSequence"] is not None:
        own = _first_window(groups["FrameVOILUTSequence"], path)
    if own is not None:
        centre, width, function = own
        text = f"window {window_text((centre, width))}"
        return windowed(values, centre, width, function), (
            text if function == "LINEAR" else f"{text} {function.lower().replace('_', '-')}"
        )
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1])
    low, high = np.sort(modality(stored))
    shown = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    return shown, f"stored range {low:g} to {high:g}"


def windowed(
    values: np.ndarray, centre: float, width: float, function: str = "LINEAR"
) -> np.ndarray:
    """A VOI window (PS3.3 C.11.2.1.2 and C.11.2.1.3), mapped to [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - centre) / width, -500, 500)))
    if function == "LINEAR_EXACT":
        return np.clip((values - centre) / width + 0.5, 0.0, 1.0)
    return np.clip((values - (centre - 0.5)) / max(width - 1.0, 1.0) + 0.5, 0.0, 1.0)


def window_text(window: tuple[float, float]) -> str:
    return "/".join(f"{v:g}" for v in window)


def _first_window(ds: pydicom.Dataset, path: str | Path) -> tuple[float, float, str] | None:
    """The file's first (centre, width, function) window, or None when it gives none usable."""
    try:
        centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
        if centre is None or width is None:
            return None
        if isinstance(centre, pydicom.multival.MultiValue):
            centre = centre[0] if len(centre) else ""
        if isinstance(width, pydicom.multival.MultiValue):
            width = width[0] if len(width) else ""
        if centre == "" or width == "":
            return None
        centre, width = float(centre), float(width)
    except (ValueError, TypeError) as err:
        raise DataError(f"DICOM file {path}: unreadable window centre or width: {err}") from err
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    if function not in WINDOW_FUNCTIONS:
        function = "LINEAR"  # the standard's default for values it does not define
    if not np.isfinite([centre, width]).all() or width <= 0 or (function == "LINEAR" and width < 1):
        return None
    return centre, width, function
