import json
import time

import numpy as np
import pytest
import torch

from dia.config import DetectorConfig, ScoreConfig, replace_settings
from dia.config_tree import flat_values
from dia.detector import DIADetector, as_images
from dia.detector_format import FORMAT_VERSION
from dia.scoring import build_bank, shifted_features

TINY = replace_settings(
    DetectorConfig(), dissolve="gaussian", width=4, batch_size=8, epochs=1, dissolve_cache_steps=0
)
SCORE = ScoreConfig(samples=2, shifts=4, features="projection", shift_weight=1.0)


@pytest.fixture(scope="module")
def fitted():
    images = torch.rand(24, 1, 16, 16)
    det = DIADetector(TINY, SCORE, device="cpu", progress=False).fit(images)
    return det, images


def test_fit_sets_learned_state(fitted):
    det, _ = fitted
    assert det.channels_ == 1 and det.image_size_ == 16
    assert det.bank_.bank.shape == (4, 24, 128)
    # the threshold lets through 95% of the (leave-one-out) training scores
    assert np.mean(det.train_scores_ >= det.threshold_) == pytest.approx(0.95, abs=0.05)


def test_the_threshold_leaves_whole_groups_out():
    from dia.scoring import csi_score

    images = torch.rand(12, 1, 16, 16).repeat_interleave(2, dim=0)  # pairs of near copies
    groups = torch.arange(12).repeat_interleave(2)  # as two slices of one volume
    det = DIADetector(TINY, SCORE, device="cpu", progress=False)
    det.fit(images, groups=groups.numpy(), keep_features=True)
    feats = det.train_features_
    by_group = csi_score(feats, det.bank_, SCORE, exclude_self=True, groups=groups).numpy()
    by_image = csi_score(feats, det.bank_, SCORE, exclude_self=True).numpy()
    np.testing.assert_allclose(det.train_scores_, by_group, rtol=1e-6)
    # Leaving more out never raises a score, and lowers those whose copy was their match.
    assert (by_group <= by_image).all() and (by_group < by_image).any()
    assert det.threshold_ == pytest.approx(float(np.quantile(by_group, det.fpr)))
    # Any labels will do, patient IDs say: the same groups, the same training scores.
    named = DIADetector(TINY, SCORE, device="cpu", progress=False)
    named.fit(images, groups=[f"patient-{g:02d}" for g in groups.tolist()])
    np.testing.assert_allclose(named.train_scores_, det.train_scores_, rtol=1e-6)
    with pytest.warns(UserWarning, match="every training image is in one group"):
        DIADetector(TINY, SCORE, device="cpu", progress=False).fit(images, groups=[7] * 24)
    with pytest.warns(UserWarning, match="in only 2 groups"):
        DIADetector(TINY, SCORE, device="cpu", progress=False).fit(images, groups=groups // 6)
    with pytest.raises(ValueError, match="groups must be 24 labels"):
        det.fit(images, groups=[0.5] * 24)


def test_an_image_scores_the_same_alone_and_in_any_batch(fitted):
    det, images = fitted
    together = det.score_samples(images[:6])
    alone = [det.score_samples(images[i : i + 1])[0] for i in range(6)]
    reordered = det.score_samples(torch.cat([images[10:13], images[:6].flip(0)]))[3:][::-1]
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reordered, together, rtol=1e-5, atol=1e-6)
    # The views still differ from image to image: two images' keys rarely agree.
    from dia.augment import image_keys

    assert len(set(image_keys(images).tolist())) > 20


def test_scores_are_deterministic_and_decisions_follow_the_threshold(fitted):
    det, images = fitted
    a, b = det.score_samples(images[:5]), det.score_samples(images[:5])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(det.decision_function(images[:5]), a - det.threshold_, rtol=1e-6)
    assert set(det.predict(images[:5]).tolist()) <= {0, 1}


