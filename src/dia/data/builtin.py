"""The built-in data sources, registered in order of precedence: the procedural set, MedMNIST,
npz files, CSV lists of image files and folders of them."""

from __future__ import annotations

from pathlib import Path

import torch

from dia.config import DataConfig
from dia.data.errors import DataError
from dia.data.folder import DEFAULT_FOLDER_SIZE, load_folder, load_test_folder
from dia.data.manifest import load_manifest, load_manifest_test
from dia.data.medmnist import load_medmnist
from dia.data.npz import load_npz, load_npz_test
from dia.data.registry import DataSource, register_source
from dia.data.synthetic import make_synthetic, make_synthetic_abnormal
from dia.data.types import ImageData

SYNTHETIC_SIZE = 32

# What load_with_abnormal gives: the data, the abnormal training images and their groups.
Loaded = tuple[ImageData, torch.Tensor, torch.Tensor | None]


def only_default_class(config: DataConfig, source: str) -> None:
    # Folder and synthetic sources define normal by layout; a silently ignored class would
    # make a run claim a setting it never used.
    if config.normal_class != 0:
        raise DataError(
            f"normal_class={config.normal_class} applies only to npz, medmnist and CSV sources; "
            f"the {source} source defines its normal images itself (leave normal_class at 0)"
        )


def _file_of(spec: str, suffix: str) -> bool:
    path = Path(spec).expanduser()
    return path.is_file() and path.suffix.lower() == suffix


@register_source
class SyntheticSource(DataSource):
    name = "synthetic"
    form = "synthetic"
    about = "the built-in procedural chest X-ray set"

    def matches(self, spec: str) -> bool:
        return spec == "synthetic"

    def load_with_abnormal(self, config: DataConfig) -> Loaded:
        only_default_class(config, "synthetic")
        size = config.image_size or SYNTHETIC_SIZE
        data = make_synthetic(
            config.synthetic.train,
            config.synthetic.val,
            config.synthetic.test,
            image_size=size,
            seed=config.split_seed,
        )
        # Generated on demand: exactly as many lesion images as contamination replaces.
        n_train = min(config.synthetic.train, config.max_train or config.synthetic.train)
        needed = round(config.contamination * n_train)
        return data, make_synthetic_abnormal(needed, size, config.split_seed), None


@register_source
class MedMNISTSource(DataSource):
    name = "medmnist"
    form = "medmnist:NAME"
    about = "a MedMNIST 2D set, e.g. medmnist:pneumoniamnist (downloaded once)"

    def matches(self, spec: str) -> bool:
        return spec.lower().startswith("medmnist:")

    def load_with_abnormal(self, config: DataConfig) -> Loaded:
        name = config.spec.strip().split(":", 1)[1]
        data, abnormal = load_medmnist(name, config.normal_class, config.cache_dir)
        return data, abnormal, None


@register_source
class NpzSource(DataSource):
    name = "npz"
    form = "/path/to/file.npz"
    about = "a MedMNIST-style .npz file"

    def matches(self, spec: str) -> bool:
        return _file_of(spec, ".npz")

    def load_with_abnormal(self, config: DataConfig) -> Loaded:
        data, abnormal = load_npz(Path(config.spec.strip()).expanduser(), config.normal_class)
        return data, abnormal, None

    def load_test(self, config: DataConfig) -> ImageData:
        return load_npz_test(Path(config.spec.strip()).expanduser(), config.normal_class)


@register_source
class CsvSource(DataSource):
    name = "csv"
    form = "/path/to/list.csv"
    about = "a CSV list of image files: columns path, label (and split)"

    def matches(self, spec: str) -> bool:
        return _file_of(spec, ".csv")

    def load_with_abnormal(self, config: DataConfig) -> Loaded:
        return load_manifest(
            Path(config.spec.strip()).expanduser(),
            config.image_size or DEFAULT_FOLDER_SIZE,
            config.normal_class,
            config.split_seed,
            config.test_fraction,
            config.dicom.window,
            config.val_fraction,
            config.dicom.studies,
        )

    def load_test(self, config: DataConfig) -> ImageData:
        path = Path(config.spec.strip()).expanduser()
        return load_manifest_test(path, config.image_size, config.normal_class, config.dicom.window)


@register_source
class FolderSource(DataSource):
    name = "folder"
    form = "/path/to/folder"
    about = "an image folder (train/0_normal,... or normal/ + abnormal/)"

    def matches(self, spec: str) -> bool:
        return Path(spec).expanduser().is_dir()

    def load_with_abnormal(self, config: DataConfig) -> Loaded:
        only_default_class(config, "folder")
        return load_folder(
            Path(config.spec.strip()).expanduser(),
            config.image_size or DEFAULT_FOLDER_SIZE,
            config.split_seed,
            config.test_fraction,
            config.dicom.window,
            config.val_fraction,
            config.dicom.studies,
        )

    def load_test(self, config: DataConfig) -> ImageData:
        only_default_class(config, "folder")
        path = Path(config.spec.strip()).expanduser()
        return load_test_folder(path, config.image_size, config.dicom.window)
