"""A CSV list of image files and their labels: data not sorted into class folders.

The CSV has a header with at least the columns ``path`` (relative to the CSV's own folder, or
absolute) and ``label`` (an integer: ``normal_class`` is normal, every other label abnormal),
and optionally ``split`` (``train``, ``val`` or ``test`` on every row). Without ``split`` a
seeded share of the normal files and every abnormal one form the test set, as in a flat
folder. Other columns are ignored.

A volume (a NIfTI file, a multi-frame DICOM file) listed as ``FILE`` gives every slice the
row's label; ``FILE#K`` lists slice K alone and ``FILE#FIRST-LAST`` a range of slices (from
0, both ends included), so that one volume's slices can have labels of their own, e.g. the
slices that show a lesion abnormal and the rest normal.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from dia.data.errors import DataError
from dia.data.folder import Reader, image_data
from dia.data.splits import held_out_test, held_out_val
from dia.data.types import ImageData
from dia.data.volumes import split_selection

SPLITS = ("train", "val", "test")
FORM = (
    "a CSV list needs a header with the columns path and label (an integer) and, optionally, "
    "split (train, val or test on every row), e.g.\n"
    "  path,label,split\n"
    "  scans/0001.dcm,0,train\n"
    "  scans/0002.png,1,test\n"
    "  volumes/case7.nii.gz#40-52,1,test"
)
Listed = tuple[Path, range | None]  # a file and the slices chosen of it (None: all)


def load_manifest(
    path: str | Path,
    image_size: int,
    normal_class: int = 0,
    split_seed: int = 0,
    test_fraction: float = 0.2,
    dicom_window: tuple[float, float] | None = None,
    val_fraction: float = 0.0,
    dicom_studies: bool = True,
) -> tuple[ImageData, torch.Tensor, torch.Tensor | None]:
    """Read the images a CSV lists, as :func:`~dia.data.folder.load_folder` reads a folder's;
    returns the data, the abnormal training images (rows ``train`` with an abnormal label) and
    their groups (:func:`~dia.data.folder.image_data`)."""
    path = Path(path)
    rows = _rows(path)
    groups: dict[str, list[Listed]] = {}
    with_split = [split is not None for _, _, _, split in rows]
    if any(with_split) and not all(with_split):
        line = rows[with_split.index(False)][0]
        raise DataError(f"{path}, line {line}: no split, while other rows give one. {FORM}")
    for _, file, label, split in rows:
        kind = "normal" if label == normal_class else "abnormal"
        groups.setdefault(f"{split or 'all'}_{kind}", []).append(file)

    reader = Reader(image_size, dicom_window, dicom_studies)

    def read(key: str) -> list[np.ndarray]:
        return reader.files(groups.get(key, []))

    if all(with_split):
        for needed in ("train_normal", "test_normal", "test_abnormal"):
            if needed not in groups:
                split, kind = needed.split("_")
                raise DataError(
                    f"{path} lists no {kind} image with split {split} "
                    f"(normal = label {normal_class})"
                )
        has_val = [key in groups for key in ("val_normal", "val_abnormal")]
        if any(has_val) and not all(has_val):
            raise DataError(f"{path}: the val rows must hold normal and abnormal images both")
        splits = {
            "train": read("train_normal"),
            "test_normal": read("test_normal"),
            "test_abnormal": read("test_abnormal"),
            "train_abnormal": read("train_abnormal"),
        }
        if all(has_val):
            splits["val_normal"] = read("val_normal")
            splits["val_abnormal"] = read("val_abnormal")
        layout = "manifest, split"
    else:
        where = f"{path} lists"
        splits = held_out_test(
            read("all_normal"), read("all_abnormal"), split_seed, test_fraction, where
        )
        layout = "manifest, flat"
    info = {"manifest": str(path), "layout": layout}
    splits = held_out_val(splits, val_fraction, split_seed, str(path), info)
    return image_data(path.stem, splits, reader, info, f"the grayscale DICOM files {path} lists")


def load_manifest_test(
    path: str | Path,
    image_size: int,
    normal_class: int = 0,
    dicom_window: tuple[float, float] | None = None,
) -> ImageData:
    """The test images a CSV lists, for evaluating a detector trained on other data: its
    ``test`` rows, or every row when it gives no split. Its ``train`` is empty."""
    path = Path(path)
    rows = _rows(path)
    if any(split is not None for _, _, _, split in rows):
        rows = [row for row in rows if row[3] == "test"]
        if not rows:
            raise DataError(f"{path} lists no image with split test")
    reader = Reader(image_size, dicom_window)
    normal = reader.files([file for _, file, label, _ in rows if label == normal_class])
    abnormal = reader.files([file for _, file, label, _ in rows if label != normal_class])
    splits = {"train": [], "test_normal": normal, "test_abnormal": abnormal}
    info = {"manifest": str(path), "layout": "manifest, test only"}
    return image_data(path.stem, splits, reader, info, f"the grayscale DICOM files {path} lists")[0]


def listed_files(path: str | Path) -> list[Listed]:
    """The image files a CSV lists (with the slices chosen of a volume), in its order, for
    scoring: only its ``path`` column is needed (any ``label`` or ``split`` is not looked
    at)."""
    return [file for _, file, _, _ in _rows(Path(path), labelled=False)]


def _rows(path: Path, labelled: bool = True) -> list[tuple[int, Listed, int | None, str | None]]:
    """(line, (file, slices), label, split or None) of every row, with errors that name the line;
    ``labelled`` False: the label and split columns are neither needed nor read."""
    table, columns = _read_table(path)
    missing = ({"path", "label"} if labelled else {"path"}) - set(columns)
    if columns and missing:
        raise DataError(f"{path} has no column {' or '.join(sorted(missing))}. {FORM}")
    rows: list[tuple[int, Listed, int | None, str | None]] = []
    seen: dict[Path, list[tuple[int, range | None]]] = {}
    for line, raw in table:
        if None in raw:
            raise DataError(
                f"{path}, line {line}: {len(columns) + len(raw[None])} fields, but the header "
                f"names {len(columns)}"
            )
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
        if not any(row.values()):
            continue  # a line of empty fields
        file, selection = _row_file(path, line, row["path"])
        _check_listed_once(path, line, row["path"], (file, selection), seen)
        label, split = _label_and_split(path, line, row) if labelled else (None, None)
        rows.append((line, (file, selection), label, split))
    if not rows:
        raise DataError(f"{path} lists no images. {FORM}")
    return rows


def _read_table(path: Path) -> tuple[list[tuple[int, dict]], list[str]]:
    """A CSV list's rows, each with the number of the line it ends on (a quoted field may span
    lines), and its column names in lower case."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            lines = csv.DictReader(handle)
            table = [(lines.line_num, row) for row in lines]
            columns = [(c or "").strip().lower() for c in lines.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read CSV list {path}: {err}") from err
    return table, columns


def _row_file(path: Path, line: int, given: str) -> Listed:
    """The image file (and slices) a row's ``path`` names, which must exist."""
    name = given.replace("\\", "/") if "\\" in given and "/" not in given else given
    file, selection = _listed_file(path, name, line)  # a backslash: written on Windows
    if not name or not file.is_file():
        raise DataError(f"{path}, line {line}: no image file {given!r} ({file})")
    return file, selection


def _check_listed_once(path: Path, line: int, given: str, listed: Listed, seen: dict) -> None:
    """Refuse a file (or slices of it) listed twice; ``seen`` keeps what earlier rows listed."""
    file, selection = listed
    for before, earlier in seen.get(file.resolve(), []):
        if earlier is None or selection is None or _overlap(earlier, selection):
            what = "is listed again" if earlier == selection else "lists slices again"
            raise DataError(
                f"{path}, line {line}: {given!r} {what} (first on line {before}); "
                "an image listed twice could end up in training and test both"
            )
    seen.setdefault(file.resolve(), []).append((line, selection))


def _label_and_split(path: Path, line: int, row: dict[str, str]) -> tuple[int, str | None]:
    """A labelled row's label and split (None: the list does not say), with errors that name
    the line."""
    try:
        label = int(row["label"])
    except ValueError:
        raise DataError(f"{path}, line {line}: label {row['label']!r} is not an integer") from None
    split = row.get("split", "").lower() or None
    if split is not None and split not in SPLITS:
        raise DataError(
            f"{path}, line {line}: split {row['split']!r}; expected one of {', '.join(SPLITS)}"
        )
    return label, split


def _listed_file(csv_path: Path, name: str, line: int) -> Listed:
    """The file a row names (relative to the CSV's folder unless absolute) and the slices it
    chooses: ``FILE#K`` or ``FILE#FIRST-LAST`` when ``FILE`` exists (a file whose own name
    ends so is read whole)."""

    def located(text: str) -> Path:
        file = Path(text).expanduser()
        return file if file.is_absolute() else csv_path.parent / file

    file = located(name)
    if file.is_file():
        return file, None
    try:
        base, selection = split_selection(name)
    except DataError as err:
        raise DataError(f"{csv_path}, line {line}: {err}") from None
    return (located(base), selection) if selection is not None else (file, None)


def _overlap(a: range, b: range) -> bool:
    return a.start < b.stop and b.start < a.stop
