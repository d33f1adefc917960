"""Folders of image files, in a split layout or a flat normal/abnormal layout."""

from __future__ import annotations

import warnings
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dia.data.channels import to_channels
from dia.data.dicom import COLOUR, dicom_study
from dia.data.errors import DataError
from dia.data.imagefile import IMAGE_SUFFIXES, is_image_file, read_images
from dia.data.splits import held_out_test, held_out_val
from dia.data.types import ImageData
from dia.data.volumes import NIFTI_SUFFIXES, is_nifti, split_selection

DEFAULT_FOLDER_SIZE = 64

_SUFFIX_LIST = (
    " ".join(sorted(IMAGE_SUFFIXES | set(NIFTI_SUFFIXES))) + ", or DICOM without a suffix"
)
LAYOUTS = (
    "Expected one of two layouts:\n"
    "  1. split:  ROOT/train/0_normal, ROOT/test/0_normal, ROOT/test/1_abnormal\n"
    "             (optional ROOT/train/1_abnormal, used only by contamination and\n"
    "              val_fraction; optional ROOT/val/0_normal + ROOT/val/1_abnormal)\n"
    "  2. flat:   ROOT/normal, ROOT/abnormal (a seeded test_fraction of the normal images\n"
    "             plus all abnormal images form the test set)\n"
    f"Each class folder must hold image files ({_SUFFIX_LIST}); a volume (NIfTI,\n"
    "multi-frame DICOM) gives one image a slice."
)


def load_folder(
    root: str | Path,
    image_size: int = DEFAULT_FOLDER_SIZE,
    split_seed: int = 0,
    test_fraction: float = 0.2,
    dicom_window: tuple[float, float] | None = None,
    val_fraction: float = 0.0,
    dicom_studies: bool = True,
) -> tuple[ImageData, torch.Tensor, torch.Tensor | None]:
    """Read an image folder: train (N,C,S,S) normals; also the abnormal train images and
    their groups (:func:`image_data`).

    Every image is resized so its shorter side is ``image_size``, then centre-cropped to a
    square. C is 1 when every image is grayscale, else 3 (gray images are replicated).
    ``dicom_window`` (centre, width) shows every grayscale DICOM file through that window
    instead of its own (:func:`~dia.data.dicom.read_dicom`). ``val_fraction`` holds out whole
    training files as a validation split (:func:`~dia.data.splits.held_out_val`).
    ``dicom_studies``: a DICOM study's files are one group (:attr:`FileImages.group`).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    if image_size < 8:
        raise DataError(f"image_size must be >= 8, got {image_size}")

    reader = Reader(image_size, dicom_window, dicom_studies)
    if (root / "train").is_dir() and (root / "test").is_dir():
        splits = _split_layout(root, reader)
        layout = "split"
    elif (root / "normal").is_dir() and (root / "abnormal").is_dir():
        splits = _flat_layout(root, reader, split_seed, test_fraction)
        layout = "flat"
    else:
        raise DataError(f"{root} matches no known folder layout. {LAYOUTS}")

    info = {"root": str(root), "layout": layout, "files_skipped": reader.skipped}
    splits = held_out_val(splits, val_fraction, split_seed, str(root), info)
    name = root.resolve().name  # "." names the folder it stands for
    return image_data(name, splits, reader, info, f"the grayscale DICOM files of {root}")


def load_test_folder(
    root: str | Path,
    image_size: int = DEFAULT_FOLDER_SIZE,
    dicom_window: tuple[float, float] | None = None,
) -> ImageData:
    """Every test image of a folder, for evaluating a detector trained on other data:
    ``test/0_normal`` and ``test/1_abnormal`` of the split layout (``train/`` may be absent),
    or all of ``normal/`` and ``abnormal/`` of the flat one. Its ``train`` is empty."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    reader = Reader(image_size, dicom_window)
    if (root / "test").is_dir():
        normal, abnormal = (reader.folder(root / "test" / c) for c in ("0_normal", "1_abnormal"))
        layout = "split, test only"
    elif (root / "normal").is_dir() and (root / "abnormal").is_dir():
        normal, abnormal = (reader.folder(root / c) for c in ("normal", "abnormal"))
        layout = "flat, every image a test image"
    else:
        raise DataError(
            f"{root} holds no test images: expected test/0_normal + test/1_abnormal, or "
            "normal/ + abnormal/"
        )
    splits = {"train": [], "test_normal": normal, "test_abnormal": abnormal}
    info = {"root": str(root), "layout": layout, "files_skipped": reader.skipped}
    files = f"the grayscale DICOM files of {root}"
    return image_data(root.resolve().name, splits, reader, info, files)[0]


