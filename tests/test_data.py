"""Data sources: npz, medmnist, folder, synthetic, and the shared real data sets."""

from __future__ import annotations

import io
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from dia.config import DataConfig, replace_settings
from dia.data import DataError, ImageData, load_data
from dia.data import medmnist as medmnist_module
from dia.data.synthetic import make_synthetic, render_images

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _check_image_data(data: ImageData, channels: int, size: int) -> None:
    for images in (data.train, data.test) + (() if data.val is None else (data.val,)):
        assert images.dtype == torch.float32
        assert images.shape[1:] == (channels, size, size)
        assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert data.test_labels.dtype == torch.int64
    assert data.test_labels.shape == (len(data.test),)
    assert set(data.test_labels.tolist()) == {0, 1}


# ---------------------------------------------------------------- npz


def _write_npz(
    path: Path,
    labels: dict[str, list[int]],
    size: int = 12,
    rgb: bool = False,
    column: bool = False,
    drop: tuple[str, ...] = (),
) -> Path:
    """Images whose every pixel is 10 * (label + 1), so tests can tell classes apart."""
    arrays = {}
    for split, values in labels.items():
        lab = np.asarray(values, dtype=np.uint8)
        shape = (len(lab), size, size, 3) if rgb else (len(lab), size, size)
        value = (10 * (lab + 1)).reshape(-1, *[1] * (len(shape) - 1))
        images = np.ones(shape, dtype=np.uint8) * value
        if rgb:
            images[..., 0] = 250  # a red tint, so the images really have colour
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = lab[:, None] if column else lab
    for key in drop:
        del arrays[key]
    np.savez(path, **arrays)
    return path


BINARY = {"train": [0, 0, 0, 0, 1, 1], "val": [0, 1], "test": [0, 0, 1, 1, 1]}


def _check_binary(data) -> None:
    """The counts, pixels and labels of the file ``BINARY`` labels, as loaded."""
    counts = {"train": 4, "test_normal": 2, "test_abnormal": 3, "val_normal": 1, "val_abnormal": 1}
    assert data.counts() == counts
    assert torch.allclose(data.train, torch.full_like(data.train, 10 / 255))
    assert data.test_labels.tolist() == [0, 0, 1, 1, 1]


def test_npz_gray_flat_labels(tmp_path: Path) -> None:
    data = load_data(DataConfig(spec=str(_write_npz(tmp_path / "a.npz", BINARY))))
    _check_image_data(data, channels=1, size=12)
    assert data.train_groups is None
    _check_binary(data)
    assert data.info["source"] == "npz" and data.info["channels"] == 1
    assert data.name == "a"


def test_npz_rgb_column_labels_and_channels(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "rgb.npz", BINARY, rgb=True, column=True)
    data = load_data(DataConfig(spec=str(path)))
    _check_image_data(data, channels=3, size=12)
    assert data.counts()["train"] == 4

    gray = load_data(DataConfig(spec=str(path), channels=1))
    _check_image_data(gray, channels=1, size=12)
    expected = (0.299 * 250 + 0.587 * 10 + 0.114 * 10) / 255
    assert gray.train[0, 0, 0, 0].item() == pytest.approx(expected, abs=1e-5)


def test_npz_normal_class(tmp_path: Path) -> None:
    labels = {"train": [0, 1, 2, 2, 2], "val": [2, 0], "test": [0, 1, 2, 2]}
    path = _write_npz(tmp_path / "multi.npz", labels)
    data = load_data(DataConfig(spec=str(path), normal_class=2))
    assert data.counts()["train"] == 3
    assert torch.allclose(data.train, torch.full_like(data.train, 30 / 255))
    assert data.test_labels.tolist() == [1, 1, 0, 0]
    with pytest.raises(DataError, match="normal_class=7"):
        load_data(DataConfig(spec=str(path), normal_class=7))


def test_npz_missing_keys_and_corrupt_file(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "partial.npz", BINARY, drop=("train_images", "test_labels"))
    with pytest.raises(DataError, match="partial.npz") as err:
        load_data(DataConfig(spec=str(path)))
    assert "train_images" in str(err.value) and "test_labels" in str(err.value)
    half = _write_npz(tmp_path / "half.npz", BINARY, drop=("val_labels",))
    with pytest.raises(DataError, match=r"half.npz has \['val_images'\] but not \['val_labels'\]"):
        load_data(DataConfig(spec=str(half)))


def test_an_npz_without_a_validation_split_loads_and_can_hold_one_out(tmp_path: Path) -> None:
    """A user's own file often has train and test arrays only: the validation split is
    optional, and val_fraction draws one from the training images."""
    labels = {"train": [0] * 8 + [1] * 4, "test": [0, 0, 1, 1, 1]}
    path = _write_npz(tmp_path / "own.npz", labels)
    data = load_data(DataConfig(spec=str(path)))
    assert data.val is None and data.val_labels is None
    assert data.counts() == {"train": 8, "test_normal": 2, "test_abnormal": 3}
    held = load_data(DataConfig(spec=str(path), val_fraction=0.25))
    assert held.counts() == {
        "train": 6, "test_normal": 2, "test_abnormal": 3, "val_normal": 2, "val_abnormal": 1
    }  # fmt: skip

    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="broken.npz"):
        load_data(DataConfig(spec=str(broken)))


def _rewrite_npz(path: Path, **arrays: np.ndarray) -> Path:
    """``path`` with some of its arrays replaced."""
    with np.load(path) as archive:
        kept = {key: archive[key] for key in archive.files}
    np.savez(path, **{**kept, **arrays})
    return path


def test_npz_splits_of_different_sizes(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "sizes.npz", BINARY, size=12)
    _rewrite_npz(path, test_images=np.full((5, 16, 16), 30, dtype=np.uint8))
    with pytest.raises(DataError, match="train 12x12, val 12x12, test 16x16.*--image-size"):
        load_data(DataConfig(spec=str(path)))
    # Resized to one size, the splits agree.
    data = load_data(DataConfig(spec=str(path), image_size=12))
    _check_image_data(data, channels=1, size=12)


def test_npz_file_that_is_no_zip(tmp_path: Path) -> None:
    text = tmp_path / "text.npz"
    text.write_text("hello")
    array = tmp_path / "array.npz"
    with open(array, "wb") as f:
        np.save(f, np.zeros((2, 8, 8), dtype=np.uint8))  # a .npy file under an .npz name
    for path in (text, array):
        with pytest.raises(DataError, match="is not an npz archive") as err:
            load_data(DataConfig(spec=str(path)))
        assert "pickle" not in str(err.value)