def test_save_and_load_give_the_same_scores(fitted, tmp_path):
    det, images = fitted
    det.save_pretrained(tmp_path / "det")
    loaded = DIADetector.from_pretrained(tmp_path / "det", device="cpu")
    np.testing.assert_allclose(loaded.score_samples(images[:6]), det.score_samples(images[:6]),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert loaded.threshold_ == det.threshold_
    assert loaded.detector_config == det.detector_config
    # the training scores travel with it, so another operating point can be chosen later
    np.testing.assert_array_equal(loaded.train_scores_, det.train_scores_)
    assert loaded.threshold_at(det.fpr) == det.threshold_
    assert loaded.threshold_at(0.5) == pytest.approx(float(np.median(det.train_scores_)))
    assert loaded.threshold_at(0.01) < loaded.threshold_ < loaded.threshold_at(0.2)
    with pytest.raises(ValueError, match="fpr=1.5"):
        loaded.threshold_at(1.5)


def test_a_detector_saved_without_training_scores_keeps_its_own_threshold(fitted, tmp_path):
    from safetensors.torch import load_file, save_file

    det, images = fitted
    det.save_pretrained(tmp_path / "old")
    weights = tmp_path / "old" / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors["train_scores"]
    save_file(tensors, str(weights))
    loaded = DIADetector.from_pretrained(tmp_path / "old", device="cpu")
    assert loaded.threshold_ == det.threshold_
    assert loaded.predict(images[:4]).tolist() == det.predict(images[:4]).tolist()
    with pytest.raises(ValueError, match="without its training scores.*fpr=0.05"):
        loaded.threshold_at(0.1)


def save_as_format_4(det: DIADetector, folder) -> None:
    """``det`` saved as dia saved a detector up to format 4: the version in ``version``, the
    weights without a copy of the config, the detector's settings flat."""
    from safetensors.torch import save_file

    from dia.config import to_dict
    from dia.io import write_json

    state = det.net_.state_dict().items()
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in state}
    for name, tensor in det._scorer().state_dict(det.bank_).items():
        tensors[f"bank.{name}"] = tensor.contiguous()
    tensors["train_scores"] = torch.as_tensor(np.asarray(det.train_scores_)).contiguous()
    config = {
        "format": "dia-detector",
        "version": 4,
        "detector": flat_values(DetectorConfig, to_dict(det.detector_config)),
        "score": to_dict(det.score_config),
        "channels": det.channels_,
        "image_size": det.image_size_,
        "fpr": det.fpr,
        "threshold": det.threshold_,
        "seed": det.seed,
        "dicom_window": None,
    }
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    write_json(folder / "config.json", config)


def test_a_detector_saved_in_format_4_loads_and_saves_in_todays(fitted, tmp_path):
    import warnings

    det, images = fitted
    save_as_format_4(det, tmp_path / "old")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # version 4 made its views as today's: no warning
        loaded = DIADetector.from_pretrained(tmp_path / "old", device="cpu")
    np.testing.assert_array_equal(loaded.score_samples(images[:4]), det.score_samples(images[:4]))
    assert loaded.threshold_ == det.threshold_ and loaded.score_config == det.score_config
    np.testing.assert_array_equal(loaded.train_scores_, det.train_scores_)
    loaded.save_pretrained(tmp_path / "new")
    det.save_pretrained(tmp_path / "again")
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    assert config["format_version"] == FORMAT_VERSION == 5 and "version" not in config
    assert config["detector"]["network"]["width"] == det.detector_config.network.width
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "new" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_a_saved_model_is_readable_as_the_umask_allows(fitted, tmp_path):
    import os
    import stat

    det, _ = fitted
    from dia.io import write_json

    before = os.umask(0o022)  # the usual one: others may read, not write
    try:
        det.save_pretrained(tmp_path / "det")
        write_json(tmp_path / "metrics.json", {"auroc": 0.5})
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644
    mode = {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in [tmp_path / "det", *(tmp_path / "det").iterdir()]
    }
    # not the owner-only modes of the temporary files and folder the save goes through
    assert mode == {"det": 0o755, "config.json": 0o644, "model.safetensors": 0o644}


def test_a_failed_save_keeps_the_earlier_model(fitted, tmp_path, monkeypatch):
    det, _ = fitted
    det.save_pretrained(tmp_path / "det")
    before = (tmp_path / "det" / "model.safetensors").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("dia.saved.save_file", broken)
    with pytest.raises(OSError):
        det.save_pretrained(tmp_path / "det")
    assert (tmp_path / "det" / "model.safetensors").read_bytes() == before


def test_a_save_killed_between_its_renames_keeps_the_earlier_model(fitted, tmp_path):
    det, images = fitted
    det.save_pretrained(tmp_path / "det")
    # the earlier folder moved aside, the new one not yet moved in: as a kill there leaves it
    (tmp_path / "det").rename(tmp_path / ".det.old")
    loaded = DIADetector.from_pretrained(tmp_path / "det")
    assert (tmp_path / "det" / "model.safetensors").is_file()
    assert not (tmp_path / ".det.old").exists()
    np.testing.assert_array_equal(loaded.score_samples(images[:4]), det.score_samples(images[:4]))