@dataclass
class FileImages:
    """The images of one file and their names: one for a 2-D file, named by its path; one a
    slice for a volume, named ``FILE#K``. ``study``: a DICOM file's StudyInstanceUID."""

    path: Path
    names: list[Path]
    images: list[np.ndarray]
    every_slice: bool = False  # a volume read whole, not a chosen range of its slices
    study: str | None = None

    @property
    def volume(self) -> bool:
        """Slices of a volume, read whole or a chosen range of them."""
        return len(self.names) > 1 or self.names[0] != self.path

    @property
    def group(self) -> Hashable:
        """What splits keep together: a DICOM file's study (the slices of a CT series stored
        one file a slice, a chest X-ray's two views), else the file (a volume's slices)."""
        return ("study", self.study) if self.study else self.path.resolve()

    def group_name(self) -> str:
        return f"the study of {self.path.name}" if self.study else self.path.name


Splits = dict[str, list[FileImages]]


def image_data(
    name: str, splits: Splits, reader: Reader, info: dict, files: str
) -> tuple[ImageData, torch.Tensor, torch.Tensor | None]:
    """The :class:`ImageData` of images read by ``reader`` into ``splits`` (keys ``train``,
    ``test_normal``, ``test_abnormal``, optional ``train_abnormal``, ``val_normal`` and
    ``val_abnormal``), the abnormal training images and their groups (numbered as
    ``train_groups``, None with them); ``files`` names them in a warning."""
    channels = 3 if any(not gray for gray in reader.gray) else 1
    flat = {key: [img for f in group for img in f.images] for key, group in splits.items()}

    def stack(images: list[np.ndarray]) -> torch.Tensor:
        return _stack(images, channels, reader.size)

    data = ImageData(
        name=name,
        train=stack(flat["train"]),
        test=stack(flat["test_normal"] + flat["test_abnormal"]),
        test_labels=_labels(len(flat["test_normal"]), len(flat["test_abnormal"])),
        test_names=[
            str(name) for f in splits["test_normal"] + splits["test_abnormal"] for name in f.names
        ],
        info={
            **info,
            "files_read": reader.files_read,
            "colour_files": reader.colour_files,
        },
    )
    _check_volumes(splits)
    trained = splits["train"] + splits.get("train_abnormal", [])
    abnormal_groups = None
    if len({f.group for f in trained}) < sum(len(f.images) for f in trained):
        # One number a group (a volume, a DICOM study), shared by its normal and abnormal
        # training images.
        index: dict[Hashable, int] = {}

        def groups(key: str) -> torch.Tensor:
            return torch.tensor(
                [index.setdefault(f.group, len(index)) for f in splits.get(key, [])
                 for _ in f.images],
                dtype=torch.long,
            )  # fmt: skip

        data.train_groups, abnormal_groups = groups("train"), groups("train_abnormal")
    if reader.displays:
        data.info["dicom_displays"] = sorted(reader.displays)
        _warn_if_shown_unalike(reader.displays, files)
    if "val_normal" in splits:
        data.val = stack(flat["val_normal"] + flat["val_abnormal"])
        data.val_labels = _labels(len(flat["val_normal"]), len(flat["val_abnormal"]))
    return data, stack(flat.get("train_abnormal", [])), abnormal_groups


def _check_volumes(splits: Splits) -> None:
    """Warn when a volume or a DICOM study has images in training and in the test or
    validation set (only a split the data gives can do that), and when every slice of an
    abnormal volume counts as abnormal."""
    sizes: dict[Hashable, int] = {}
    for group in splits.values():
        for f in group:
            sizes[f.group] = sizes.get(f.group, 0) + len(f.images)
    names = {f.group: f.group_name() for group in splits.values() for f in group}
    shared = {key: {f.group for f in group if sizes[f.group] > 1} for key, group in splits.items()}
    trained = shared["train"] | shared.get("train_abnormal", set())
    held_out = set().union(
        *(
            shared.get(key, set())
            for key in ("test_normal", "test_abnormal", "val_normal", "val_abnormal")
        )
    )
    if trained & held_out:
        both = sorted(names[g] for g in trained & held_out)
        warnings.warn(
            f"{_counted(both, 'volume(s) or DICOM studies')} have images in training and in "
            "the test or validation set: neighbouring slices (a study's images) look alike, "
            "so those test images will look more normal than new scans would",
            stacklevel=4,
        )
    whole = sorted(
        f.path.name
        for key in ("test_abnormal", "val_abnormal")
        for f in splits.get(key, [])
        if f.every_slice and len(f.images) > 1
    )
    if whole:
        warnings.warn(
            f"every slice of {_counted(whole, 'abnormal volume(s)')} counts as abnormal, also "
            "slices that show nothing abnormal; to label slices, list them in a CSV list "
            "(path,label with path FILE#FIRST-LAST)",
            stacklevel=4,
        )