def _multi_label(n: int, findings: list[int]) -> np.ndarray:
    """(n, 14) labels: image i has finding ``findings[i]``, or none where it is -1."""
    labels = np.zeros((n, 14), dtype=np.uint8)
    for i, finding in enumerate(findings):
        if finding >= 0:
            labels[i, finding] = 1
    return labels


def test_npz_multi_label_normal_means_no_finding(tmp_path: Path) -> None:
    from dia.data import load_test_set

    path = _write_npz(tmp_path / "chest.npz", BINARY)
    _rewrite_npz(
        path,
        train_labels=_multi_label(6, [-1, -1, -1, -1, 3, 13]),
        val_labels=_multi_label(2, [-1, 0]),
        test_labels=_multi_label(5, [-1, -1, 2, 5, 9]),
    )
    data = load_data(DataConfig(spec=str(path)))
    _check_binary(data)
    assert data.info["findings"] == 14
    external = load_test_set(DataConfig(spec=str(path), image_size=12, channels=1))
    assert external.test_labels.tolist() == [0, 0, 1, 1, 1]

    with pytest.raises(DataError, match="normal_class=1.*multi-label.*no finding"):
        load_data(DataConfig(spec=str(path), normal_class=1))
    _rewrite_npz(path, test_labels=np.array([0, 0, 1, 1, 1], dtype=np.uint8))
    with pytest.raises(DataError, match="train_labels 14 findings.*test_labels one label"):
        load_data(DataConfig(spec=str(path)))
    _rewrite_npz(path, test_labels=_multi_label(5, [-1, -1, 2, 5, 9]) * 2)
    with pytest.raises(DataError, match="test_labels.*0 and 1"):
        load_data(DataConfig(spec=str(path)))


def test_one_class_test_set_and_empty_train(tmp_path: Path) -> None:
    labels = {"train": [0, 0, 1], "val": [0], "test": [0, 0]}
    path = _write_npz(tmp_path / "oneclass.npz", labels)
    with pytest.raises(DataError, match="one-class test set.*2 normal and 0 abnormal"):
        load_data(DataConfig(spec=str(path)))
    path = _write_npz(tmp_path / "notrain.npz", {"train": [1, 1], "val": [0], "test": [0, 1]})
    with pytest.raises(DataError, match="no training images"):
        load_data(DataConfig(spec=str(path)))


def test_resize_max_train_and_contamination(tmp_path: Path) -> None:
    labels = {"train": [0] * 12 + [1] * 5, "val": [0, 1], "test": [0, 1]}
    path = str(_write_npz(tmp_path / "c.npz", labels, size=28))

    small = load_data(DataConfig(spec=path, image_size=16, channels=3))
    _check_image_data(small, channels=3, size=16)
    assert small.info["image_size"] == 16

    subset = load_data(DataConfig(spec=path, max_train=5, split_seed=3))
    assert subset.counts()["train"] == 5

    dirty = load_data(DataConfig(spec=path, contamination=0.25, split_seed=1))
    abnormal = (dirty.train.flatten(1).mean(1) - 20 / 255).abs() < 1e-6
    assert int(abnormal.sum()) == 3 == dirty.info["contaminated"]
    assert torch.nonzero(abnormal).flatten().tolist() == dirty.info["contaminated_indices"]
    again = load_data(DataConfig(spec=path, contamination=0.25, split_seed=1))
    assert torch.equal(dirty.train, again.train)

    with pytest.raises(DataError, match="needs 6 abnormal training images, but .* has only 5"):
        load_data(DataConfig(spec=path, contamination=0.5))


@pytest.mark.parametrize(
    ("setting", "value"),
    [("image_size", 4), ("channels", 2), ("test_fraction", 0.0), ("test_fraction", 1.0)]
    + [("contamination", 1.0), ("contamination", -0.1), ("max_train", 0)]
    + [("val_fraction", 1.0), ("val_fraction", -0.1)],
)
def test_bad_settings(setting: str, value: object) -> None:
    """Refused where the settings are made, before any data is read."""
    with pytest.raises(ValueError, match=setting):
        DataConfig(spec="synthetic", **{setting: value})


def test_unknown_spec(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="accepted data specs") as err:
        load_data(DataConfig(spec=str(tmp_path / "nothing-here")))
    assert "medmnist:NAME" in str(err.value)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DataError, match="not a .npz"):
        load_data(DataConfig(spec=str(text)))


# ---------------------------------------------------------------- folder


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)


def _gray(h: int, w: int, value: int) -> np.ndarray:
    return np.full((h, w), value, dtype=np.uint8)


def _split_folder(root: Path) -> Path:
    """A split layout mixing formats, sizes, gray, RGB, palette, RGBA and 16-bit files."""
    half = np.zeros((20, 40), dtype=np.uint8)
    half[:, 20:] = 200  # left half dark, right half bright: the centre crop sees both
    _save(root / "train/0_normal/a.png", half)
    _save(root / "train/0_normal/b.JPG", np.stack([_gray(30, 30, 90)] * 3, axis=-1))
    _save(root / "train/0_normal/c.bmp", _gray(17, 23, 60), mode="P")
    _save(root / "train/0_normal/d.tif", _gray(50, 35, 120))
    _save(root / "train/0_normal/e.png", np.full((16, 16), 32768, dtype=np.uint16))
    (root / "train/0_normal/notes.txt").write_text("not an image")
    (root / "train/0_normal/.hidden.png").write_bytes(b"junk")
    _save(root / "train/1_abnormal/x.png", _gray(12, 12, 250))
    _save(root / "test/0_normal/n.tiff", _gray(21, 21, 70))
    colour = np.zeros((24, 24, 4), dtype=np.uint8)
    colour[..., 0], colour[..., 3] = 220, 255
    _save(root / "test/1_abnormal/y.png", colour)
    _save(root / "test/1_abnormal/z.jpeg", np.stack([_gray(9, 9, 240)] * 3, axis=-1))
    return root


def test_folder_split_layout(tmp_path: Path) -> None:
    root = _split_folder(tmp_path / "ct")
    with pytest.warns(UserWarning, match="1 of 9 image files are in colour"):
        data = load_data(DataConfig(spec=str(root), image_size=16))
    _check_image_data(data, channels=3, size=16)  # one red image makes the set colour
    assert data.counts() == {"train": 5, "test_normal": 1, "test_abnormal": 2}
    assert data.info["layout"] == "split" and data.info["files_skipped"] == 1
    first = data.train[0, 0]
    assert first[:, :4].mean() < 0.05 and first[:, -4:].mean() > 0.7  # centre crop kept both
    assert data.train[4].mean().item() == pytest.approx(32768 / 65535, abs=1e-3)  # 16-bit
    red = data.test[1]
    assert red[0].mean() > 0.8 and red[1].mean() < 0.05

    gray = load_data(DataConfig(spec=str(root), image_size=16, channels=1))
    _check_image_data(gray, channels=1, size=16)
    assert torch.equal(gray.train, data.train[:, :1])  # gray images stay exactly gray