def test_two_loaders_finding_an_interrupted_save_both_get_the_model(tmp_path, monkeypatch):
    import os

    from dia.io import saved_dir

    (tmp_path / ".det.old").mkdir()
    real = os.replace

    def beaten(src, dst):  # another process moved the folder back just before this one
        real(src, dst)
        raise FileNotFoundError(src)

    monkeypatch.setattr("dia.io.os.replace", beaten)
    assert saved_dir(tmp_path / "det") == tmp_path / "det"
    assert (tmp_path / "det").is_dir()


def test_corrupt_or_foreign_folders_are_refused(fitted, tmp_path):
    det, _ = fitted
    det.save_pretrained(tmp_path / "det")
    (tmp_path / "det" / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="model.safetensors"):
        DIADetector.from_pretrained(tmp_path / "det")
    with pytest.raises(FileNotFoundError):
        DIADetector.from_pretrained(tmp_path / "nothing")


def test_wrong_input_is_named(fitted):
    det, _ = fitted
    with pytest.raises(ValueError, match="3 channels"):
        det.score_samples(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="16x16"):
        det.score_samples(torch.rand(2, 1, 32, 32))
    with pytest.raises(RuntimeError, match="not fitted"):
        DIADetector().score_samples(torch.rand(2, 1, 16, 16))


def test_as_images_accepts_common_layouts():
    u8 = np.full((2, 8, 8), 255, dtype=np.uint8)
    assert as_images(u8).shape == (2, 1, 8, 8) and as_images(u8).max() == 1.0
    assert as_images(np.zeros((2, 8, 8, 3))).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        as_images(torch.full((1, 1, 8, 8), 2.0))
    with pytest.raises(ValueError, match="shape"):
        as_images(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="square; got 8x6"):
        as_images(torch.zeros(2, 1, 8, 6))
    with pytest.raises(ValueError, match="square"):
        DIADetector().fit(torch.rand(4, 1, 16, 12))
    with pytest.raises(ValueError, match="score samples=-1"):  # before any training
        DIADetector(TINY, replace_settings(SCORE, samples=-1)).fit(torch.rand(4, 1, 16, 16))


def test_a_deadline_ends_training_in_time_for_the_bank():
    images = torch.rand(24, 1, 16, 16)
    long = replace_settings(TINY, epochs=100_000, max_seconds=None)
    det = DIADetector(long, SCORE, device="cpu", progress=False)
    det.fit(images, deadline=time.perf_counter() + 2.0)
    # 100k epochs would never end: the deadline stopped training, and time was kept for the bank
    assert det.history_["epochs"] < 100_000
    assert det.timings_["bank_estimate_s"] > 0
    assert hasattr(det, "bank_")


def test_kept_training_features_are_the_banks_own(fitted):
    det, images = fitted
    assert not hasattr(det, "train_features_")  # kept only when asked for
    kept = DIADetector(TINY, SCORE, device="cpu", progress=False, seed=det.seed)
    kept.fit(images, keep_features=True)
    feats = kept.train_features_
    assert feats.h.shape[:2] == feats.z.shape[:2] == (4, 24)
    again = shifted_features(
        kept.net_, images, TINY, SCORE, torch.device("cpu"), kept._runtime()[1]
    )
    for name in ("h", "z", "logits"):
        torch.testing.assert_close(getattr(feats, name), getattr(again, name))
    torch.testing.assert_close(build_bank(feats, SCORE).bank, kept.bank_.bank)
    kept.fit(images[:12])
    assert not hasattr(kept, "train_features_")  # a refit without keeping drops the old ones


def test_a_spent_budget_is_a_clear_error(monkeypatch):
    det = DIADetector(TINY, SCORE, device="cpu", progress=False)
    with pytest.raises(ValueError, match="budget is spent"):
        det.fit(torch.rand(24, 1, 16, 16), deadline=time.perf_counter() - 1.0)
    # time left, but not for the feature bank: said before any training
    monkeypatch.setattr("dia.detector.estimate_seconds", lambda *args: 3600.0)
    with pytest.raises(ValueError, match=r"no time to train the detector: \d+ s are left, and "):
        det.fit(torch.rand(24, 1, 16, 16), deadline=time.perf_counter() + 60.0)
    assert not hasattr(det, "net_")


def test_the_score_config_shift_weight_is_used(fitted):
    det, images = fitted
    full = det.score_samples(images[:6])
    try:
        det.score = replace_settings(SCORE, shift_weight=0.0)
        sim_only = det.score_samples(images[:6])
    finally:
        det.score = SCORE
    assert not np.allclose(full, sim_only)


