"""The extension points: a shift family, a score and a data source defined here, registered,
and used through the same code as the built-in ones."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dia.config import (
    DataConfig,
    DetectorConfig,
    RunConfig,
    ScoreConfig,
    check_shift_count,
    replace_settings,
)
from dia.data import DataError, ImageData, load_data, load_test_set
from dia.data.registry import DATA_SOURCES, DataSource, register_source
from dia.detector import DIADetector
from dia.scores import SCORES, CSIScore, Score, get_score, register_score
from dia.scoring import features, plain_features
from dia.shifts import SHIFTS, Shift, get_shift, register_shift

TINY = replace_settings(
    DetectorConfig(), dissolve="gaussian", width=4, batch_size=8, epochs=1, dissolve_cache_steps=0
)


class VerticalFlip(Shift):
    """Two shifts: the image as it is and upside down."""

    name = "vflip"
    count = 2

    def __call__(self, x, k):
        return x.flip(-2) if k % 2 else x


class MeanNearest(Score):
    """Minus the mean Euclidean distance of an image's normalised features to its k nearest
    bank features, averaged over shifts."""

    name = "mean-nearest"
    k = 3

    def bank(self, train):
        return {"features": F.normalize(train.select(self.config.features), dim=2)}

    def __call__(self, feats, state, exclude_self=False, groups=None):
        f = F.normalize(feats.select(self.config.features), dim=2)
        distance = torch.cdist(f, state["features"])  # (K, N, M)
        if exclude_self:
            n = f.shape[1]
            groups = torch.arange(n) if groups is None else torch.as_tensor(groups)
            distance = distance.masked_fill(groups[:, None] == groups[None, :], float("inf"))
        nearest = distance.topk(self.k, dim=2, largest=False).values
        return -nearest.mean(dim=2).mean(dim=0)


class Ones(DataSource):
    """``ones:N``: N flat grey training images; N flat test images and N bright ones."""

    name = "ones"
    form = "ones:N"
    about = "N flat grey images, for tests"

    def matches(self, spec):
        return spec.startswith("ones:")

    def load(self, config):
        n = int(config.spec.strip().split(":")[1])
        grey = torch.full((n, 1, 8, 8), 0.5)  # load_data resizes them to config.image_size
        test = torch.cat([grey, torch.ones(n, 1, 8, 8)])
        labels = torch.cat([torch.zeros(n), torch.ones(n)]).long()
        return ImageData("ones", grey.clone(), test, labels)


def _registered(registry, register, cls):
    register(cls)
    yield cls
    del registry[cls.name]


@pytest.fixture
def vflip():
    yield from _registered(SHIFTS, register_shift, VerticalFlip)


@pytest.fixture
def mean_nearest():
    yield from _registered(SCORES, register_score, MeanNearest)


@pytest.fixture
def ones():
    yield from _registered(DATA_SOURCES, register_source, Ones)


def test_a_registered_shift_family_trains_and_scores_a_detector(vflip, tmp_path):
    assert get_shift("vflip").count == 2
    images = torch.rand(16, 1, 16, 16)
    config = replace_settings(TINY, shift="vflip")
    score = ScoreConfig(samples=2, shifts=2, features="projection", shift_weight=1.0)
    det = DIADetector(config, score, device="cpu", progress=False).fit(images)
    assert det.net_.shift_head.out_features == 2  # the network asks the family its count
    assert det.bank_.bank.shape == (2, 16, 128)
    assert np.isfinite(det.train_scores_).all() and np.isfinite(det.threshold_)
    scores = det.score_samples(images[:4])
    assert scores.shape == (4,) and np.isfinite(scores).all()
    # Scoring's views are the family's shifts of the images.
    plain = plain_features(det.net_, images[:3], config, score, torch.device("cpu"))
    with torch.no_grad():
        _, z, logits = det.net_.eval().forward_features(images[:3].flip(-2))
    torch.testing.assert_close(plain.z[1], z)
    torch.testing.assert_close(plain.logits[1], logits)
    det.save_pretrained(tmp_path / "det")
    loaded = DIADetector.from_pretrained(tmp_path / "det", device="cpu")
    assert loaded.detector_config.loss.shift == "vflip"
    np.testing.assert_allclose(loaded.score_samples(images[:4]), scores, rtol=1e-5, atol=1e-6)
    # More shifts scored than the family makes is refused before anything is trained.
    with pytest.raises(ValueError, match="score shifts=3; expected at most 2"):
        check_shift_count(config, ScoreConfig(shifts=3))
    with pytest.raises(ValueError, match="score shifts=3; expected at most 2"):
        RunConfig(detector=config, score=ScoreConfig(shifts=3))  # checked where it is built


def test_a_registered_score_scores_a_detector(mean_nearest, tmp_path):
    images = torch.rand(16, 1, 16, 16)
    score = ScoreConfig(kind="mean-nearest", samples=0, shifts=2)
    det = DIADetector(TINY, score, device="cpu", precision="fp32", progress=False)
    det.fit(images, keep_features=True)
    assert isinstance(get_score(score), MeanNearest)
    assert set(det.bank_) == {"features"} and det.bank_["features"].shape == (2, 16, 32)
    # The threshold comes from the score's leave-one-out training scores.
    train = MeanNearest(score)(det.train_features_, det.bank_, exclude_self=True).numpy()
    np.testing.assert_allclose(det.train_scores_, train, rtol=1e-6)
    assert det.threshold_ == pytest.approx(float(np.quantile(train, det.fpr)))
    feats = features(det.net_, images[:5], TINY, score, torch.device("cpu"))
    expected = MeanNearest(score)(feats, det.bank_).numpy()
    np.testing.assert_allclose(det.score_samples(images[:5]), expected, rtol=1e-5, atol=1e-6)
    assert (det.score_samples(images[:5]) <= 0).all()  # minus a distance
    # Saved with its state, and read back through the score's own load_state.
    det.save_pretrained(tmp_path / "det")
    assert json.loads((tmp_path / "det" / "config.json").read_text())["score"]["kind"] == (
        "mean-nearest"
    )
    loaded = DIADetector.from_pretrained(tmp_path / "det", device="cpu", precision="fp32")
    np.testing.assert_allclose(loaded.score_samples(images[:5]), expected, rtol=1e-5, atol=1e-6)


def test_the_csi_score_is_the_registered_default():
    assert ScoreConfig().kind == "csi" and isinstance(get_score(ScoreConfig()), CSIScore)
    with pytest.raises(ValueError, match=r"score kind='nope'; expected one of \['csi'"):
        ScoreConfig(kind="nope")
    with pytest.raises(ValueError, match="shift='nope'; expected one of"):
        replace_settings(DetectorConfig(), shift="nope")


def test_a_name_is_registered_once(vflip):
    register_shift(VerticalFlip)  # again: the same class, nothing changes
    other = type("OtherFlip", (VerticalFlip,), {})
    with pytest.raises(ValueError, match="shift 'vflip' is already registered"):
        register_shift(other)
    with pytest.raises(ValueError, match="needs a name"):
        register_score(type("Nameless", (Score,), {}))


def test_a_registered_data_source_loads_through_load_data(ones):
    data = load_data(DataConfig(spec="ones:8"))
    assert data.info["source"] == "ones" and data.counts() == {
        "train": 8,
        "test_normal": 8,
        "test_abnormal": 8,
    }
    assert data.train.shape == (8, 1, 8, 8) and data.channels == 1
    # load_data shapes what every source gives alike: here resized, in colour, fewer.
    shaped = load_data(DataConfig(spec=" ones:10 ", image_size=16, channels=3, max_train=6))
    assert shaped.train.shape == (6, 3, 16, 16) and shaped.test.shape == (20, 3, 16, 16)
    # It holds no abnormal training images to mix in or hold out.
    with pytest.raises(DataError, match="contamination=0.25 needs abnormal training images"):
        load_data(DataConfig(spec="ones:8", contamination=0.25))
    with pytest.raises(DataError, match="val_fraction=0.2 needs abnormal images"):
        load_data(DataConfig(spec="ones:8", val_fraction=0.2))
    external = load_test_set(DataConfig(spec="ones:4", image_size=8, channels=1))
    assert external.info["source"] == "ones" and len(external.test) == 8
    # The accepted specs that errors list include it.
    with pytest.raises(DataError, match=r"(?s)medmnist:NAME.*ones:N +N flat grey images"):
        load_data(DataConfig(spec="nowhere:8"))


def test_the_built_in_sources_are_asked_first_in_their_order():
    assert list(DATA_SOURCES)[:5] == ["synthetic", "medmnist", "npz", "csv", "folder"]


def test_the_command_line_reads_its_choices_from_the_registries(vflip, mean_nearest, capsys):
    """The --shift and --score-kind choices are the registries themselves, read when a flag is
    parsed and when help is shown: a class registered after the parser is built is a choice."""
    from dia.cli import build_parser, config_from_args

    parser = build_parser()
    run = parser.commands["run"]
    actions = {a.dest: a for a in run._actions}
    assert sorted(actions["detector.shift"].choices) == sorted(SHIFTS)
    assert sorted(actions["score.kind"].choices) == sorted(SCORES)
    assert {"rotation", "cutperm", "vflip"} <= set(actions["detector.shift"].choices)
    args = parser.parse_args(["run", "--shift", "vflip", "--score-kind", "mean-nearest"])
    config = config_from_args(args)
    assert config.detector.loss.shift == "vflip" and config.score.kind == "mean-nearest"
    help_text = " ".join(run.format_help().split())
    assert "rotation, cutperm, vflip" in help_text and "csi, mean-nearest" in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--shift", "sideways"])
    assert "invalid choice: 'sideways'" in capsys.readouterr().err


def test_parsing_the_registered_choices_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from dia.cli import build_parser, config_from_args\n"
        "args = build_parser().parse_args(['run', '--shift', 'cutperm', '--score-kind', 'csi'])\n"
        "config_from_args(args)\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