def test_folder_gray_default_size_val_and_contamination(tmp_path: Path) -> None:
    root = tmp_path / "gray"
    for i in range(4):
        _save(root / f"train/0_normal/{i}.png", _gray(20, 20, 40))
    _save(root / "train/1_abnormal/a.png", np.stack([_gray(20, 20, 230)] * 3, axis=-1))
    _save(root / "val/0_normal/v.png", _gray(20, 20, 40))
    _save(root / "val/1_abnormal/w.png", _gray(20, 20, 230))
    _save(root / "test/0_normal/t.png", _gray(20, 20, 40))
    _save(root / "test/1_abnormal/u.png", _gray(20, 20, 230))
    data = load_data(DataConfig(spec=str(root)))
    _check_image_data(data, channels=1, size=64)
    assert data.counts()["val_abnormal"] == 1

    dirty = load_data(DataConfig(spec=str(root), contamination=0.25))
    assert dirty.info["contaminated"] == 1
    assert dirty.train[dirty.info["contaminated_indices"][0]].mean() > 0.85


def test_folder_val_fraction_holds_out_train_images(tmp_path: Path) -> None:
    root = tmp_path / "noval"
    for i in range(10):
        _save(root / f"train/0_normal/{i}.png", _gray(8, 8, 10 + i))
    for i in range(5):
        _save(root / f"train/1_abnormal/{i}.png", _gray(8, 8, 200 + i))
    _save(root / "test/0_normal/t.png", _gray(8, 8, 50))
    _save(root / "test/1_abnormal/u.png", _gray(8, 8, 250))
    whole = load_data(DataConfig(spec=str(root), image_size=8))
    assert whole.val is None

    config = DataConfig(spec=str(root), image_size=8, val_fraction=0.2, split_seed=4)
    data = load_data(config)
    assert data.counts() == {
        "train": 8,
        "test_normal": 1,
        "test_abnormal": 1,
        "val_normal": 2,
        "val_abnormal": 1,
    }
    assert data.info["val_held_out"] == {"normal": 2, "abnormal": 1}
    assert data.train_groups is None  # one image a file: thresholds leave one image out
    levels = lambda images: sorted(round(v * 255) for v in images.flatten(1).mean(1).tolist())  # noqa: E731
    # every normal image lands in exactly one of train and val; the val abnormal is from train/
    assert sorted(levels(data.train) + levels(data.val[:2])) == list(range(10, 20))
    assert 200 <= levels(data.val[2:])[0] <= 204
    assert data.val_labels.tolist() == [0, 0, 1]
    # The draw itself is pinned: validation results measured on such a split rest on it.
    assert [round(v * 255) for v in data.val.flatten(1).mean(1).tolist()] == [18, 19, 202]
    assert torch.equal(data.test, whole.test)
    assert torch.equal(load_data(config).val, data.val)  # seeded
    other = load_data(DataConfig(spec=str(root), image_size=8, val_fraction=0.2, split_seed=5))
    assert not torch.equal(other.train, data.train)

    # contamination draws from the abnormal images the validation split left over
    dirty = load_data(
        DataConfig(spec=str(root), image_size=8, val_fraction=0.2, split_seed=4, contamination=0.5)
    )
    assert torch.equal(dirty.val, data.val) and dirty.info["contaminated"] == 4
    taken = "only 4 left after val_fraction took 1"
    with pytest.raises(DataError, match=f"needs 5 abnormal training images, but .* {taken}"):
        load_data(DataConfig(spec=str(root), image_size=8, val_fraction=0.2, contamination=0.6))

    with pytest.raises(DataError, match="has its own validation split"):
        load_data(DataConfig(spec="synthetic", val_fraction=0.2))
    for i in range(5):
        (root / f"train/1_abnormal/{i}.png").unlink()
    (root / "train/1_abnormal").rmdir()
    with pytest.raises(DataError, match="train/1_abnormal"):
        load_data(DataConfig(spec=str(root), image_size=8, val_fraction=0.2))


