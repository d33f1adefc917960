"""A data set's diffusion model is trained once and kept for every later run on it."""

import json
import warnings

import pytest
import torch
from test_cli import TINY

from dia.cli import main
from dia.config import DiffusionConfig
from dia.diffusion import DiffusionModel
from dia.diffusion.cache import cache_root, load_cached, model_dir, model_key, store

SMALL = DiffusionConfig(resolution=16, block_out_channels=(8, 16), epochs=1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("DIA_CACHE", str(folder))
    return folder


def test_the_key_follows_the_images_the_settings_and_the_seed():
    images = torch.rand(5, 1, 16, 16)
    key = model_key(images, SMALL, 1, 0)
    assert key == model_key(images.clone(), SMALL, 1, 0)
    changed = images.clone()
    changed[3, 0, 7, 7] += 1e-3
    others = {
        model_key(changed, SMALL, 1, 0),
        model_key(images[:4], SMALL, 1, 0),
        model_key(images, DiffusionConfig(resolution=16, block_out_channels=(8, 16)), 1, 0),
        model_key(images, SMALL, 1, 1),
        model_key(images.expand(-1, 3, -1, -1), SMALL, 3, 0),
    }
    assert key not in others and len(others) == 5
    # how a model dissolves is not how it trains: one kept model serves every way
    dissolving = DiffusionConfig(resolution=16, block_out_channels=(8, 16), epochs=1, noise_draws=4)
    assert model_key(images, dissolving, 1, 0) == key


def test_a_kept_model_comes_back_whole(cache):
    model = DiffusionModel(SMALL, 1, seed=0)
    assert load_cached("0" * 32) is None  # nothing kept yet
    assert store(model, {"steps": 3, "seconds": 1.5}, "a" * 32) == model_dir("a" * 32)
    loaded, history = load_cached("a" * 32)
    assert history == {"steps": 3, "seconds": 1.5}
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_a_damaged_kept_model_is_ignored_with_a_warning(cache):
    store(DiffusionModel(SMALL, 1, seed=0), {}, "b" * 32)
    (model_dir("b" * 32) / "model.safetensors").write_bytes(b"not weights")
    with pytest.warns(UserWarning, match="ignoring the kept diffusion model"):
        assert load_cached("b" * 32) is None


def test_keeping_is_off_with_dia_cache_off(monkeypatch):
    monkeypatch.setenv("DIA_CACHE", "off")
    assert cache_root() is None and model_dir("c" * 32) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store(DiffusionModel(SMALL, 1, seed=0), {}, "c" * 32) is None
    assert load_cached("c" * 32) is None


def test_a_second_run_on_the_same_data_takes_the_kept_model(cache, tmp_path):
    first, second, other = tmp_path / "first", tmp_path / "second", tmp_path / "other"
    assert main(["run", "--out", str(first), *TINY]) == 0
    assert main(["run", "--out", str(second), *TINY]) == 0
    assert main(["run", "--out", str(other), *TINY, "--diffusion-lr", "1e-3"]) == 0
    made = [json.loads((f / "metrics.json").read_text()) for f in (first, second, other)]
    assert [m["diffusion"]["kept"] for m in made] == [False, True, False]
    # the one-time cost is the first run's, recorded again by the run that took the model
    assert made[1]["diffusion"]["train_s"] == made[0]["diffusion"]["train_s"] > 0
    assert made[1]["diffusion"]["steps"] == made[0]["diffusion"]["steps"] > 0
    assert made[1]["auroc"] == made[0]["auroc"]  # the same model, the same detector
    assert len(list((cache / "diffusion").iterdir())) == 2
    # a run that dissolves otherwise takes the same model and saves it with its own setting
    noised = tmp_path / "noised"
    assert main(["run", "--out", str(noised), *TINY, "--diffusion-noise-draws", "2"]) == 0
    assert json.loads((noised / "metrics.json").read_text())["diffusion"]["kept"]
    assert DiffusionModel.from_pretrained(noised / "diffusion").config.noise_draws == 2
    assert DiffusionModel.from_pretrained(second / "diffusion").config.noise_draws == 0
    weights = [
        DiffusionModel.from_pretrained(f / "diffusion").state_dict() for f in (first, second)
    ]
    for name, value in weights[0].items():
        assert torch.equal(weights[1][name], value), name
    report = (second / "report.html").read_text()
    assert "kept from an earlier run on the same images: trained" in report