def _counted(names: list[str], kind: str) -> str:
    """``"2 abnormal volume(s) (a.nii.gz, ...)"``: how many, and the first."""
    return f"{len(names)} {kind} ({names[0]}{', ...' if len(names) > 1 else ''})"


def _split_layout(root: Path, reader: Reader) -> Splits:
    splits = {
        "train": reader.folder(root / "train" / "0_normal"),
        "test_normal": reader.folder(root / "test" / "0_normal"),
        "test_abnormal": reader.folder(root / "test" / "1_abnormal"),
    }
    if (root / "train" / "1_abnormal").is_dir():
        splits["train_abnormal"] = reader.folder(root / "train" / "1_abnormal")
    if (root / "val").is_dir():
        # A val folder is optional, but half a val set would give a one-class val set.
        splits["val_normal"] = reader.folder(root / "val" / "0_normal")
        splits["val_abnormal"] = reader.folder(root / "val" / "1_abnormal")
    return splits


def _flat_layout(root: Path, reader: Reader, split_seed: int, test_fraction: float) -> Splits:
    normal = reader.folder(root / "normal")
    abnormal = reader.folder(root / "abnormal")
    return held_out_test(normal, abnormal, split_seed, test_fraction, f"{root / 'normal'} holds")


def _warn_if_shown_unalike(displays: set[str], files: str) -> None:
    """Warn when grayscale DICOM files were shown through more than one display (a given
    window shows them all alike, so it never warns)."""
    gray = sorted(displays - {COLOUR})
    if len(gray) > 1:
        warnings.warn(
            f"{files} are shown in {len(gray)} different ways ({', '.join(gray[:3])}"
            f"{', ...' if len(gray) > 3 else ''}), so equal "
            "tissue can look different from file to file; give one window to all "
            "(--dicom-window=CENTRE,WIDTH)",
            stacklevel=3,
        )


class Reader:
    """Reads image files into square float arrays, remembering which images had colour and how
    DICOM files and volumes were shown. ``studies``: note each DICOM file's study (its
    header is read once more), so that the files of one study form one group."""

    def __init__(
        self, size: int, dicom_window: tuple[float, float] | None = None, studies: bool = False
    ) -> None:
        self.size = size
        self.dicom_window = dicom_window
        self.studies = studies
        self.gray: list[bool] = []
        self.displays: set[str] = set()
        self.skipped = 0
        self._read: set[Path] = set()  # each file once, however many rows name its slices
        self._colour: set[Path] = set()
        self._last_volume: dict = {}  # rows of a CSV list often name one volume in turn

    @property
    def files_read(self) -> int:
        return len(self._read)

    @property
    def colour_files(self) -> int:
        return len(self._colour)

    def folder(self, folder: Path) -> list[FileImages]:
        """All images of one class folder, file by file, sorted by file name."""
        if not folder.is_dir():
            raise DataError(f"missing class folder {folder}. {LAYOUTS}")
        files = []
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            if is_image_file(path):
                files.append(path)
            else:
                self.skipped += 1
        if not files:
            raise DataError(f"class folder {folder} holds no image files. {LAYOUTS}")
        return self.files(files)

    def files(
        self, files: list[Path | tuple[Path, range | None]], unreadable: list | None = None
    ) -> list[FileImages]:
        """The images of ``files``, in order, file by file: (S,S) or (S,S,3) float32. An item
        may be a (volume, range of slices) pair, which reads only those slices. With a list
        ``unreadable``, a file that cannot be read is appended to it as ``(path, reason)`` and
        skipped, instead of stopping the reading."""
        out = []
        for item in files:
            path, selection = item if isinstance(item, tuple) else (item, None)
            try:
                named, displays = read_images(
                    path, self.size, self.dicom_window, selection, self._last_volume
                )
            except DataError as err:
                if unreadable is None:
                    raise
                unreadable.append((path, str(err)))
                continue
            names, images = [name for name, _ in named], [image for _, image in named]
            dicom = not is_nifti(path) and any(d is not None for d in displays)
            study = dicom_study(path) if dicom and self.studies else None
            read = FileImages(path, names, images, study=study)
            read.every_slice = read.volume and selection is None
            out.append(read)
            self.displays.update(d for d in displays if d is not None)
            self.gray.extend(img.ndim == 2 for img in images)
            self._read.add(path.resolve())
            if any(img.ndim == 3 for img in images):
                self._colour.add(path.resolve())
        return out