def test_a_version_1_detector_keeps_the_csi_score(fitted, tmp_path):
    det, images = fitted
    det.save_pretrained(tmp_path / "v1")
    config = json.loads((tmp_path / "v1" / "config.json").read_text())
    config["version"] = 1
    for key in ("features", "cosine", "shift_weight"):
        del config["score"][key]
    (tmp_path / "v1" / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="earlier dia"):
        loaded = DIADetector.from_pretrained(tmp_path / "v1", device="cpu")
    assert loaded.score_config.features == "projection"
    assert loaded.score_config.shift_weight == 1.0
    np.testing.assert_allclose(loaded.score_samples(images[:4]), det.score_samples(images[:4]),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_a_version_2_detector_loads_with_cifars_stem_and_says_how_it_was_made(fitted, tmp_path):
    det, images = fitted
    det.save_pretrained(tmp_path / "v2")
    config = json.loads((tmp_path / "v2" / "config.json").read_text())
    config["version"] = 2
    # its settings as version 2 wrote them: the detector's in one flat object
    config["detector"] = flat_values(DetectorConfig, config["detector"])
    del config["detector"]["stem_stride"], config["score"]["shifts"]
    (tmp_path / "v2" / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="flipped after they were shifted"):
        loaded = DIADetector.from_pretrained(tmp_path / "v2", device="cpu")
    assert loaded.detector_config.network.stem_stride == 1 and loaded.score_config.shifts == 4
    np.testing.assert_allclose(loaded.score_samples(images[:4]), det.score_samples(images[:4]),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_a_version_3_detector_says_its_colour_jitter_was_drawn_per_shift(fitted, tmp_path):
    det, images = fitted
    det.save_pretrained(tmp_path / "v3")
    config = json.loads((tmp_path / "v3" / "config.json").read_text())
    config["version"] = 3
    (tmp_path / "v3" / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="colour jitter for each shift"):
        loaded = DIADetector.from_pretrained(tmp_path / "v3", device="cpu")
    assert loaded.score_config == det.score_config


def test_a_strided_stem_and_one_plain_view_of_one_shift_round_trip(tmp_path):
    images = torch.rand(16, 1, 16, 16)
    config = replace_settings(TINY, stem_stride=2)
    score = ScoreConfig(samples=0, shifts=1)
    det = DIADetector(config, score, device="cpu", progress=False).fit(images)
    assert det.net_.encoder.stem[0].stride == (2, 2)
    assert det.bank_.bank.shape == (1, 16, 32)  # one shift: the images as they are
    det.save_pretrained(tmp_path / "det")
    loaded = DIADetector.from_pretrained(tmp_path / "det", device="cpu")
    assert loaded.detector_config.network.stem_stride == 2 and loaded.score_config.shifts == 1
    np.testing.assert_allclose(loaded.score_samples(images[:4]), det.score_samples(images[:4]),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_an_image_normalised_detector_round_trips(tmp_path):
    images = torch.rand(16, 1, 16, 16)
    config = replace_settings(TINY, input_norm="image")
    det = DIADetector(config, SCORE, device="cpu", progress=False).fit(images)
    det.save_pretrained(tmp_path / "det")
    loaded = DIADetector.from_pretrained(tmp_path / "det", device="cpu")
    assert loaded.detector_config.network.input_norm == "image"
    np.testing.assert_allclose(loaded.score_samples(images[:4]), det.score_samples(images[:4]),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_a_detector_saved_before_input_norm_loads_with_the_fixed_input(fitted, tmp_path):
    det, images = fitted
    det.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    config["detector"] = flat_values(DetectorConfig, config["detector"])  # as it was then
    del config["detector"]["input_norm"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    loaded = DIADetector.from_pretrained(tmp_path / "old", device="cpu")
    assert loaded.detector_config.network.input_norm == "fixed"
    np.testing.assert_allclose(loaded.score_samples(images[:4]), det.score_samples(images[:4]),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_anomaly_maps_are_finite_deterministic_and_checked(fitted):
    det, images = fitted
    maps = det.anomaly_map(images[:2], patch=4, stride=2)
    assert maps.shape == (2, 16, 16) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and np.abs(maps).max() > 0
    np.testing.assert_array_equal(maps, det.anomaly_map(images[:2], patch=4, stride=2))
    # an image's map does not depend on the other images it is mapped with
    np.testing.assert_allclose(det.anomaly_map(images[1:2], 4, 2)[0], maps[1], atol=1e-5)
    assert det.anomaly_map(images[:1].numpy()).shape == (1, 16, 16)  # default patch and stride
    with pytest.raises(ValueError, match="patch=32"):
        det.anomaly_map(images[:1], patch=32)
    with pytest.raises(ValueError, match="stride=9"):
        det.anomaly_map(images[:1], patch=8, stride=9)
    with pytest.raises(ValueError, match="16x16"):
        det.anomaly_map(torch.rand(1, 1, 8, 8))


def test_fitting_with_diffusion_twice_gives_the_same_scores():
    from dia.config import DiffusionConfig

    images = torch.rand(24, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    diffusion = DiffusionConfig(resolution=16, block_out_channels=(8, 16), epochs=1)
    config = replace_settings(TINY, dissolve="diffusion", dissolve_cache_steps=2)

    def fit_and_score():
        torch.manual_seed(int(time.time_ns() % 2**31))  # whatever the global state is
        det = DIADetector(config, SCORE, diffusion, device="cpu", precision="fp32", seed=7)
        return det.fit(images).score_samples(images[:6])

    np.testing.assert_array_equal(fit_and_score(), fit_and_score())


def test_a_clone_is_unfitted_with_equal_params_that_set_params_changes(fitted):
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    det, images = fitted
    copy = clone(det)
    assert copy.get_params(deep=False) == det.get_params(deep=False)
    assert copy.get_params() == det.get_params()  # with every setting of the configs
    assert det.get_params()["detector__width"] == 4 and det.get_params()["diffusion__epochs"] == 30
    assert copy.detector == det.detector and copy.detector is not det.detector
    assert not [name for name in vars(copy) if name.endswith("_")]
    with pytest.raises(NotFittedError):
        check_is_fitted(copy)
    check_is_fitted(det)
    with pytest.raises(RuntimeError, match="not fitted"):
        copy.score_samples(images[:2])
    # a parameter set is the one fitting uses; the detector cloned keeps its own
    assert copy.set_params(detector__width=8, fpr=0.1) is copy
    assert copy.detector_config == replace_settings(TINY, width=8) and copy.fpr == 0.1
    assert det.detector_config.network.width == 4 and det.fpr == 0.05
    copy.fit(images)
    assert copy.net_.width == 8 and det.net_.width == 4
    assert copy.threshold_ == pytest.approx(float(np.quantile(copy.train_scores_, 0.1)))
    # whole configs as well; they go first, single settings on top
    other = DIADetector().set_params(score__samples=0, score=SCORE)
    assert other.score_config == replace_settings(SCORE, samples=0)


def test_set_params_names_an_unknown_parameter_and_sets_nothing():
    det = DIADetector(TINY, SCORE)
    with pytest.raises(ValueError, match="widht=8; expected a parameter of DIADetector"):
        det.set_params(widht=8)
    with pytest.raises(ValueError, match="detector__widht=8"):
        det.set_params(fpr=0.2, detector__widht=8)
    with pytest.raises(ValueError, match="network__width=8"):
        det.set_params(network__width=8)
    assert det.fpr == 0.05 and det.detector is TINY


def test_fit_ignores_y_and_trains_on_x_alone(fitted):
    from dia.config import DiffusionConfig
    from dia.diffusion import DiffusionModel

    det, images = fitted
    labelled = DIADetector(TINY, SCORE, device="cpu", progress=False)
    assert labelled.fit(images, np.ones(len(images))) is labelled  # y: "all abnormal", unused
    np.testing.assert_allclose(labelled.train_scores_, det.train_scores_, rtol=1e-5, atol=1e-6)
    assert labelled.threshold_ == pytest.approx(det.threshold_, rel=1e-5, abs=1e-6)
    # the scikit-learn order, (X, y, groups): groups third, each image scored against the
    # other groups (its copy left out)
    from dia.scoring import csi_score

    pairs, groups = images[:12].repeat_interleave(2, dim=0), torch.arange(24) // 2
    grouped = DIADetector(TINY, SCORE, device="cpu", progress=False)
    grouped.fit(pairs, None, groups.numpy(), keep_features=True)
    feats, bank = grouped.train_features_, grouped.bank_
    by_group = csi_score(feats, bank, SCORE, exclude_self=True, groups=groups).numpy()
    np.testing.assert_allclose(grouped.train_scores_, by_group, rtol=1e-6)
    # a diffusion model passed where y now is would be ignored silently: refused
    model = DiffusionModel(DiffusionConfig(resolution=16, block_out_channels=(8, 16)), 1)
    with pytest.raises(TypeError, match="diffusion_model="):
        labelled.fit(images, model)
