"""Dissolving operators, their modules, the factory and the training cache."""

import math

import pytest
import torch

from dia.config import DiffusionConfig, replace_settings
from dia.diffusion import DiffusionModel, train_diffusion
from dia.dissolve import (
    DiffusionDissolver,
    DissolveCache,
    Dissolver,
    GaussianDissolver,
    IdentityDissolver,
    MedianDissolver,
    build_dissolver,
    diffusion_dissolve,
    gaussian_dissolve,
    identity,
    keyed_noise,
    median_dissolve,
    median_kernel,
    timestep_grid,
)


def tiny_config(**overrides) -> DiffusionConfig:
    # The noise-predicting model: the arithmetic tests below are about reading x0 from eps.
    values = dict(resolution=16, block_out_channels=(8, 16), max_seconds=None, lr=3e-3)
    values.update(prediction="epsilon", train_t_max=None, noise_draws=0)
    values.update(overrides)
    return DiffusionConfig(**values)


def untrained_model(channels: int = 1) -> DiffusionModel:
    torch.manual_seed(0)
    return DiffusionModel(tiny_config(), channels).eval()


def gradients(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Linear ramps in random directions, (n, 1, size, size) in about [0.15, 0.85]."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(n, 1, 1, generator=g) * 2 * math.pi
    offset = torch.rand(n, 1, 1, generator=g) * 0.2 + 0.4
    amp = torch.rand(n, 1, 1, generator=g) * 0.15 + 0.05
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return (offset + amp * (angle.cos() * xx + angle.sin() * yy)).unsqueeze(1)


@pytest.fixture(scope="module")
def trained_model() -> DiffusionModel:
    # About 64 steps (~1-3 s): enough for the tiny UNet to learn what noise on a ramp looks like.
    torch.manual_seed(0)
    model = DiffusionModel(tiny_config(), 1)
    config = tiny_config(epochs=8, batch_size=32)
    train_diffusion(model, gradients(256), config, device="cpu", seed=0, progress=False)
    return model


def total_variation(x: torch.Tensor) -> float:
    return float((x.diff(dim=-1).abs().mean() + x.diff(dim=-2).abs().mean()) / 2)


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


OPERATORS = {
    "gaussian": gaussian_dissolve,
    "median": median_dissolve,
    "none": identity,
    "diffusion": lambda x, t: diffusion_dissolve(x, t, untrained_model(x.shape[1])),
}


@pytest.mark.parametrize("name", sorted(OPERATORS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_operator_contract(name, dtype):
    op = OPERATORS[name]
    x = torch.rand(3, 2, 12, 20, generator=torch.Generator().manual_seed(0)).to(dtype)
    for t in (0, 60, torch.tensor([10, 50, 400])):
        out = op(x, t)
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        assert out.min() >= 0 and out.max() <= 1
        assert torch.equal(out, op(x, t))


@pytest.mark.parametrize("name", ["gaussian", "median", "diffusion"])
def test_per_item_t_matches_single_calls(name):
    op = OPERATORS[name]
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([5, 70, 300])
    out = op(x, t)
    for i in range(3):
        torch.testing.assert_close(out[i : i + 1], op(x[i : i + 1], int(t[i])))


def test_blurs_remove_more_detail_at_larger_t():
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    for op, steps in ((gaussian_dissolve, (0, 20, 50, 100, 125)), (median_dissolve, (0, 50, 100))):
        tv = [total_variation(op(x, t)) for t in steps]
        assert tv == sorted(tv, reverse=True) and len(set(tv)) == len(tv), (op.__name__, tv)
        assert tv[1] < tv[0] <= total_variation(x)
        # Both saturate: kernel 7 at most.
        assert torch.equal(op(x, steps[-1]), op(x, 900))


def test_median_kernel_schedule():
    assert [median_kernel(t) for t in (0, 1, 49, 50, 99, 100, 900)] == [1, 3, 3, 5, 5, 7, 7]
    x = torch.rand(3, 1, 8, 8)
    out = median_dissolve(x, torch.tensor([0, 40, 0]))  # t = 0 leaves an image as it is
    assert torch.equal(out[[0, 2]], x[[0, 2]]) and not torch.equal(out[1], x[1])


def test_identity_returns_input():
    x = torch.rand(2, 1, 8, 8)
    assert identity(x, 50) is x
    assert IdentityDissolver()(x, torch.tensor([1, 2])) is x


def test_bad_inputs_name_the_argument():
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="t must be >= 0"):
        gaussian_dissolve(x, -1)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        median_dissolve(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="integer"):
        gaussian_dissolve(x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="x must be"):
        gaussian_dissolve(torch.rand(8, 8), 1)
    with pytest.raises(ValueError, match="t must lie"):
        diffusion_dissolve(torch.rand(1, 1, 16, 16), 1000, untrained_model())


def test_build_dissolver():
    model = untrained_model()
    assert isinstance(build_dissolver("diffusion", model), DiffusionDissolver)
    assert isinstance(build_dissolver("gaussian"), GaussianDissolver)
    assert isinstance(build_dissolver("median"), MedianDissolver)
    assert build_dissolver("none").name == "none"
    with pytest.raises(ValueError, match="'gaussian', 'median', 'none'"):
        build_dissolver("diffusion")
    with pytest.raises(ValueError, match="'diffusion', 'gaussian', 'median', 'none'"):
        build_dissolver("blur")


def test_modules_match_functions():
    x = torch.rand(2, 1, 16, 16)
    model = untrained_model()
    assert torch.equal(DiffusionDissolver(model)(x, 40), diffusion_dissolve(x, 40, model))
    assert torch.equal(GaussianDissolver()(x, 40), gaussian_dissolve(x, 40))
    assert torch.equal(MedianDissolver()(x, 40), median_dissolve(x, 40))


def test_diffusion_dissolves_more_at_larger_t(trained_model):
    # Holds for any eps model (the eps term is scaled by sqrt(1 - abar_t)), so it checks the
    # arithmetic and the direction of t, not the training; see the next test for that.
    x = gradients(16, seed=1)
    errors = [mse(diffusion_dissolve(x, t, trained_model), x) for t in (0, 10, 100, 400)]
    assert errors == sorted(errors), errors
    assert errors[1] < 1e-3


def test_trained_diffusion_removes_noise_untrained_does_not(trained_model):
    # Noise of std 0.05 in [0, 1] is noise of std 0.1 in model space, the level of t = 26.
    # Measured over 3 seeds: the trained model cuts the error about 8x, the untrained one
    # raises it by about 15%.
    x = gradients(16, seed=1)
    noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    t = int(
        (((1 - trained_model.alphas_cumprod) / trained_model.alphas_cumprod) - 0.01).abs().argmin()
    )
    assert t == 26
    before = mse(noisy, x)
    assert mse(diffusion_dissolve(noisy, t, trained_model), x) < 0.5 * before
    assert mse(diffusion_dissolve(noisy, t, untrained_model()), x) > 0.9 * before


def test_the_default_x0_model_removes_noise():
    # The default: x0 predicted, trained on t below 200 only, where dissolving works. Whether
    # it adds detail to clean images is measured on real ones (bench/dissolvers.py): a model
    # this small and this briefly trained reproduces a smooth ramp with a little texture.
    torch.manual_seed(0)
    config = tiny_config(prediction="sample", train_t_max=200, epochs=16, batch_size=32)
    assert (config.prediction, config.train_t_max) == (DiffusionConfig().prediction, 200)
    model = DiffusionModel(config, 1)
    train_diffusion(model, gradients(256), config, device="cpu", seed=0, progress=False)
    x = gradients(16, seed=1)
    noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    assert mse(diffusion_dissolve(noisy, 26, model), x) < 0.8 * mse(noisy, x)
    untrained = DiffusionModel(config, 1)
    assert mse(diffusion_dissolve(noisy, 26, untrained), x) > mse(noisy, x)


def test_noised_dissolving_is_the_same_alone_or_in_any_batch(trained_model):
    x = gradients(6, seed=2)
    every = diffusion_dissolve(x, 60, trained_model, noise_draws=3)
    assert torch.equal(every, diffusion_dissolve(x, 60, trained_model, noise_draws=3))
    some = diffusion_dissolve(x[[4, 1]], 60, trained_model, noise_draws=3)
    torch.testing.assert_close(some, every[[4, 1]], atol=1e-6, rtol=0)
    # the noise follows each image's values, not its place: two images, two noises
    noise = keyed_noise(x, 3, (1, 16, 16))
    assert noise.shape == (3, 6, 1, 16, 16)
    assert not torch.equal(noise[:, 0], noise[:, 1]) and not torch.equal(noise[0], noise[1])
    torch.testing.assert_close(keyed_noise(x[[4]], 3, (1, 16, 16))[:, 0], noise[:, 4])


def test_noised_dissolving_averages_the_model_on_noised_images(trained_model):
    x = gradients(4, seed=5)
    y = trained_model.to_model_space(x)
    noise = keyed_noise(x, 2, tuple(y.shape[1:]))
    with torch.no_grad():
        by_hand = trained_model.denoise(y, 80, noise[0]) + trained_model.denoise(y, 80, noise[1])
    expected = trained_model.from_model_space((by_hand / 2).clamp(-1, 1), 16)
    model = DiffusionModel(tiny_config(noise_draws=2), 1)
    model.load_state_dict(trained_model.state_dict())
    torch.testing.assert_close(DiffusionDissolver(model.eval())(x, 80), expected, atol=1e-6, rtol=0)
    assert not torch.allclose(DiffusionDissolver(trained_model)(x, 80), expected, atol=1e-3)
    with pytest.raises(ValueError, match="noise_draws"):
        tiny_config(noise_draws=-1)


def test_timestep_grid():
    assert timestep_grid(30, 100, 8) == [30, 40, 50, 60, 70, 80, 90, 100]
    assert timestep_grid(30, 100, 1) == [65]
    assert timestep_grid(5, 7, 10) == [5, 6, 7]
    with pytest.raises(ValueError, match="t_min"):
        timestep_grid(50, 10, 3)
    with pytest.raises(ValueError, match="n must be"):
        timestep_grid(10, 50, 0)


@pytest.mark.parametrize("name", ["diffusion", "median"])
def test_cache_matches_direct_calls(name):
    dissolver = build_dissolver(name, untrained_model())
    images = torch.rand(10, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    grid = timestep_grid(30, 100, 3)
    cache = DissolveCache.build(dissolver, images, grid, batch_size=4)
    assert cache.images.shape == (3, 10, 1, 16, 16) and cache.images.dtype == torch.float16
    idx = torch.tensor([0, 9, 3, 3])
    for k, t in enumerate(grid):
        got = cache.lookup(idx, t)
        assert got.dtype == torch.float32 and got.shape == (4, 1, 16, 16)
        torch.testing.assert_close(got, dissolver(images[idx], t), atol=5e-4, rtol=0)
        # A t between grid points is served by the nearest one.
        assert torch.equal(
            cache.lookup(idx, torch.full((4,), t + 10)), cache.images[k, idx].float()
        )


def test_cache_sample_is_seeded_and_from_the_grid():
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    cache = DissolveCache.build(GaussianDissolver(), images, [10, 60, 200])
    idx = torch.arange(6).repeat(5)
    a = cache.sample(idx, torch.Generator().manual_seed(0))
    assert torch.equal(a, cache.sample(idx, torch.Generator().manual_seed(0)))
    options = cache.images[:, idx].float()
    assert ((options == a.unsqueeze(0)).flatten(2).all(dim=2)).any(dim=0).all()
    assert len({tuple(row) for row in (options == a.unsqueeze(0)).flatten(2).all(2).T.tolist()}) > 1
    with pytest.raises(ValueError, match="indices"):
        cache.lookup(torch.tensor([6]), 10)


class MeanDissolver(Dissolver):
    """A dissolver that learns: it blends images towards the mean normal training image,
    more at larger t; kept in a safetensors file."""

    name = "test-mean"
    learns = True

    def __init__(self, mean: torch.Tensor | None = None):
        super().__init__()
        self.mean = mean

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    def fit(self, images, *, device, seed, progress=True):
        self.mean = images.mean(dim=0, keepdim=True).to(device)
        return {"steps": 1, "epochs": 1.0, "seconds": 0.25}

    def save(self, folder):
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({"mean": self.mean.cpu().contiguous()}, str(folder / "mean.safetensors"))

    @classmethod
    def load(cls, folder, device):
        from safetensors.torch import load_file

        return cls(load_file(str(folder / "mean.safetensors"))["mean"].to(device))

    def forward(self, x, t):
        share = torch.as_tensor(t, dtype=x.dtype).clamp(0, 1000).reshape(-1, 1, 1, 1) / 1000
        return (1 - share) * x + share * self.mean.to(x)


@pytest.fixture
def mean_dissolver():
    from dia.dissolve import DISSOLVERS, register_dissolver

    register_dissolver(MeanDissolver)
    yield MeanDissolver
    del DISSOLVERS[MeanDissolver.name]


def test_a_registered_dissolver_trains_and_scores_through_the_run(mean_dissolver, tmp_path):
    import json

    from test_cli import TINY

    from dia.cli import main
    from dia.cli_args import build_parser

    # the command line names the registered dissolvers when its parser is made
    assert "test-mean" in " ".join(build_parser().commands["run"].format_help().split())
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *TINY, "--dissolve", "test-mean"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["detector"]["dissolving"]["dissolve"] == "test-mean"
    assert metrics["diffusion"] == {"kept": False, "train_s": 0.25, "steps": 1, "epochs": 1.0}
    assert (out / "diffusion" / "mean.safetensors").is_file() and 0 <= metrics["auroc"] <= 1
    assert (out / "dissolve_grid.png").is_file()
    # the saved one comes back for another command: the detector trained again with it
    assert main(["train", "--out", str(tmp_path / "again"), *TINY, "--dissolve", "test-mean"]) == 0


def test_the_detector_takes_any_dissolver_fitted_or_not(mean_dissolver):

    from dia.config import DetectorConfig, ScoreConfig
    from dia.detector import DIADetector

    images = torch.rand(16, 1, 16, 16)
    config = replace_settings(
        DetectorConfig(), dissolve="test-mean", width=4, epochs=1, batch_size=8
    )
    score = ScoreConfig(samples=1, shifts=1)
    made = DIADetector(config, score, device="cpu", progress=False).fit(images)
    assert isinstance(made.dissolver_, MeanDissolver) and made.dissolver_.fitted
    torch.testing.assert_close(made.dissolver_.mean, images.mean(0, keepdim=True))
    fitted = MeanDissolver(torch.zeros(1, 1, 16, 16))
    given = DIADetector(config, score, device="cpu", progress=False)
    assert given.fit(images, dissolver=fitted).dissolver_ is fitted  # not fitted again
    assert fitted.mean.abs().max() == 0
    other = replace_settings(config, dissolve="median")
    with pytest.raises(ValueError, match="'test-mean' dissolver was given"):
        DIADetector(other, score, device="cpu", progress=False).fit(images, dissolver=fitted)


def test_the_command_line_names_the_registered_dissolvers_without_importing_them():
    from dia.cli_args import BUILT_IN_DISSOLVERS, dissolver_names
    from dia.dissolve import DISSOLVERS

    assert tuple(DISSOLVERS) == BUILT_IN_DISSOLVERS  # dia's own, as registered
    assert dissolver_names() == tuple(DISSOLVERS)