def _stack(images: list[np.ndarray], channels: int, size: int) -> torch.Tensor:
    """A list of (S,S) / (S,S,3) arrays as float32 (N,C,S,S)."""
    if not images:
        return torch.zeros((0, channels, size, size), dtype=torch.float32)
    out = np.empty((len(images), channels, size, size), dtype=np.float32)
    for i, img in enumerate(images):
        if img.ndim == 2:
            out[i] = img[None]
        else:
            out[i] = img.transpose(2, 0, 1)
    return torch.from_numpy(out)


def load_images(
    paths: list[str | Path],
    image_size: int,
    channels: int,
    dicom_window: tuple[float, float] | None = None,
    unreadable: list | None = None,
) -> tuple[torch.Tensor, list[Path]]:
    """Image files, and the image files found under folders (recursively, sorted), as float32
    (N, ``channels``, S, S) in [0, 1], resized like a data folder's; also the images' names:
    a file's path, ``FILE#K`` for slice K of a volume. A path ``FILE#K`` or ``FILE#FIRST-LAST``
    reads only those slices of the volume ``FILE``.

    Gray images are repeated into 3 channels for a colour model; colour images become gray by
    BT.601 luma for a gray one, exactly as in training (:func:`~dia.data.channels.to_channels`).
    Hidden files and files with other suffixes are skipped inside folders; a path given
    explicitly must be an image, or a CSV list whose ``path`` column names images
    (:func:`~dia.data.manifest.listed_files`). ``dicom_window`` as in :func:`load_folder`.
    With a list ``unreadable``, files that cannot be read are skipped and appended to it as
    ``(path, reason)``; without one, the first stops the reading with an error that names it.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}; expected 1 or 3")
    files = [file for given in map(Path, paths) for file in _files_of(given)]
    if not files:
        raise DataError("no images given")
    reader = Reader(image_size, dicom_window)
    read = reader.files(files, unreadable)
    if not read:
        raise DataError(f"none of the {len(files)} files given could be read: {unreadable[0][1]}")
    images = [img for f in read for img in f.images]
    # Stacked and converted as a data folder's images are, so that a file gives the
    # detector the same pixels here as in training.
    stacked = _stack(images, 3 if any(img.ndim == 3 for img in images) else 1, image_size)
    _warn_if_shown_unalike(reader.displays, "the grayscale DICOM files given")
    return to_channels(stacked, channels), [name for f in read for name in f.names]


def _files_of(given: Path) -> list[Path | tuple[Path, range | None]]:
    """The image files a path given to :func:`load_images` names: a folder's (recursively,
    sorted, hidden ones left out), a CSV list's, the file itself, or ``FILE#K`` slices."""
    if given.is_dir():
        found = sorted(
            p
            for p in given.rglob("*")
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(given).parts)
            and is_image_file(p)
        )
        if not found:
            raise DataError(f"folder {given} holds no image files ({_SUFFIX_LIST})")
        return list(found)
    if given.is_file() and given.suffix.lower() == ".csv":
        from dia.data.manifest import listed_files  # here: that module imports this one

        return list(listed_files(given))
    if given.is_file():
        return [given]
    base, selection = split_selection(str(given))
    if selection is None or not Path(base).is_file():
        raise FileNotFoundError(f"no such image file or folder: {given}")
    return [(Path(base), selection)]


def _labels(n_normal: int, n_abnormal: int) -> torch.Tensor:
    return torch.cat([torch.zeros(n_normal), torch.ones(n_abnormal)]).long()
