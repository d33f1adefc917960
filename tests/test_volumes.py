"""Volumes: NIfTI files and multi-frame DICOM files, read slice by slice."""

import shutil
import warnings
from pathlib import Path

import nibabel
import numpy as np
import pytest
import torch

from dia.config import DataConfig, replace_settings
from dia.data import DataError, load_data


def _nifti(path: Path, voxels: np.ndarray, affine: np.ndarray | None = None, **scaling) -> Path:
    """Write ``voxels`` as a NIfTI file; ``scaling``: slope and inter of its header."""
    image = nibabel.Nifti1Image(voxels, np.eye(4) if affine is None else affine)
    if scaling:
        image.header.set_slope_inter(scaling["slope"], scaling["inter"])
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(image, path)
    return path


def _ramp(shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
    """int16 voxels 100 z + 10 y + x (+ ``offset``): each one tells where it lies."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape[:3]), indexing="ij")
    return (100 * z + 10 * y + x + offset).astype(np.int16)


def test_nifti_slices_their_orientation_scaling_and_display(tmp_path: Path) -> None:
    from dia.data.volumes import VOLUME_RANGE, read_nifti

    voxels = _ramp((4, 3, 2))
    # Stored from the patient's right to left (x runs against RAS), with a rescale.
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    path = _nifti(tmp_path / "ct.nii.gz", voxels, flipped, slope=2.0, inter=-5.0)
    slices, display = read_nifti(path, window=(300.0, 1001.0))
    assert slices.shape == (2, 3, 4) and slices.dtype == np.float32
    assert display == "given window 300/1001"
    values = 2.0 * voxels - 5.0  # the header's scaling
    # Slice z with anterior (high y) at the top and the patient's right (here x = 0, as
    # stored) on the left, as DICOM viewers show axial images.
    expected = values.transpose(2, 1, 0)[:, ::-1, :]
    expected = np.clip((expected - 299.5) / 1000.0 + 0.5, 0, 1)
    np.testing.assert_allclose(slices, expected, atol=1e-6)

    own, display = read_nifti(path)
    assert display == VOLUME_RANGE
    assert own.min() == 0.0 and own.max() == 1.0
    assert (np.diff(own.mean(axis=(1, 2))) > 0).all()  # higher slices are brighter here

    # A 4-D file is refused, unless its fourth axis holds one volume.
    with pytest.raises(DataError, match="series.nii is 4-D"):
        read_nifti(_nifti(tmp_path / "series.nii", np.zeros((4, 4, 3, 2), np.float32)))
    single, _ = read_nifti(_nifti(tmp_path / "one.nii", np.ones((4, 4, 3, 1), np.float32)))
    assert single.shape == (3, 4, 4)
    # One slice, stored against RAS too: read as one image, its x reversed the same way.
    plane = _ramp((4, 3, 1))[..., 0]
    flat, _ = read_nifti(_nifti(tmp_path / "plane.nii", plane, flipped), window=(300.0, 1001.0))
    expected = np.clip((plane.T[::-1, :] - 299.5) / 1000.0 + 0.5, 0, 1)
    np.testing.assert_allclose(flat, expected[None], atol=1e-6)
    with pytest.raises(DataError, match="complex voxels"):
        read_nifti(_nifti(tmp_path / "phase.nii", np.ones((2, 2, 2), np.complex64)))
    (tmp_path / "broken.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(DataError, match="cannot read NIfTI file .*broken.nii.gz"):
        read_nifti(tmp_path / "broken.nii.gz")


def test_folder_of_volumes_keeps_each_volume_on_one_side(tmp_path: Path, monkeypatch) -> None:
    import dia.data.imagefile
    from dia.data.folder import load_images
    from dia.data.volumes import read_nifti as read

    root = tmp_path / "mri"
    for i in range(3):
        _nifti(root / f"normal/case{i}.nii.gz", _ramp((16, 16, 4), offset=i))
    _nifti(root / "abnormal/case9.nii", _ramp((16, 16, 4), offset=50))
    with pytest.warns(UserWarning, match="every slice of 1 abnormal volume.*case9.nii"):
        data = load_data(DataConfig(spec=str(root), image_size=8))
    # 3 normal volumes of 4 slices: one volume is test, two train; every abnormal slice tests.
    assert data.counts() == {"train": 8, "test_normal": 4, "test_abnormal": 4}
    assert data.train_groups.tolist() == [0] * 4 + [1] * 4  # each slice's volume
    # A validation split holds out whole volumes: here one normal and one abnormal of a split
    # layout's training volumes, every slice of each and no slice of the others.
    split = tmp_path / "split"
    for i in range(4):
        _nifti(split / f"train/0_normal/case{i}.nii.gz", _ramp((16, 16, 4), offset=10 * i))
    for i in range(2):
        _nifti(split / f"train/1_abnormal/sick{i}.nii.gz", _ramp((16, 16, 4), offset=500 + i))
    _nifti(split / "test/0_normal/t.nii.gz", _ramp((16, 16, 4), offset=5))
    _nifti(split / "test/1_abnormal/u.nii.gz", _ramp((16, 16, 4), offset=505))
    window = (500.0, 2001.0)  # one display for all, so that volumes differ by their offsets
    config = replace_settings(
        DataConfig(), spec=str(split), image_size=8, val_fraction=0.25, dicom_window=window
    )
    with pytest.warns(UserWarning, match="every slice of 2 abnormal volume"):
        held = load_data(config)
    assert held.counts() == {
        "train": 12,
        "test_normal": 4,
        "test_abnormal": 4,
        "val_normal": 4,
        "val_abnormal": 4,
    }
    assert held.info["val_held_out"] == {"normal": 4, "abnormal": 4}
    volumes = {f.name: load_images([f], 8, 1, window)[0] for f in split.glob("train/*/*")}
    val_normal = [n for n, v in volumes.items() if torch.equal(v, held.val[:4])]
    val_abnormal = [n for n, v in volumes.items() if torch.equal(v, held.val[4:])]
    assert len(val_normal) == 1 and val_abnormal[0].startswith("sick")
    trained = [v for n, v in volumes.items() if n.startswith("case") and n != val_normal[0]]
    assert torch.equal(torch.cat(trained).sort(0).values, held.train.sort(0).values)
    assert held.train_groups.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # Fewer training slices and contamination keep each image's volume: the abnormal slices
    # put in come from the one abnormal volume validation left, and share its group.
    with pytest.warns(UserWarning, match="every slice"):
        dirty = load_data(replace_settings(config, max_train=10, contamination=0.25))
    groups = dirty.train_groups.tolist()
    put_in = dirty.info["contaminated_indices"]
    assert len(groups) == 10 and len(put_in) == 2
    assert [groups[i] for i in put_in] == [3, 3]
    assert {g for i, g in enumerate(groups) if i not in put_in} <= {0, 1, 2}
    # A flat folder sends every abnormal volume to the test set: none is left for validation.
    with (
        pytest.warns(UserWarning, match="every slice"),
        pytest.raises(DataError, match="val_fraction=0.25 needs abnormal images outside"),
    ):
        load_data(DataConfig(spec=str(root), image_size=8, val_fraction=0.25))

    volume = root / "normal/case1.nii.gz"
    every, names = load_images([volume], 8, channels=1)
    assert [n.name for n in names] == [f"case1.nii.gz#{k}" for k in range(4)]
    some, names = load_images([f"{volume}#1-2"], 8, channels=1)
    assert [n.name for n in names] == ["case1.nii.gz#1", "case1.nii.gz#2"]
    assert torch.equal(some, every[1:3])
    # Slices named one by one: the volume is read once, not once a slice.
    reads = []
    monkeypatch.setattr(dia.data.imagefile, "read_nifti", lambda *a: reads.append(a) or read(*a))
    one_by_one, _ = load_images([f"{volume}#{k}" for k in range(4)], 8, channels=1)
    assert torch.equal(one_by_one, every) and len(reads) == 1
    with pytest.raises(DataError, match="has 4 slice.*slice 7 was asked for"):
        load_images([f"{volume}#7"], 8, channels=1)


def test_csv_list_labels_slices_of_a_volume(tmp_path: Path) -> None:
    from PIL import Image

    for name in ("a", "b", "c"):
        _nifti(tmp_path / f"{name}.nii.gz", _ramp((8, 8, 4)))
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "pic.png")

    def listed(*rows: str) -> DataConfig:
        (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
        return DataConfig(spec=str(tmp_path / "list.csv"), image_size=8)

    # Slices 0-1 of a train as normal, slice 2 tests as abnormal, slice 3 as normal: the
    # split the list gives is kept, with a warning about the shared volume.
    split = ("path,label,split", "a.nii.gz#0-1,0,train", "a.nii.gz#2,1,test")
    with pytest.warns(UserWarning, match="1 volume.*a.nii.gz.*in training and in the test"):
        data = load_data(listed(*split, "a.nii.gz#3,0,test", "b.nii.gz,0,test"))
    assert data.counts() == {"train": 2, "test_normal": 5, "test_abnormal": 1}

    # Slice by slice, a volume is still one volume: a validation split takes it whole, and a
    # volume with abnormal training slices takes its normal ones along.
    volumes = [f"c.nii.gz#{k},0,train" for k in range(4)] + ["b.nii.gz#0-1,1,train"]
    volumes += ["b.nii.gz#2-3,0,train", "a.nii.gz#0,0,test", "a.nii.gz#1,1,test"]
    config = listed("path,label,split", "pic.png,0,train", *volumes)
    for seed in range(4):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no volume on two sides
            data = load_data(replace_settings(config, val_fraction=0.5, split_seed=seed))
        train = data.counts()["train"]  # c's 4 slices or pic.png alone
        assert train in (1, 4) and data.counts()["val_normal"] == 7 - train
        assert data.counts()["val_abnormal"] == 2
    assert data.info["files_read"] == 4  # a, b, c and pic.png, each once for all its rows
    with pytest.raises(DataError, match="needs at least 2 normal training files in .*list.csv"):
        load_data(replace_settings(listed("path,label,split", *volumes), val_fraction=0.5))

    # Without a split column a volume with abnormal slices goes to the test set whole.
    data = load_data(
        listed("path,label", "a.nii.gz#0-1,0", "a.nii.gz#2-3,1", "b.nii.gz,0", "c.nii.gz,0")
    )
    assert data.counts() == {"train": 4, "test_normal": 6, "test_abnormal": 2}

    with pytest.raises(DataError, match="line 3: 'a.nii.gz#1-3' lists slices again .*line 2"):
        load_data(listed(*split[:2], "a.nii.gz#1-3,1,test"))
    with pytest.raises(DataError, match="line 3: 'a.nii.gz' lists slices again"):
        load_data(listed(*split[:2], "a.nii.gz,1,test"))
    with pytest.raises(DataError, match="line 2: slice range '3-1' of a.nii.gz"):
        load_data(listed("path,label", "a.nii.gz#3-1,0"))
    with pytest.raises(DataError, match="pic.png is a 2-D image, not a volume"):
        load_data(listed(*split, "pic.png#0,0,test"))


def test_multi_frame_dicom_frames_with_their_functional_groups(tmp_path: Path, write_dicom) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from dia.data.dicom import read_dicom_frames
    from dia.data.folder import load_images

    def item(**elements: object) -> Dataset:
        ds = Dataset()
        for keyword, value in elements.items():
            setattr(ds, keyword, value)
        return ds

    frames = np.stack([np.full((8, 8), v, np.uint16) for v in (100, 200, 300)])
    rescale = item(RescaleSlope="2", RescaleIntercept="-100", RescaleType="HU")
    window = item(WindowCenter="100", WindowWidth="201")
    path = write_dicom(
        tmp_path / "enhanced.dcm",
        frames,
        bits=12,
        SharedFunctionalGroupsSequence=Sequence(
            [item(PixelValueTransformationSequence=Sequence([rescale]))]
        ),
        # Frames 0 and 1 give a window of their own, frame 2 none.
        PerFrameFunctionalGroupsSequence=Sequence(
            [item(FrameVOILUTSequence=Sequence([window])) for _ in range(2)] + [item()]
        ),
    )
    shown, displays = read_dicom_frames(path)
    assert shown.shape == (3, 8, 8)
    assert displays == ["window 100/201", "window 100/201", "stored range -100 to 8090"]
    # frame 0: 2 * 100 - 100 = 100 HU at the window's centre; frame 2: 500 HU in the range
    assert shown[0].mean() == pytest.approx((100 - 99.5) / 200 + 0.5)
    assert shown[2].mean() == pytest.approx((500 + 100) / 8190)
    given, displays = read_dicom_frames(path, window=(300.0, 401.0))
    assert set(displays) == {"given window 300/401"}
    assert given[1].mean() == pytest.approx(0.5 + 0.5 / 400)  # 300 HU at the centre

    with pytest.warns(UserWarning, match="shown in 2 different ways"):
        images, names = load_images([tmp_path], 8, channels=1)
    assert [n.name for n in names] == [f"enhanced.dcm#{k}" for k in range(3)]
    assert torch.allclose(images[:, 0], torch.from_numpy(shown), atol=1e-6)

    # One per-frame item a frame, as the standard asks; fewer would leave frames unscaled.
    short = write_dicom(
        tmp_path / "short" / "short.dcm",
        frames,
        bits=12,
        PerFrameFunctionalGroupsSequence=Sequence(
            [item(PixelValueTransformationSequence=Sequence([rescale]))]
        ),
    )
    with pytest.raises(DataError, match="short.dcm: 1 per-frame functional group items for 3"):
        read_dicom_frames(short)

    # Slices stored out of order come in the order of their position along the normal of
    # their planes, feet to head for axial ones however their rows run.
    axial, feet_first = [1, 0, 0, 0, 1, 0], [-1, 0, 0, 0, 1, 0]
    sagittal = [0, 1, 0, 0, 0, -1]

    def order(name: str, positions: list, orientations: list) -> list[int]:
        planes = [
            item(
                PlanePositionSequence=Sequence([item(ImagePositionPatient=position)]),
                PlaneOrientationSequence=Sequence([item(ImageOrientationPatient=facing)]),
            )
            for position, facing in zip(positions, orientations, strict=True)
        ]
        path = write_dicom(
            tmp_path / name / f"{name}.dcm",
            frames,
            bits=12,
            PerFrameFunctionalGroupsSequence=Sequence(planes),
        )
        return [round(f.mean() * 4095) for f in read_dicom_frames(path)[0]]

    heights = [[0, 0, z] for z in (20, 0, 10)]
    assert order("ct", heights, [axial] * 3) == [200, 300, 100]
    assert order("feet", heights, [feet_first] * 3) == [200, 300, 100]
    # The stored order stays when the planes face two ways (a localizer; positions that
    # would sort along the first plane's normal), when two share a position, and when a
    # position is malformed.
    both = [[x, 0, x] for x in (20, 0, 10)]
    assert order("scout", both, [sagittal, axial, axial]) == [100, 200, 300]
    assert order("twice", [[0, 0, z] for z in (10, 0, 10)], [axial] * 3) == [100, 200, 300]
    assert order("bad", [[0, 0, 20], [0, 0], [0, 0, 10]], [axial] * 3) == [100, 200, 300]

    # A colour cine loop named frame by frame is one colour file read once.
    from dia.data.folder import Reader

    red = np.zeros((2, 8, 8, 3), np.uint8)
    red[..., 0] = 255
    cine = write_dicom(tmp_path / "cine" / "cine.dcm", red, "RGB")
    reader = Reader(8)
    read = reader.files([(cine, range(0, 1)), (cine, range(1, 2))])
    assert [len(f.images) for f in read] == [1, 1]
    assert reader.files_read == 1 and reader.colour_files == 1


def test_a_run_on_volumes_chooses_its_threshold_leaving_volumes_out(tmp_path: Path, capsys) -> None:
    from dia.cli import main
    from dia.device import resolve_precision
    from dia.pipeline import load_config, load_detector, load_run_data
    from dia.scoring import csi_score, shifted_features

    rng = np.random.default_rng(0)
    root = tmp_path / "vols"
    for i in range(7):
        _nifti(root / f"normal/c{i}.nii.gz", rng.integers(0, 500, (16, 16, 3)).astype(np.int16))
    _nifti(root / "abnormal/a.nii.gz", rng.integers(0, 900, (16, 16, 3)).astype(np.int16))
    out = tmp_path / "run"
    tiny = ["--image-size", "16", "--epochs", "1", "--batch-size", "8", "--width", "4",
            "--score-samples", "2", "--dissolve", "none", "--no-progress",
            "--device", "cpu"]  # fmt: skip
    assert main(["run", "--data", str(root), "--out", str(out), *tiny]) == 0
    warned = capsys.readouterr().err
    assert "every slice of 1 abnormal volume" in warned and "only" not in warned
    detector = load_detector(out, "cpu")
    config = load_config(out)
    with pytest.warns(UserWarning, match="every slice"):
        data = load_run_data(config)
    assert data.train_groups.tolist() == [g for g in range(6) for _ in range(3)]
    cpu = torch.device("cpu")
    precision = resolve_precision(config.precision, cpu)  # bf16 where the CPU is fast at it
    feats = shifted_features(
        detector.net_, data.train, config.detector, config.score, cpu, precision
    )
    expected = csi_score(feats, detector.bank_, config.score, True, data.train_groups)
    np.testing.assert_allclose(detector.train_scores_, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_the_files_of_one_dicom_study_stay_together(tmp_path: Path, write_dicom) -> None:
    # Three CT series stored one file a slice (a study each) and two single X-rays.
    root = tmp_path / "ct"
    level = {}
    for study in range(3):
        for k in range(3):
            name = f"s{study}_{k}.dcm"
            level[name] = 10 + 20 * study + k
            pixels = np.full((8, 8), level[name], np.uint16)
            write_dicom(root / "normal" / name, pixels, bits=8, StudyInstanceUID=f"1.2.{study}")
    for name, value in (("x0.dcm", 100), ("x1.dcm", 110)):
        level[name] = value
        write_dicom(root / "normal" / name, np.full((8, 8), value, np.uint16), bits=8)
    write_dicom(root / "abnormal" / "a.dcm", np.full((8, 8), 200, np.uint16), bits=8)

    def names(images: torch.Tensor) -> set[str]:
        values = [round(v * 255) for v in images.flatten(1).mean(1).tolist()]
        return {n for n, v in level.items() if v in values}

    for seed in range(6):
        data = load_data(DataConfig(spec=str(root), image_size=8, split_seed=seed))
        train = names(data.train)
        for study in range(3):  # each study whole on one side
            assert len({f"s{study}_{k}.dcm" in train for k in range(3)}) == 1
        studies_in_train = len({n[:2] for n in train if n.startswith("s")})
        groups = data.train_groups.tolist()
        assert len(groups) == len(train) and len(set(groups)) == studies_in_train + len(
            [n for n in train if n.startswith("x")]
        )
    # Grouping by study can be turned off (for an anonymiser that gave every file one UID).
    plain = load_data(
        replace_settings(DataConfig(), spec=str(root), image_size=8, dicom_studies=False)
    )
    assert plain.train_groups is None
    same = tmp_path / "same"
    for i in range(3):
        write_dicom(same / f"normal/{i}.dcm", np.full((8, 8), i, np.uint16), StudyInstanceUID="9")
    write_dicom(same / "abnormal/a.dcm", np.full((8, 8), 99, np.uint16), StudyInstanceUID="9")
    with pytest.raises(DataError, match="0 normal image file.*--dicom-studies false"):
        load_data(DataConfig(spec=str(same), image_size=8))
    assert (
        load_data(
            replace_settings(DataConfig(), spec=str(same), image_size=8, dicom_studies=False)
        ).counts()["train"]
        == 2
    )
    # A split the data gives that shares a study gets a warning.
    split = tmp_path / "split"
    for part, files in (("train/0_normal", ["s0_0", "s0_1", "x0"]), ("test/0_normal", ["s0_2"])):
        (split / part).mkdir(parents=True)
        for name in files:
            shutil.copy(root / "normal" / f"{name}.dcm", split / part)
    (split / "test/1_abnormal").mkdir(parents=True)
    shutil.copy(root / "abnormal/a.dcm", split / "test/1_abnormal")
    with pytest.warns(UserWarning, match="1 volume.* or DICOM studies \\(the study of s0_"):
        load_data(DataConfig(spec=str(split), image_size=8))
    # A run saved before studies were grouped is read back as it was made: file by file.
    from dia.pipeline import load_config

    (tmp_path / "old").mkdir()
    (tmp_path / "old/config.json").write_text('{"data": {"spec": "x"}}')
    assert load_config(tmp_path / "old").data.dicom.studies is False
