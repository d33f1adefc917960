"""The dissolving DDPM: model space, schedule arithmetic, save/load and training."""

import json

import pytest
import torch

from dia.config import DiffusionConfig
from dia.diffusion import DiffusionModel, train_diffusion
from dia.diffusion.model import CONFIG_NAME, WEIGHTS_NAME, norm_groups


def tiny_config(**overrides) -> DiffusionConfig:
    values = dict(
        resolution=16,
        block_out_channels=(8, 16),
        epochs=3,
        max_seconds=None,
        batch_size=16,
        lr=3e-3,
    )
    values.update(overrides)
    return DiffusionConfig(**values)


def tiny_model(channels: int = 1, seed: int = 0, **overrides) -> DiffusionModel:
    torch.manual_seed(seed)
    return DiffusionModel(tiny_config(**overrides), channels).eval()


def smooth_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    slope = torch.rand(n, 1, 1, 1, generator=g) * 0.6
    return (0.2 + slope * ramp.view(1, 1, 1, size)).expand(n, 1, size, size).contiguous()


def test_norm_groups_divide_every_width():
    assert norm_groups((32, 64, 64)) == 32
    assert norm_groups((8, 16)) == 8
    assert norm_groups((12, 24)) == 12


@pytest.mark.parametrize("attention", [False, True])
def test_predict_shape(attention):
    model = DiffusionModel(tiny_config(), channels=3, attention=attention)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert model.predict(x, 5).shape == (2, 3, 16, 16)
    assert model.predict(x, torch.tensor([0, 999])).shape == (2, 3, 16, 16)


def test_schedule_is_linear_ddpm():
    model = tiny_model()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    expected = torch.cumprod(1 - betas, 0).float()
    assert torch.allclose(model.alphas_cumprod, expected, atol=1e-6)
    assert model.alphas_cumprod.shape == (1000,)


def test_pad_round_trip_is_exact():
    model = tiny_model(resolution=32, block_out_channels=(8, 16))
    x = torch.rand(3, 1, 28, 28)
    y = model.to_model_space(x)
    assert y.shape == (3, 1, 32, 32)
    assert y.min() >= -1 and y.max() <= 1
    # Reflect padding: the row 2 pixels outside the image mirrors row 1 inside it.
    assert torch.equal(y[..., 0, 2:-2], y[..., 4, 2:-2])
    assert torch.equal(model.from_model_space(y, 28), x)


def test_resize_path_keeps_range_and_size():
    model = tiny_model()
    x = torch.rand(2, 1, 40, 24)
    y = model.to_model_space(x)
    assert y.shape == (2, 1, 16, 16)
    back = model.from_model_space(y * 3, (40, 24))
    assert back.shape == (2, 1, 40, 24)
    assert back.min() >= 0 and back.max() <= 1


def test_bad_inputs_name_the_argument():
    model = tiny_model()
    with pytest.raises(ValueError, match="channels"):
        model.to_model_space(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="t must lie"):
        model.predict(torch.zeros(1, 1, 16, 16), 1000)
    with pytest.raises(ValueError, match="shape"):
        model.predict(torch.zeros(2, 1, 16, 16), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="resolution"):
        DiffusionModel(tiny_config(resolution=15), 1)
    with pytest.raises(ValueError, match="channels"):
        DiffusionModel(tiny_config(), 0)


def test_loss_is_seeded_scalar():
    model = tiny_model()
    x0 = smooth_images(4) * 2 - 1
    a = model.loss(x0, generator=torch.Generator().manual_seed(1))
    b = model.loss(x0, generator=torch.Generator().manual_seed(1))
    assert a.dim() == 0 and a.item() > 0
    assert torch.equal(a, b)


