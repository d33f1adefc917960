"""The dissolver quality measures tell removing detail from adding it."""

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


def test_a_perfect_denoiser_has_no_error_left():
    model = DiffusionModel(DiffusionConfig(resolution=16, block_out_channels=(8, 16)), 1)
    x = _textured(8)
    y = model.to_model_space(x)

    def exact_noise(y_t, t):  # the noise that made y_t from y
        abar = model.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (y_t - abar.sqrt() * y) / (1 - abar).sqrt()

    model.predict_noise = exact_noise
    assert denoise_mse_ratio(model, x, 50, torch.Generator().manual_seed(0)) < 1e-6


def test_every_measure_at_every_timestep():
    x = _textured(40)
    table = dissolver_quality(MedianDissolver(), x, [30, 100])
    assert table["t"] == [30, 100] and "denoise_mse_ratio" not in table
    assert table["detail_ratio"][1] < table["detail_ratio"][0] < 1.0
    assert len(table["separability_auroc"]) == 2 and len(table["share_added_detail"]) == 2
