"""The dissolver quality measures tell removing detail from adding it."""

import pytest
import torch

from dia.config import DiffusionConfig
from dia.diffusion import DiffusionModel
from dia.dissolve import GaussianDissolver, MedianDissolver
from dia.quality import denoise_mse_ratio, detail_change, dissolver_quality, separability_auroc


def _textured(n=64, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    smooth = torch.rand(n, 1, 4, 4, generator=gen)
    base = torch.nn.functional.interpolate(smooth, size=size, mode="bilinear")
    return (base + 0.1 * torch.rand(n, 1, size, size, generator=gen)).clamp(0, 1)


def test_blurring_removes_detail_and_noise_adds_it():
    x = _textured()
    blurred = detail_change(x, GaussianDissolver()(x, 100))
    assert blurred["detail_ratio"] < 0.5 and blurred["share_added_detail"] == 0.0
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    added = detail_change(x, noisy)
    assert added["detail_ratio"] > 1.5 and added["share_added_detail"] == 1.0


def test_separability_is_chance_for_the_same_images_and_high_for_noisy_ones():
    x = _textured(128)
    same = separability_auroc(x, _textured(128, seed=5))  # other images of the same kind
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert 0.3 < same < 0.7 and separability_auroc(x, noisy) > 0.95


PREDICTIONS = ["epsilon", "sample", "v", "preconditioned"]


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_a_perfect_denoiser_has_no_error_left(prediction):
    config = DiffusionConfig(resolution=16, block_out_channels=(8, 16), prediction=prediction)
    model = DiffusionModel(config, 1)
    x = _textured(8)
    y = model.to_model_space(x)
    model.predict = lambda y_t, t: exact_target(model, y, y_t, t)
    assert denoise_mse_ratio(model, x, 50, torch.Generator().manual_seed(0)) < 1e-6


def exact_target(model, y, y_t, t):
    """What a perfect model predicts for y_t, made from the clean y: eps, x0, v, or the
    preconditioned model's correction F with x0 = c_skip y_t / sqrt(abar) + c_out F."""
    abar = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    eps = (y_t - abar.sqrt() * y) / (1 - abar).sqrt()
    v = abar.sqrt() * eps - (1 - abar).sqrt() * y
    sigma2 = (1 - abar) / abar
    skip, out = 0.25 / (sigma2 + 0.25), sigma2.sqrt() * 0.5 / (sigma2 + 0.25).sqrt()
    correction = (y - skip * y_t / abar.sqrt()) / out
    return {"epsilon": eps, "sample": y, "v": v, "preconditioned": correction}[
        model.config.prediction
    ]


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("loss", ["mse", "l1"])
def test_the_training_loss_of_a_perfect_model_is_zero(prediction, loss):
    config = DiffusionConfig(
        resolution=16, block_out_channels=(8, 16), prediction=prediction, loss=loss,
        schedule="cosine", train_t_max=200,
    )  # fmt: skip
    model = DiffusionModel(config, 1)
    y = model.to_model_space(_textured(8))
    seen = []

    def perfect(y_t, t):
        seen.append(t)
        return exact_target(model, y, y_t, t)

    model.predict = perfect
    assert model.loss(y, torch.Generator().manual_seed(0)).item() < 1e-5
    assert int(seen[0].min()) >= 0 and int(seen[0].max()) < 200  # train_t_max
    model.predict = lambda y_t, t: exact_target(model, y, y_t, t) + 0.1
    assert model.loss(y, torch.Generator().manual_seed(0)).item() > 1e-3


@pytest.mark.parametrize(
    "field, value",
    [("prediction", "noise"), ("schedule", "sigmoid"), ("loss", "huber"), ("train_t_max", 0),
     ("train_t_max", 1001)],
)  # fmt: skip
def test_diffusion_settings_are_checked(field, value):
    config = DiffusionConfig(resolution=16, block_out_channels=(8, 16), **{field: value})
    with pytest.raises(ValueError, match=field):
        DiffusionModel(config, 1)


def test_every_measure_at_every_timestep():
    x = _textured(40)
    table = dissolver_quality(MedianDissolver(), x, [30, 100])
    assert table["t"] == [30, 100] and "denoise_mse_ratio" not in table
    assert table["detail_ratio"][1] < table["detail_ratio"][0] < 1.0
    assert len(table["separability_auroc"]) == 2 and len(table["share_added_detail"]) == 2