def test_save_load_round_trip(tmp_path):
    model = tiny_model(seed=3)
    model.save_pretrained(tmp_path / "ddpm")
    loaded = DiffusionModel.from_pretrained(tmp_path / "ddpm")
    assert loaded.config == model.config
    assert loaded.channels == 1 and not loaded.training
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    t = torch.tensor([3, 400])
    with torch.no_grad():
        assert torch.equal(loaded.predict(x, t), model.predict(x, t))
    saved = json.loads((tmp_path / "ddpm" / CONFIG_NAME).read_text())
    assert saved["channels"] == 1 and saved["format_version"] == 1
    assert saved["block_out_channels"] == [8, 16]
    # The atomic save leaves no temporary files behind.
    assert sorted(p.name for p in (tmp_path / "ddpm").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def test_corrupt_or_missing_files_are_named(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=str(weights)):
        DiffusionModel.from_pretrained(tmp_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=str(weights)):
        DiffusionModel.from_pretrained(tmp_path)
    other = tmp_path / "other"
    tiny_model().save_pretrained(other)
    (other / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=str(other / CONFIG_NAME)):
        DiffusionModel.from_pretrained(other)
    with pytest.raises(FileNotFoundError, match="missing"):
        DiffusionModel.from_pretrained(tmp_path / "nowhere")


def test_weights_from_another_save_are_rejected(tmp_path):
    tiny_model().save_pretrained(tmp_path / "a")
    tiny_model(block_out_channels=(16, 16)).save_pretrained(tmp_path / "b")
    (tmp_path / "b" / WEIGHTS_NAME).replace(tmp_path / "a" / WEIGHTS_NAME)
    with pytest.raises(ValueError, match="different saves"):
        DiffusionModel.from_pretrained(tmp_path / "a")


def save_as_format_1(model: DiffusionModel, folder) -> None:
    """``model`` saved as dia saved a diffusion model in format 1: no ``format`` in its
    config, the weights with a copy of the whole config."""
    from safetensors.torch import save_file

    from dia.config import to_dict

    values = {**to_dict(model.config), "channels": model.channels, "attention": model.attention}
    text = json.dumps({**values, "format_version": 1}, indent=2, sort_keys=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    folder.mkdir()
    save_file(weights, str(folder / WEIGHTS_NAME), metadata={"dia_config": text})
    (folder / CONFIG_NAME).write_text(text + "\n")


def test_a_model_saved_in_format_1_loads_and_its_mixed_folders_are_refused(tmp_path):
    model = tiny_model(seed=3)
    save_as_format_1(model, tmp_path / "old")
    loaded = DiffusionModel.from_pretrained(tmp_path / "old")
    assert loaded.config == model.config and loaded.channels == 1 and not loaded.attention
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.predict(x, 5), model.predict(x, 5))
    save_as_format_1(tiny_model(block_out_channels=(16, 16)), tmp_path / "other")
    (tmp_path / "other" / WEIGHTS_NAME).replace(tmp_path / "old" / WEIGHTS_NAME)
    with pytest.raises(ValueError, match="different saves"):
        DiffusionModel.from_pretrained(tmp_path / "old")


def test_a_folder_of_another_kind_is_named(tmp_path):
    tiny_model().save_pretrained(tmp_path / "ddpm")
    config = json.loads((tmp_path / "ddpm" / CONFIG_NAME).read_text())
    assert config["format"] == "dia-diffusion-model"
    (tmp_path / "ddpm" / CONFIG_NAME).write_text(json.dumps({**config, "format": "dia-detector"}))
    with pytest.raises(ValueError, match="does not hold a dia diffusion model"):
        DiffusionModel.from_pretrained(tmp_path / "ddpm")


def test_training_reduces_loss_and_is_seeded():
    images = smooth_images(64, seed=1)
    config = tiny_config(epochs=4)
    eval_x0 = smooth_images(32, seed=2) * 2 - 1

    def eval_loss(model):
        with torch.no_grad():
            return model.loss(eval_x0, generator=torch.Generator().manual_seed(0)).item()

    model = tiny_model(seed=0)
    before = eval_loss(model)
    history = train_diffusion(model, images, config, device="cpu", seed=0, progress=False)
    assert eval_loss(model) < 0.5 * before
    assert history["steps"] == 16 and history["epochs"] == 4
    assert len(history["loss"]) == 4 and history["loss"][-1] < history["loss"][0]
    assert history["images_per_s"] > 0 and history["seconds"] > 0
    assert not model.training

    again = tiny_model(seed=0)
    train_diffusion(again, images, config, device="cpu", seed=0, progress=False)
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_training_stops_at_max_seconds():
    lines = []
    model = tiny_model()
    config = tiny_config(epochs=100, max_seconds=1e-6)
    history = train_diffusion(
        model, smooth_images(32), config, device="cpu", seed=0, progress=False, log=lines.append
    )
    assert history["steps"] == 1
    assert history["epochs"] == 0.5
    assert len(lines) == 1 and "loss" in lines[0]


def test_training_rejects_bad_settings():
    model = tiny_model()
    with pytest.raises(ValueError, match="max_seconds"):
        train_diffusion(model, smooth_images(4), tiny_config(max_seconds=0), device="cpu", seed=0)
    with pytest.raises(ValueError, match="images"):
        train_diffusion(model, torch.rand(4, 16, 16), tiny_config(), device="cpu", seed=0)


def test_a_seed_fixes_the_initial_weights_and_leaves_the_global_rng_alone():
    torch.manual_seed(1)
    a = DiffusionModel(tiny_config(), 1, seed=3)
    state = torch.random.get_rng_state()
    b = DiffusionModel(tiny_config(), 1, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(x, y)
    other = DiffusionModel(tiny_config(), 1, seed=4)
    assert any(
        not torch.equal(x, y) for x, y in zip(a.parameters(), other.parameters(), strict=True)
    )


def test_a_model_saved_before_the_prediction_settings_predicts_the_noise(tmp_path):
    from dia.config import to_dict

    # eps, linear, mse, every timestep, the clean image as x_t: the only model there was
    model = tiny_model(seed=4, prediction="epsilon", train_t_max=None, noise_draws=0)
    save_as_format_1(model, tmp_path / "old")
    values = json.loads((tmp_path / "old" / CONFIG_NAME).read_text())
    for name in ("prediction", "schedule", "loss", "train_t_max", "noise_draws"):
        del values[name]
    text = json.dumps(values, indent=2, sort_keys=True)
    (tmp_path / "old" / CONFIG_NAME).write_text(text + "\n")
    from safetensors.torch import save_file

    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp_path / "old" / WEIGHTS_NAME), metadata={"dia_config": text})
    loaded = DiffusionModel.from_pretrained(tmp_path / "old")
    assert to_dict(loaded.config) == to_dict(model.config)
    assert loaded.config.prediction == "epsilon" and loaded.config.train_t_max is None