def test_folder_flat_layout(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for i in range(10):
        _save(root / f"normal/{i:02d}.png", _gray(10, 10, 10 * i))
    for i in range(3):
        _save(root / f"abnormal/{i}.bmp", _gray(10, 10, 250))
    config = DataConfig(spec=str(root), image_size=8, test_fraction=0.3, split_seed=0)
    data = load_data(config)
    assert data.counts() == {"train": 7, "test_normal": 3, "test_abnormal": 3}
    assert data.info["layout"] == "flat"
    assert torch.equal(data.train, load_data(config).train)
    other = load_data(DataConfig(spec=str(root), image_size=8, test_fraction=0.3, split_seed=5))
    assert not torch.equal(data.train, other.train)
    with pytest.raises(DataError, match="none"):
        load_data(DataConfig(spec=str(root), image_size=8, contamination=0.2))


def test_folder_errors(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    _save(root / "normal/ok.png", _gray(10, 10, 5))
    _save(root / "normal/ok2.png", _gray(10, 10, 5))
    (root / "normal/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _save(root / "abnormal/a.png", _gray(10, 10, 5))
    with pytest.raises(DataError, match="broken.png"):
        load_data(DataConfig(spec=str(root)))

    (root / "normal/broken.png").unlink()
    shutil.rmtree(root / "abnormal")
    (root / "abnormal").mkdir()
    with pytest.raises(DataError, match="(?s)holds no image files.*split:.*flat:"):
        load_data(DataConfig(spec=str(root)))

    neither = tmp_path / "neither"
    _save(neither / "images/a.png", _gray(10, 10, 5))
    with pytest.raises(DataError, match="no known folder layout"):
        load_data(DataConfig(spec=str(neither)))
    with pytest.raises(DataError, match="normal_class"):
        load_data(DataConfig(spec=str(root), normal_class=1))


def test_load_images_for_scoring(tmp_path: Path) -> None:
    from dia.data.folder import load_images

    colour = np.zeros((12, 20, 3), dtype=np.uint8)
    colour[..., 0] = 240  # pure red: its luma is 0.299 * 240
    _save(tmp_path / "scans/b.png", colour)
    _save(tmp_path / "scans/deeper/a.jpg", _gray(30, 30, 100))
    _save(tmp_path / "scans/.hidden/c.png", _gray(8, 8, 0))
    (tmp_path / "scans/readme.txt").write_text("not an image")
    _save(tmp_path / "one.bmp", _gray(9, 9, 200))

    gray, files = load_images([tmp_path / "scans", tmp_path / "one.bmp"], 8, channels=1)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "scans/b.png", "scans/deeper/a.jpg", "one.bmp"
    ]  # fmt: skip
    assert gray.shape == (3, 1, 8, 8) and gray.dtype == torch.float32
    assert gray[0].mean().item() == pytest.approx(0.299 * 240 / 255, abs=1e-3)
    assert gray[2].mean().item() == pytest.approx(200 / 255, abs=1e-3)
    # a CSV list names files in its own order; only its path column is read
    (tmp_path / "list.csv").write_text("path,note\none.bmp,first\nscans/b.png,\n")
    listed, files = load_images([tmp_path / "list.csv"], 8, channels=1)
    assert [f.name for f in files] == ["one.bmp", "b.png"]
    assert torch.equal(listed, gray[[2, 0]])
    (tmp_path / "bad.csv").write_text("file\none.bmp\n")
    with pytest.raises(DataError, match="bad.csv has no column path"):
        load_images([tmp_path / "bad.csv"], 8, 1)
    rgb, _ = load_images([tmp_path / "one.bmp"], 8, channels=3)
    assert rgb.shape == (1, 3, 8, 8) and torch.equal(rgb[0, 0], rgb[0, 2])

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no image files"):
        load_images([tmp_path / "empty"], 8, 1)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_images([tmp_path / "missing.png"], 8, 1)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match="broken.png"):
        load_images([tmp_path / "broken.png"], 8, 1)
    with pytest.raises(ValueError, match="channels=2"):
        load_images([tmp_path / "one.bmp"], 8, 2)


def test_float_tiff_outside_unit_range_is_scaled(tmp_path: Path) -> None:
    from dia.data.imagefile import read_images

    hounsfield = np.full((20, 20), -1000.0, dtype=np.float32)  # air
    hounsfield[:, 10:] = 40.0  # soft tissue on the right
    hounsfield[0, 0] = np.nan
    Image.fromarray(hounsfield).save(tmp_path / "ct.tif")
    image = read_images(tmp_path / "ct.tif", 8)[0][0][1]
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
    assert image[:, :3].max() < 0.05 and image[:, -3:].min() > 0.95

    unit = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    image = read_images(tmp_path / "unit.tif", 8)[0][0][1]
    assert np.allclose(image, unit, atol=1e-6)  # values in [0, 1] are shown as they are

    # 32-bit integers with negative Hounsfield units: not clipped to black either
    Image.fromarray(np.where(hounsfield == 40.0, 40, -1000).astype(np.int32)).save(
        tmp_path / "ct32.tif"
    )
    image = read_images(tmp_path / "ct32.tif", 8)[0][0][1]
    assert image[:, :3].max() < 0.05 and image[:, -3:].min() > 0.95

    Image.fromarray(np.full((8, 8), np.nan, dtype=np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match="nan.tif.*no finite pixel value"):
        read_images(tmp_path / "nan.tif", 8)


def test_gray_detector_sees_a_file_alike_in_training_and_scoring(tmp_path: Path) -> None:
    from dia.data import load_test_set
    from dia.data.folder import load_images

    root = tmp_path / "mixed"
    for i in range(3):
        _save(root / f"train/0_normal/{i}.png", _gray(20, 20, 40 + i))
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # many gray levels
    gray = root / "test/0_normal/gray.png"
    _save(gray, ramp)
    colour = root / "test/1_abnormal/colour.png"
    _save(colour, np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    config = DataConfig(spec=str(root), image_size=16, channels=1)
    trained = load_data(config).test  # gray.png, then colour.png
    evaluated = load_test_set(config).test
    scored, _ = load_images([gray, colour], 16, channels=1)
    alone = torch.cat([load_images([f], 16, channels=1)[0] for f in (gray, colour)])
    for images in (evaluated, scored, alone):
        assert torch.equal(images, trained)


# ---------------------------------------------------------------- DICOM


def test_dicom_display_values(tmp_path: Path, write_dicom) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from dia.data.dicom import read_dicom

    # CT: stored value + intercept = Hounsfield units, shown through its window 40 / 400 ...
    hu = np.array([[-1000, -160, 40], [240, 1000, -600]], dtype=np.int16)
    ct = write_dicom(
        tmp_path / "ct.dcm",
        hu + 1024,
        bits=12,
        RescaleSlope=1,
        RescaleIntercept=-1024,
        WindowCenter=[40, -600],  # a file may offer several windows: the first is shown
        WindowWidth=[400, 1500],
    )
    shown, display = read_dicom(ct)
    assert display == "window 40/400"
    assert shown.dtype == np.float32 and shown.shape == (2, 3)
    assert shown[0, :2].tolist() == [0.0, 0.0] and shown[1].tolist() == [1.0, 1.0, 0.0]
    assert shown[0, 2] == pytest.approx(0.5, abs=0.01)
    # ... or through a window given instead, here a lung window.
    lung, display = read_dicom(ct, window=(-600, 1500))
    assert display == "given window -600/1500"
    np.testing.assert_allclose(lung[0], [0.233, 0.793, 0.927], atol=0.001)
    assert lung[1, 2] == pytest.approx(0.5, abs=0.01)

    # No window: the range 12 stored bits can hold; MONOCHROME1 shows low values bright.
    stored = np.array([[0, 2048, 4095]], dtype=np.uint16)
    plain, display = read_dicom(write_dicom(tmp_path / "plain.dcm", stored, bits=12))
    assert display == "stored range 0 to 4095"
    np.testing.assert_allclose(plain, [[0.0, 2048 / 4095, 1.0]], atol=1e-6)
    inverted, _ = read_dicom(write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", bits=12))
    np.testing.assert_allclose(inverted, 1.0 - plain, atol=1e-6)

    # A signed range with a slope: -2048..2047 stored, times 2.
    signed = np.array([[-2048, 0, 2047]], dtype=np.int16)
    scaled, _ = read_dicom(
        write_dicom(tmp_path / "s.dcm", signed, bits=12, RescaleSlope=2, RescaleIntercept=0)
    )
    np.testing.assert_allclose(scaled, [[0.0, 2048 / 4095, 1.0]], atol=1e-6)

    # A VOI LUT (here 16-bit, value * 16) is the file's own display choice: it wins over a
    # window in the same file.
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.add_new(0x00283006, "US", [v * 16 for v in range(4096)])  # LUT Data
    path = write_dicom(
        tmp_path / "lut.dcm",
        stored,
        bits=12,
        WindowCenter=0,
        WindowWidth=10,
        VOILUTSequence=Sequence([lut]),
    )
    looked_up, display = read_dicom(path)
    assert display == "VOI LUT of 4096 entries from 0, 16 bits"
    np.testing.assert_allclose(looked_up, [[0.0, 32768 / 65535, 65520 / 65535]], atol=1e-6)

    # An empty VOI LUT sequence is no LUT: the file's window is shown.
    empty_lut = write_dicom(tmp_path / "empty-lut.dcm", stored, bits=12, WindowCenter=2048,
                            WindowWidth=4096, VOILUTSequence=Sequence([]))  # fmt: skip
    assert read_dicom(empty_lut)[1] == "window 2048/4096"

    # The window's function, as the file names it (PS3.3 C.11.2.1.3).
    centred = np.array([[0, 1000, 2000]], dtype=np.uint16)
    sigmoid, display = read_dicom(write_dicom(tmp_path / "sig.dcm", centred, bits=12,
                                              WindowCenter=1000, WindowWidth=1000,
                                              VOILUTFunction="SIGMOID"))  # fmt: skip
    assert display == "window 1000/1000 sigmoid"
    np.testing.assert_allclose(sigmoid, [[1 / (1 + np.exp(4)), 0.5, 1 / (1 + np.exp(-4))]],
                               atol=1e-6)  # fmt: skip
    exact, display = read_dicom(write_dicom(tmp_path / "exact.dcm", centred, bits=12,
                                            WindowCenter=1000, WindowWidth=1000,
                                            VOILUTFunction="LINEAR_EXACT"))  # fmt: skip
    assert display == "window 1000/1000 linear-exact"
    np.testing.assert_allclose(exact, [[0.0, 0.5, 1.0]], atol=1e-6)

    colour = np.zeros((4, 5, 3), dtype=np.uint8)
    colour[..., 0] = 255
    rgb, display = read_dicom(write_dicom(tmp_path / "rgb.dcm", colour, "RGB"))
    assert display == "colour" and rgb.shape == (4, 5, 3)
    assert rgb[..., 0].min() == 1.0 and rgb[..., 1:].max() == 0.0

    # Palette colour: the indices pick colours from the file's tables.
    indices = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    palette = write_dicom(tmp_path / "palette.dcm", indices, "PALETTE COLOR")
    ds = pydicom.dcmread(palette)
    for name, entries in (("Red", [65535, 0]), ("Green", [0, 65535]), ("Blue", [0, 0])):
        descriptor = pydicom.datadict.tag_for_keyword(f"{name}PaletteColorLookupTableDescriptor")
        ds.add_new(descriptor, "US", [2, 0, 16])
        setattr(ds, f"{name}PaletteColorLookupTableData", np.array(entries, "<u2").tobytes())
    ds.save_as(palette)
    shown, display = read_dicom(palette)
    assert display == "colour" and shown.shape == (2, 2, 3)
    assert shown[0, 0].tolist() == [1, 0, 0] and shown[0, 1].tolist() == [0, 1, 0]


def test_dicom_folder_and_scoring_files(tmp_path: Path, write_dicom) -> None:
    from dia.data.folder import load_images

    root = tmp_path / "xray"
    for i, value in enumerate((1000, 1100, 1200)):
        write_dicom(root / f"train/0_normal/{i}.dcm", np.full((40, 30), value, np.uint16), bits=12)
    # Scanners often write DICOM files without a suffix, or named by a UID (whose last part
    # looks like one); a DICOMDIR (an index) is no image.
    write_dicom(root / "test/0_normal/1.2.840.113619.2.55", np.full((20, 20), 1000, np.uint16),
                bits=12)  # fmt: skip
    write_dicom(root / "test/1_abnormal/IM0002", np.full((20, 20), 4000, np.uint16), bits=12)
    (root / "test/1_abnormal/DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")
    (root / "test/1_abnormal/README").write_text("not an image")
    _save(root / "test/1_abnormal/photo.png", _gray(20, 20, 250))

    data = load_data(DataConfig(spec=str(root), image_size=16))
    _check_image_data(data, channels=1, size=16)
    assert data.counts() == {"train": 3, "test_normal": 1, "test_abnormal": 2}
    assert data.info["files_skipped"] == 2
    assert data.train[2].mean().item() == pytest.approx(1200 / 4095, abs=1e-4)
    assert data.test[1].mean().item() == pytest.approx(4000 / 4095, abs=1e-4)

    images, files = load_images([root / "test"], 16, channels=1)
    assert [f.name for f in files] == ["1.2.840.113619.2.55", "IM0002", "photo.png"]
    assert torch.allclose(images[:2], data.test[:2])


def test_dicom_windows_differing_between_files(tmp_path: Path, write_dicom) -> None:
    import warnings

    root = tmp_path / "ct"
    hu = np.full((12, 12), -600, dtype=np.int16)
    windows = {"train/0_normal/a.dcm": (40, 400), "train/0_normal/b.dcm": (-600, 1500)}
    windows.update({"test/0_normal/c.dcm": (40, 400), "test/1_abnormal/d.dcm": (40, 400)})
    for name, (centre, width) in windows.items():
        write_dicom(root / name, hu + 1024, bits=12, RescaleSlope=1, RescaleIntercept=-1024,
                    WindowCenter=centre, WindowWidth=width)  # fmt: skip

    # A colour file has no window: it does not count as another way of showing.
    write_dicom(root / "train/0_normal/photo.dcm", np.zeros((12, 12, 3), np.uint8), "RGB")
    with pytest.warns(UserWarning, match=r"2 different ways .*--dicom-window=CENTRE,WIDTH"):
        data = load_data(DataConfig(spec=str(root), image_size=8))
    assert data.info["dicom_displays"] == ["colour", "window -600/1500", "window 40/400"]
    assert data.train[0].max() == 0.0 and data.train[1].mean() == pytest.approx(0.5, abs=0.01)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lung = load_data(
            replace_settings(DataConfig(), spec=str(root), image_size=8, dicom_window=(-600, 1500))
        )
    assert lung.info["dicom_displays"] == ["colour", "given window -600/1500"]
    assert torch.allclose(lung.train[0], lung.train[1])

    # Files to be scored are checked alike.
    from dia.data.folder import load_images

    with pytest.warns(UserWarning, match="DICOM files given are shown in 2 different ways"):
        load_images([root / "train"], 8, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_images([root / "train"], 8, 1, dicom_window=(40, 400))

    with pytest.raises(ValueError, match="width >= 1"):  # refused as the settings are made
        replace_settings(DataConfig(), spec=str(root), dicom_window=(40, 0))
    with pytest.raises(DataError, match="folders and CSV lists of DICOM files only"):
        load_data(replace_settings(DataConfig(), spec="synthetic", dicom_window=(40, 400)))


def test_dicom_errors(tmp_path: Path, write_dicom) -> None:
    from pydicom.uid import JPEG2000Lossless

    from dia.data.dicom import read_dicom

    (tmp_path / "fake.dcm").write_text("not DICOM at all")
    with pytest.raises(DataError, match="cannot read DICOM file .*fake.dcm"):
        read_dicom(tmp_path / "fake.dcm")

    # An older file without the preamble and file meta is still read, by its suffix.
    plain = pydicom.dcmread(write_dicom(tmp_path / "p.dcm", np.full((4, 4), 7, np.uint16),
                                        bits=12))  # fmt: skip
    bare = pydicom.Dataset()
    for element in plain:
        bare.add(element)
    pydicom.dcmwrite(tmp_path / "old.dcm", bare, enforce_file_format=False, implicit_vr=True)
    assert (tmp_path / "old.dcm").read_bytes()[128:132] != b"DICM"
    old, display = read_dicom(tmp_path / "old.dcm")
    assert display == "stored range 0 to 4095" and old.max() == pytest.approx(7 / 4095)

    # A window centre written with a decimal comma names the file.
    comma = write_dicom(tmp_path / "comma.dcm", np.zeros((4, 4), np.uint16), bits=12,
                        WindowCenter="12.45", WindowWidth=400)  # fmt: skip
    comma.write_bytes(comma.read_bytes().replace(b"12.45", b"12,45"))
    with pytest.raises(DataError, match="comma.dcm: unreadable window centre"):
        read_dicom(comma)

    # Uncompressed but cut short: no advice about decoders.
    short = pydicom.dcmread(write_dicom(tmp_path / "short.dcm", np.zeros((4, 4), np.uint16)))
    short.PixelData = short.PixelData[:10]
    short.save_as(tmp_path / "short.dcm")
    with pytest.raises(DataError, match="short.dcm .*Explicit VR Little Endian") as err:
        read_dicom(tmp_path / "short.dcm")
    assert "pylibjpeg" not in str(err.value)

    volume = np.zeros((3, 8, 8), dtype=np.uint8)
    multi = write_dicom(tmp_path / "volume.dcm", volume)
    with pytest.raises(DataError, match="volume.dcm holds 3 frames, not one image"):
        read_dicom(multi)

    empty = write_dicom(tmp_path / "report.dcm", np.zeros((2, 2), np.uint8))

    ds = pydicom.dcmread(empty)
    del ds.PixelData
    ds.save_as(empty)
    with pytest.raises(DataError, match="report.dcm holds no image"):
        read_dicom(empty)

    def jpeg2000(name: str, pixels: np.ndarray, encoded: bytes) -> Path:
        path = write_dicom(tmp_path / name, pixels)
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        ds.PixelData = pydicom.encaps.encapsulate([encoded])
        ds["PixelData"].VR = "OB"
        ds.save_as(path)
        return path

    # Compressed pixel data decodes (JPEG 2000 through Pillow) ...
    ramp = (np.arange(16 * 16).reshape(16, 16) % 256).astype(np.uint8)
    encoded = io.BytesIO()
    Image.fromarray(ramp).save(encoded, "JPEG2000", irreversible=False)
    decoded, _ = read_dicom(jpeg2000("ramp.dcm", ramp, encoded.getvalue()))
    np.testing.assert_allclose(decoded * 255, ramp, atol=1e-3)
    # ... and undecodable pixel data names the file, its transfer syntax and what may help.
    broken = jpeg2000("j2k.dcm", np.zeros((8, 8), np.uint8), b"\xff\x4f garbage")
    with pytest.raises(DataError, match="(?s)cannot decode .*j2k.dcm.*JPEG 2000.*pylibjpeg"):
        read_dicom(broken)
    with pytest.raises(DataError, match="j2k.dcm"):
        load_data(DataConfig(spec=str(_split_with(tmp_path / "data", broken))))


def _split_with(root: Path, bad: Path) -> Path:
    """A split layout whose one abnormal test image is ``bad``."""
    for name in ("train/0_normal/a.png", "test/0_normal/b.png"):
        _save(root / name, _gray(8, 8, 10))
    (root / "test/1_abnormal").mkdir(parents=True)
    shutil.copy(bad, root / "test/1_abnormal" / bad.name)
    return root


# ---------------------------------------------------------------- CSV list


def test_csv_list_with_splits(tmp_path: Path, write_dicom) -> None:
    for name, value in (("n1", 40), ("n2", 50), ("n3", 60), ("v1", 70), ("t1", 80)):
        _save(tmp_path / f"scans/{name}.png", _gray(20, 20, value))
    for name, value in (("a1", 200), ("a2", 210), ("a3", 220)):
        _save(tmp_path / f"scans/{name}.png", _gray(20, 20, value))
    write_dicom(tmp_path / "scans/IM9", np.full((20, 20), 4095, np.uint16), bits=12)
    elsewhere = tmp_path / "other" / "far.png"
    _save(elsewhere, _gray(20, 20, 30))
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists/study.csv").write_text(
        "patient,Path,LABEL,split\n"  # column names in any case; extra columns ignored
        "p1,../scans/n1.png,2,train\n"
        "p2,..\\scans\\n2.png,2,TRAIN\n"  # a path written on Windows
        " , , , \n"  # a line of empty fields
        f"p3,{elsewhere},2,train\n"  # an absolute path
        "p4,../scans/a1.png,0,train\n"  # an abnormal training image: only for contamination
        "p5,../scans/v1.png,2,val\n"
        "p6,../scans/a2.png,1,val\n"
        "p7,../scans/t1.png,2,test\n"
        "p8,../scans/a3.png,0,test\n"
        "p9,../scans/IM9,1,test\n"
    )
    config = DataConfig(spec=str(tmp_path / "lists/study.csv"), normal_class=2, image_size=8)
    data = load_data(config)
    _check_image_data(data, channels=1, size=8)
    assert data.counts() == {
        "train": 3, "test_normal": 1, "test_abnormal": 2, "val_normal": 1, "val_abnormal": 1
    }  # fmt: skip
    assert data.name == "study" and data.info["layout"] == "manifest, split"
    assert data.info["source"] == "csv" and data.info["dicom_displays"] == [
        "stored range 0 to 4095"
    ]
    np.testing.assert_allclose(data.train.mean(dim=(1, 2, 3)), [40 / 255, 50 / 255, 30 / 255],
                               atol=1e-3)  # fmt: skip
    assert data.test[-1].mean().item() == pytest.approx(1.0)  # the DICOM file, listed last
    dirty = load_data(DataConfig(spec=config.spec, normal_class=2, image_size=8,
                                 contamination=0.3))  # fmt: skip
    assert dirty.info["contaminated"] == 1 and dirty.train.max() > 0.75


def test_csv_list_without_splits_and_its_errors(tmp_path: Path) -> None:
    for i in range(5):
        _save(tmp_path / f"n{i}.png", _gray(12, 12, 20 * i))
    _save(tmp_path / "a.png", _gray(12, 12, 250))
    table = tmp_path / "all.csv"
    table.write_text("path,label\n" + "".join(f"n{i}.png,0\n" for i in range(5)) + "a.png,1\n")
    data = load_data(DataConfig(spec=str(table), test_fraction=0.4, image_size=8))
    assert data.counts() == {"train": 3, "test_normal": 2, "test_abnormal": 1}
    assert data.info["layout"] == "manifest, flat"
    assert data.train_groups is None
    again = load_data(DataConfig(spec=str(table), test_fraction=0.4, image_size=8))
    assert torch.equal(data.train, again.train)  # the split follows the seed

    def fails(text: str, match: str) -> None:
        table.write_text(text)
        with pytest.raises(DataError, match=match):
            load_data(DataConfig(spec=str(table), image_size=8))

    fails("file,label\nn0.png,0\n", "(?s)no column path.*path,label,split")
    fails("path,label\n", "lists no images")
    fails("path,label\n\n\nn0.png,0\nmissing.png,1\n", "line 5: no image file 'missing.png'")
    fails('path,label,note\nn0.png,0,"over\ntwo lines"\nn1.png,x,\n', "line 4: label 'x'")
    fails("path,label\nn0.png,0,\n", "line 2: 3 fields, but the header names 2")
    fails("path,label\nn0.png,0\n./n0.png,1\n", "line 3: './n0.png' is listed again .*line 2")
    fails("path,label\nn0.png,normal\n", "line 2: label 'normal' is not an integer")
    fails("path,label,split\nn0.png,0,train\nn1.png,0,tset\n", "line 3: split 'tset'")
    fails("path,label,split\nn0.png,0,train\nn1.png,0,\n", "line 3: no split")
    fails("path,label,split\nn0.png,0,train\na.png,1,test\n", "no normal image with split test")
    fails("path,label\nn0.png,0\na.png,1\n", "lists 1 normal image")
    fails("path,label,split\nn0.png,0,train\nn1.png,0,test\na.png,1,test\nn2.png,0,val\n",
          "val rows must hold normal and abnormal")  # fmt: skip


# ---------------------------------------------------------------- external test sets


def test_external_test_sets_hold_test_images_only(tmp_path: Path) -> None:
    from dia.data import load_test_set

    npz = _write_npz(tmp_path / "a.npz", BINARY, rgb=True)
    data = load_test_set(DataConfig(spec=str(npz), image_size=8, channels=1))
    assert data.counts() == {"train": 0, "test_normal": 2, "test_abnormal": 3}
    assert data.test.shape == (5, 1, 8, 8) and data.val is None  # the detector's shape
    assert data.info["source"] == "npz"
    # A file of test arrays alone will do, and gives the same images.
    alone = _write_npz(tmp_path / "b.npz", {"test": BINARY["test"]}, rgb=True)
    only = load_test_set(DataConfig(spec=str(alone), image_size=8, channels=1))
    assert torch.equal(only.test, data.test) and torch.equal(only.test_labels, data.test_labels)
    with pytest.raises(DataError, match="lacks the keys \\['test_labels'\\].* for a test set"):
        bare = _write_npz(tmp_path / "c.npz", {"test": [0, 1]}, drop=("test_labels",))
        load_test_set(DataConfig(spec=str(bare), image_size=8, channels=1))
    with pytest.raises(DataError, match="lacks the keys"):  # training still needs them all
        load_data(DataConfig(spec=str(alone)))

    flat = tmp_path / "flat"
    for i in range(3):
        _save(flat / f"normal/{i}.png", _gray(10, 10, 40))
    _save(flat / "abnormal/x.png", _gray(10, 10, 200))
    every = load_test_set(DataConfig(spec=str(flat), image_size=8, channels=3))
    assert every.counts() == {"train": 0, "test_normal": 3, "test_abnormal": 1}
    assert every.test.shape == (4, 3, 8, 8) and every.info["layout"].startswith("flat")

    (tmp_path / "one.csv").write_text(f"path,label\n{flat / 'normal/0.png'},0\n")
    with pytest.raises(DataError, match="one-class test set"):
        load_test_set(DataConfig(spec=str(tmp_path / "one.csv"), image_size=8, channels=1))
    with pytest.raises(DataError, match="no test images: expected test/0_normal"):
        load_test_set(DataConfig(spec=str(flat / "normal"), image_size=8, channels=1))
    with pytest.raises(ValueError, match="image_size and channels"):
        load_test_set(DataConfig(spec=str(flat)))


# ---------------------------------------------------------------- medmnist


def _no_download(url: str, destination: Path) -> None:
    raise urllib.error.URLError("network is unreachable")


def test_medmnist_offline_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(medmnist_module, "_download", _no_download)
    config = DataConfig(spec="medmnist:pneumoniamnist", cache_dir=str(tmp_path))
    with pytest.raises(DataError) as err:
        load_data(config)
    message = str(err.value)
    assert "https://zenodo.org/records/10519652/files/pneumoniamnist.npz" in message
    assert str(tmp_path / "medmnist" / "pneumoniamnist.npz") in message
    assert "--data /path/to/pneumoniamnist.npz" in message
    assert list((tmp_path / "medmnist").iterdir()) == []  # no partial file left behind


def test_medmnist_checksum_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(medmnist_module, "_download", lambda url, dest: dest.write_bytes(b"x"))
    monkeypatch.setenv("DIA_CACHE", str(tmp_path))
    with pytest.raises(DataError, match="md5"):
        load_data(DataConfig(spec="medmnist:breastmnist"))
    assert list((tmp_path / "medmnist").iterdir()) == []


def test_medmnist_unknown_name() -> None:
    with pytest.raises(DataError, match="pneumoniamnist"):
        load_data(DataConfig(spec="medmnist:notamnist"))


def test_medmnist_cache_hit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = SHARED / "pneumoniamnist.npz"
    if not source.is_file():
        pytest.skip(f"shared data missing: {source}")
    cached = tmp_path / "medmnist" / "pneumoniamnist.npz"
    cached.parent.mkdir()
    shutil.copy(source, cached)
    monkeypatch.setattr(medmnist_module, "_download", _no_download)
    config = DataConfig(spec="medmnist:PneumoniaMNIST", cache_dir=str(tmp_path))

    # Trust the shared copy's own checksum: the test is about the cache logic, not the bytes.
    digest = medmnist_module._md5(source)
    monkeypatch.setitem(medmnist_module.KNOWN_MD5, "pneumoniamnist", digest)
    data = load_data(config)
    assert data.info["source"] == "medmnist" and data.info["md5_verified"] is True
    assert data.info["downloaded"] is False and data.name == "pneumoniamnist"
    assert data.counts()["train"] == 1214

    # A cached file with the wrong checksum is fetched again, which fails offline.
    monkeypatch.setitem(medmnist_module.KNOWN_MD5, "pneumoniamnist", "0" * 32)
    with pytest.raises(DataError, match=f"cached file has md5 {digest}"):
        load_data(config)
    assert cached.is_file()  # the old file stays until a verified one replaces it


def test_medmnist_download_is_verified_and_readable_by_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import stat

    source = SHARED / "pneumoniamnist.npz"
    if not source.is_file():
        pytest.skip(f"shared data missing: {source}")
    monkeypatch.setattr(medmnist_module, "_download", lambda url, dest: shutil.copy(source, dest))
    monkeypatch.setitem(medmnist_module.KNOWN_MD5, "pneumoniamnist", medmnist_module._md5(source))
    before = os.umask(0o022)
    try:
        data = load_data(DataConfig(spec="medmnist:pneumoniamnist", cache_dir=str(tmp_path)))
    finally:
        os.umask(before)
    assert data.info["downloaded"] is True and data.info["md5_verified"] is True
    cached = tmp_path / "medmnist" / "pneumoniamnist.npz"
    assert stat.S_IMODE(cached.stat().st_mode) == 0o644  # a shared cache serves every user
    assert [p.name for p in cached.parent.iterdir()] == ["pneumoniamnist.npz"]


# ---------------------------------------------------------------- synthetic


def test_synthetic_lesions_locate_the_nodules() -> None:
    from dia.data.synthetic import synthetic_lesions

    data = make_synthetic(n_train=4, n_val=6, n_test=10, image_size=24, seed=3)
    for split, images, labels in (("test", data.test, data.test_labels),
                                  ("val", data.val, data.val_labels)):  # fmt: skip
        lesions = synthetic_lesions(split, len(labels), image_size=24, seed=3)
        assert lesions.shape == images.shape
        present = lesions.flatten(1).abs().amax(dim=1) > 0.02
        assert present.tolist() == labels.bool().tolist()
        # a nodule is small: under a tenth of the image changes noticeably
        assert ((lesions.abs() > 0.02).float().flatten(1).mean(1) < 0.1).all()
    with pytest.raises(ValueError, match="split='train'"):
        synthetic_lesions("train", 4)


def test_synthetic_shapes_and_determinism() -> None:
    data = make_synthetic(n_train=20, n_val=6, n_test=11, seed=3)
    _check_image_data(data, channels=1, size=32)
    assert data.counts() == {
        "train": 20,
        "test_normal": 6,
        "test_abnormal": 5,
        "val_normal": 3,
        "val_abnormal": 3,
    }
    again = make_synthetic(n_train=20, n_val=6, n_test=11, seed=3)
    assert torch.equal(data.train, again.train) and torch.equal(data.test, again.test)
    other = make_synthetic(n_train=20, n_val=6, n_test=11, seed=4)
    assert not torch.equal(data.train, other.train)
    # Images vary globally, not only by noise.
    assert data.train.flatten(1).mean(1).std() > 0.02


def test_synthetic_lesion_is_small_and_local() -> None:
    n = 24
    plain = render_images(n, 32, 7, np.zeros(n, bool))
    sick = render_images(n, 32, 7, np.ones(n, bool))
    diff = np.abs(sick - plain)
    changed = (diff > 0.02).sum(axis=(1, 2))
    assert (changed > 0).all() and (changed < 60).all()  # a nodule, not a global change
    assert abs(float(sick.mean()) - float(plain.mean())) < 0.01
    assert sick.min() >= 0.0 and sick.max() <= 1.0
    # The changed pixels sit together: within a few pixels of the strongest one.
    for image in diff:
        peak = np.unravel_index(image.argmax(), image.shape)
        rows, cols = np.nonzero(image > 0.02)
        assert np.hypot(rows - peak[0], cols - peak[1]).max() < 6


def test_synthetic_through_load_data() -> None:
    config = replace_settings(
        DataConfig(),
        spec="synthetic",
        synthetic_train=16,
        synthetic_val=0,
        synthetic_test=8,
        image_size=24,
        contamination=0.25,
    )
    data = load_data(config)
    _check_image_data(data, channels=1, size=24)
    assert data.val is None and data.info["contaminated"] == 4
    with pytest.raises(DataError, match="normal_class"):
        load_data(DataConfig(spec="synthetic", normal_class=1))


# ---------------------------------------------------------------- real shared data


def test_shared_pneumoniamnist() -> None:
    path = SHARED / "pneumoniamnist.npz"
    if not path.is_file():
        pytest.skip(f"shared data missing: {path}")
    data = load_data(DataConfig(spec=str(path)))
    _check_image_data(data, channels=1, size=28)
    counts = data.counts()
    assert (counts["train"], counts["test_normal"], counts["test_abnormal"]) == (1214, 234, 390)


def test_shared_covid_ct() -> None:
    root = SHARED / "covid-ct"
    if not root.is_dir():
        pytest.skip(f"shared data missing: {root}")
    with pytest.warns(UserWarning, match="78 of 746 image files are in colour"):
        data = load_data(DataConfig(spec=str(root), image_size=32))
    assert data.counts() == {"train": 318, "test_normal": 79, "test_abnormal": 70}
    _check_image_data(data, channels=3, size=32)
    assert data.info["layout"] == "split"


def test_shared_covid_ct_as_dicom_reads_as_its_pngs(tmp_path: Path, write_dicom) -> None:
    """Real scans written as DICOM (no suffix, as scanners do) load as their PNGs do."""
    from dia.data.folder import load_images

    root = SHARED / "covid-ct"
    if not root.is_dir():
        pytest.skip(f"shared data missing: {root}")
    pngs = sorted((root / "test").rglob("*.png"))[::12]
    for i, png in enumerate(pngs):
        with Image.open(png) as img:
            pixels = np.asarray(img.convert("RGB"))
        if int((pixels.max(axis=2) - pixels.min(axis=2)).max()) <= 2:
            write_dicom(tmp_path / f"IM{i:04d}", pixels.mean(axis=2).round().astype(np.uint8))
        else:
            write_dicom(tmp_path / f"IM{i:04d}", pixels, "RGB")
    from_png, _ = load_images(pngs, 64, channels=3)
    from_dicom, files = load_images([tmp_path], 64, channels=3)
    assert len(files) == len(pngs) >= 10
    # the same pixels; only the resizing differs (8-bit steps for PNG, float for DICOM)
    assert (from_png - from_dicom).abs().mean() < 0.003
    assert (from_png - from_dicom).abs().max() < 0.05