def test_dissolving_takes_a_clean_image_as_the_noisy_one_without_noise():
    """An x0-predicting model is given the image itself as x_t; a preconditioned one is given
    it as the noisy image of its own coordinates (x_t = sqrt(abar) y), so that with a UNet
    that adds nothing it returns c_skip y: all of y at t = 0, less of it the larger t."""
    y = torch.rand(2, 1, 16, 16) * 2 - 1
    seen = {}
    sample = DiffusionModel(DiffusionConfig(resolution=16, block_out_channels=(8, 16)), 1)
    sample.predict = lambda x_t, t: seen.setdefault("x_t", x_t)
    assert torch.equal(sample.dissolve(y, 100), y) and torch.equal(seen["x_t"], y)
    config = DiffusionConfig(resolution=16, block_out_channels=(8, 16), prediction="preconditioned")
    pre = DiffusionModel(config, 1)
    pre.predict = lambda x_t, t: torch.zeros_like(x_t)
    kept = [float(pre.dissolve(y, t).div(y).mean()) for t in (0, 30, 100, 400)]
    assert kept[0] > 0.999 and kept == sorted(kept, reverse=True) and kept[-1] < 0.1
    abar = float(pre.alphas_cumprod[100])
    skip = 0.25 / ((1 - abar) / abar + 0.25)
    assert torch.allclose(pre.dissolve(y, 100), skip * y, atol=1e-6)
