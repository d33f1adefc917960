"""Dissolving operators (docs/method.md, section 1): remove fine detail, more of it at larger t.

Every operator takes images x (B, C, H, W) float in [0, 1] and a timestep t (an int, or a
LongTensor (B,) with one value per image) and returns a deterministic result of the same shape,
dtype and device, in [0, 1]. Each exists as a function and as a :class:`Dissolver` module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from kornia.filters import gaussian_blur2d, median_blur
from torch import nn

from . import distributed
from .augment import image_keys
from .checkpoint import Checkpointing
from .config import DiffusionConfig
from .diffusion.cache import cache_root, load_cached, model_dir, model_key, store
from .diffusion.model import DiffusionModel
from .diffusion.train import train_diffusion
from .registry import Registry

BLUR_KERNEL = 7
# Gaussian control: sigma = t / 50 (t = 30 -> 0.6, 100 -> 2), floored so t = 0 stays a
# near-identity, capped at 2.5 (t = 125): beyond it the 7x7 kernel is so truncated that it
# turns into a box blur whose side lobes pass *more* fine detail (measured total variation of
# noise images rises again from sigma 3).
SIGMA_PER_STEP = 1 / 50
SIGMA_MIN = 0.1
SIGMA_MAX = 2.5


def diffusion_dissolve(
    x: torch.Tensor, t: int | torch.Tensor, model: DiffusionModel, noise_draws: int | None = None
) -> torch.Tensor:
    """The model's one-step x0 in [0, 1] of images x (B, C, H, W) in [0, 1]: with
    ``noise_draws`` 0, x taken as the noisy x_t (no noise added: :meth:`DiffusionModel.dissolve`);
    with K >= 1, the mean of the K estimates from x noised to step t for real
    (:meth:`DiffusionModel.denoise`) with the noise of :func:`keyed_noise`, so that an image's
    result is still the same at every call, alone or in any batch. None: the model's own
    setting (``config.noise_draws``).

    Computed on the model's device, returned on x's device and dtype.
    """
    _check_input(x)
    with torch.no_grad():
        dtype = next(model.parameters()).dtype
        y = model.to_model_space(x.to(device=model.device, dtype=dtype))
        if noise_draws is None:
            noise_draws = model.config.noise_draws
        if noise_draws == 0:
            x0 = model.dissolve(y, t)
        else:
            noise = keyed_noise(x, noise_draws, tuple(y.shape[1:])).to(y)
            x0 = sum(model.denoise(y, t, n) for n in noise) / noise_draws
        out = model.from_model_space(x0.clamp(-1.0, 1.0), tuple(x.shape[-2:]))
    return out.to(device=x.device, dtype=x.dtype)


# Seeds of :func:`keyed_noise`: an image's key among this many.
NOISE_SEEDS = 2**62


def keyed_noise(x: torch.Tensor, draws: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(draws, B, *shape) standard normal noise for images x (B, ...): image n's from a
    generator seeded with a hash of its own values (:func:`~dia.augment.image_keys`), so the
    same image gets the same noise whatever else is in the batch."""
    keys = image_keys(x, rows=NOISE_SEEDS).tolist()
    out = torch.empty(len(keys), draws, *shape)
    generator = torch.Generator()
    for n, key in enumerate(keys):
        torch.randn((draws, *shape), generator=generator.manual_seed(key), out=out[n])
    return out.transpose(0, 1)


def gaussian_dissolve(x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
    """Gaussian blur of x (B, C, H, W) in [0, 1], kernel 7, sigma = t / 50 within [0.1, 2.5]."""
    _check_input(x)
    steps = _per_item(t, x.shape[0]).to(device=x.device, dtype=torch.float32)
    sigma = (steps * SIGMA_PER_STEP).clamp(SIGMA_MIN, SIGMA_MAX)
    out = gaussian_blur2d(x.float(), BLUR_KERNEL, sigma[:, None].expand(-1, 2).contiguous())
    return out.clamp(0.0, 1.0).to(x.dtype)


def median_kernel(t: int) -> int:
    """Median-blur kernel size for timestep t: 1 (the image as it is) for t = 0, 3 for t < 50,
    5 for t < 100, 7 from 100."""
    if t == 0:
        return 1
    if t < 50:
        return 3
    return 5 if t < 100 else 7


def median_dissolve(x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
    """Median blur of x (B, C, H, W) in [0, 1], kernel size from :func:`median_kernel` per item."""
    _check_input(x)
    steps = _per_item(t, x.shape[0])
    kernels = 3 + 2 * (steps >= 50).long() + 2 * (steps >= 100).long()  # as median_kernel
    kernels[steps == 0] = 1
    out = x.clone()  # kernel 1: the image as it is
    # Items are grouped by kernel size: at most three filter calls per batch.
    for k in kernels.unique().tolist():
        if k > 1:
            rows = (kernels == k).nonzero().flatten().to(x.device)
            out[rows] = median_blur(x[rows].float(), k).to(x.dtype)
    return out


def identity(x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
    """No dissolving (plain CSI): returns x (B, C, H, W) itself."""
    _check_input(x)
    _per_item(t, x.shape[0])
    return x


class Dissolver(nn.Module):
    """Base class: ``forward(x, t)`` dissolves images (B, C, H, W) in [0, 1]; ``name`` names it
    in :data:`DISSOLVERS`. A dissolver that ``learns`` is fitted to normal images
    (:meth:`fit`) before it dissolves, and saved (:meth:`save`) and loaded (:meth:`load`) with
    a run; the others are ready as made. One that is also ``resumable`` checkpoints its
    fitting (``fit(..., checkpoint=...)``), which ``dia resume`` continues."""

    name: str = ""
    learns: bool = False
    resumable: bool = False

    @classmethod
    def create(cls, diffusion: DiffusionConfig | None = None) -> Dissolver:
        """An unfitted dissolver with the run's settings (``diffusion``: the diffusion model's,
        which a learning dissolver may read)."""
        return cls()

    @property
    def fitted(self) -> bool:
        """Whether it can dissolve: always, for one that does not learn."""
        return True

    def fit(self, images: torch.Tensor, *, device, seed: int, progress: bool = True) -> dict:
        """Fit to normal images (N, C, H, W) in [0, 1]; returns what the fitting did (nothing
        for one that does not learn). One that is ``resumable`` also takes ``checkpoint`` (a
        :class:`~dia.checkpoint.Checkpointing`): it saves its fitting there as it goes and
        continues an interrupted one."""
        return {}

    def save(self, folder: Path) -> None:
        raise NotImplementedError(f"the {self.name!r} dissolver learns nothing to save")

    @classmethod
    def load(cls, folder: Path, device) -> Dissolver:
        raise NotImplementedError(f"the {cls.name!r} dissolver learns nothing to load")

    def forward(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


# Every dissolver by name, in the order the command line lists them.
DISSOLVERS: Registry[type[Dissolver]] = Registry("dissolver", Dissolver)
# Makes a class a dissolver the settings (``dissolve=NAME``) and the command line
# (``--dissolve NAME``) can name; usable as a class decorator.
register_dissolver = DISSOLVERS.register


def dissolver_class(name: str) -> type[Dissolver]:
    """The dissolver registered as ``name``."""
    return DISSOLVERS.lookup(name)


@register_dissolver
class DiffusionDissolver(Dissolver):
    """:func:`diffusion_dissolve` with a DDPM trained on the normal images (:meth:`fit`, which
    takes a model kept by an earlier fit on the same images, settings and seed where there is
    one: :mod:`dia.diffusion.cache`); ``.to(device)`` moves the model too."""

    name = "diffusion"
    learns = True
    resumable = True

    def __init__(self, model: DiffusionModel | None = None, config: DiffusionConfig | None = None):
        super().__init__()
        if model is not None and not isinstance(model, DiffusionModel):
            raise ValueError(f"model must be a DiffusionModel, got {type(model).__name__}")
        self.model = model
        self.config = model.config if model is not None else config or DiffusionConfig()

    @classmethod
    def create(cls, diffusion: DiffusionConfig | None = None) -> DiffusionDissolver:
        return cls(config=diffusion)

    @property
    def fitted(self) -> bool:
        return self.model is not None

    def fit(
        self,
        images: torch.Tensor,
        *,
        device,
        seed: int,
        progress: bool = True,
        checkpoint: Checkpointing | None = None,
    ) -> dict:
        """Train the DDPM (or take the kept one); returns its training history with ``kept``
        (whether it was taken from the cache). ``checkpoint``: saves the training as it goes
        and on Ctrl-C, or continues it (:func:`~dia.diffusion.train.train_diffusion`)."""
        # the key hashes every training image: only worth it where models are kept
        key = (
            None if cache_root() is None else model_key(images, self.config, images.shape[1], seed)
        )
        found = None if key is None else _kept_model(key, device)
        if found is not None:
            self.model, history = found
            self.model.config = self.config  # the same but for how it dissolves: this run's
            return {**history, "kept": True}
        model = DiffusionModel(self.config, images.shape[1], seed=seed)
        history = train_diffusion(
            model,
            images,
            self.config,
            device=device,
            seed=seed,
            progress=progress,
            checkpoint=checkpoint,
        )
        if key is not None and distributed.is_main():
            store(model, history, key)
        self.model = model
        return {**history, "kept": False}

    def save(self, folder: Path) -> None:
        self._model().save_pretrained(folder)

    @classmethod
    def load(cls, folder: Path, device) -> DiffusionDissolver:
        return cls(DiffusionModel.from_pretrained(folder, device=device))

    def forward(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        return diffusion_dissolve(x, t, self._model())

    def _model(self) -> DiffusionModel:
        if self.model is None:
            raise RuntimeError("the diffusion dissolver is not fitted: call fit(images) first")
        return self.model


def _kept_model(key: str, device) -> tuple[DiffusionModel, dict] | None:
    """The cache's model of ``key`` and its history, where rank 0 finds one (every process of
    a launch then loads it), else None."""
    found = load_cached(key, device) if distributed.is_main() else None
    if not distributed.broadcast_object(found is not None):
        return None
    if found is None:
        found = load_cached(key, device)
        if found is None:
            raise RuntimeError(f"the kept diffusion model {model_dir(key)} could not be read")
    return found


@register_dissolver
class GaussianDissolver(Dissolver):
    """:func:`gaussian_dissolve` as a module."""

    name = "gaussian"

    def forward(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        return gaussian_dissolve(x, t)


@register_dissolver
class MedianDissolver(Dissolver):
    """:func:`median_dissolve` as a module."""

    name = "median"

    def forward(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        return median_dissolve(x, t)


@register_dissolver
class IdentityDissolver(Dissolver):
    """:func:`identity` as a module (``name == "none"``: plain CSI)."""

    name = "none"

    def forward(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        return identity(x, t)


def build_dissolver(
    name: str, diffusion_model: DiffusionModel | None = None, config: DiffusionConfig | None = None
) -> Dissolver:
    """The dissolver called ``name`` (one of :data:`DISSOLVERS`), fitted where it learns:
    the diffusion dissolver needs ``diffusion_model``."""
    cls = dissolver_class(name)
    if cls is DiffusionDissolver and diffusion_model is not None:
        return DiffusionDissolver(diffusion_model)
    dissolver = cls.create(config)
    if not dissolver.fitted:
        raise ValueError(
            f"dissolve={name!r} needs a fitted model; or choose one of "
            f"{[n for n, c in DISSOLVERS.items() if not c.learns]}"
        )
    return dissolver


def timestep_grid(t_min: int, t_max: int, n: int) -> list[int]:
    """``n`` timesteps evenly spread over [t_min, t_max], rounded, duplicates removed."""
    if not 0 <= t_min <= t_max:
        raise ValueError(f"need 0 <= t_min <= t_max, got t_min={t_min}, t_max={t_max}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n == 1:
        return [round((t_min + t_max) / 2)]
    values = torch.linspace(t_min, t_max, n).round().long().tolist()
    return sorted(set(values))


class DissolveCache:
    """Dissolved copies of every training image at each timestep of a grid.

    ``images`` is (n_t, N, C, H, W) float16: half precision keeps fine detail (error below
    5e-4 in [0, 1]) at half the memory, while uint8 would quantise away the faint differences
    the dissolved views are about. A timestep t is served by the nearest grid timestep.

    Flips: the cache holds dissolve(x), and training uses flip(dissolve(x)) in place of
    dissolve(flip(x)). That is exact for the blurs and only approximate for the UNet, which is
    not exactly flip-equivariant, but it is trained on flipped images, so the two are close.
    """

    def __init__(self, images: torch.Tensor, timesteps: Sequence[int]):
        if images.dim() != 5 or images.shape[0] != len(timesteps):
            raise ValueError(
                f"images must be (n_t={len(timesteps)}, N, C, H, W), got {tuple(images.shape)}"
            )
        self.images = images
        self.timesteps = [int(s) for s in timesteps]
        self._grid = torch.tensor(self.timesteps, device=images.device)

    @classmethod
    def build(
        cls,
        dissolver: Dissolver,
        images: torch.Tensor,
        timesteps: Sequence[int],
        batch_size: int = 256,
        device: str | torch.device = "cpu",
    ) -> DissolveCache:
        """Dissolve images (N, C, H, W) in [0, 1] at every timestep; computed and kept on device.

        The dissolver is moved to ``device``.
        """
        _check_input(images)
        timesteps = [int(s) for s in timesteps]
        if not timesteps or min(timesteps) < 0:
            raise ValueError(f"timesteps must be a non-empty list of ints >= 0, got {timesteps}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        dissolver = dissolver.to(device)
        out = torch.empty(
            (len(timesteps), *images.shape), dtype=torch.float16, device=torch.device(device)
        )
        with torch.no_grad():
            for k, step in enumerate(timesteps):
                for i in range(0, images.shape[0], batch_size):
                    batch = images[i : i + batch_size].to(device=device, dtype=torch.float32)
                    out[k, i : i + batch_size] = dissolver(batch, step).to(torch.float16)
        return cls(out, timesteps)

    @property
    def num_images(self) -> int:
        return int(self.images.shape[1])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: str | torch.device) -> DissolveCache:
        """A copy of the cache on ``device``."""
        return DissolveCache(self.images.to(device), self.timesteps)

    def lookup(self, indices: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Dissolved images (B, C, H, W) float32 of ``indices`` (B,) at the grid step nearest t."""
        indices = self._indices(indices)
        steps = _per_item(t, indices.shape[0]).to(self.device)
        k = (steps[:, None] - self._grid[None, :]).abs().argmin(dim=1)
        return self.images[k, indices].float()

    def sample(
        self, indices: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Dissolved images (B, C, H, W) float32 of ``indices`` (B,), a random grid step each."""
        indices = self._indices(indices)
        g_device = generator.device if generator is not None else self.device
        k = torch.randint(
            len(self.timesteps), (indices.shape[0],), generator=generator, device=g_device
        )
        return self.images[k.to(self.device), indices].float()

    def _indices(self, indices: torch.Tensor) -> torch.Tensor:
        indices = torch.as_tensor(indices).long().to(self.device).flatten()
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_images):
            raise ValueError(
                f"indices must lie in [0, {self.num_images}), got "
                f"{int(indices.min())}..{int(indices.max())}"
            )
        return indices


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a float tensor (B, C, H, W) in [0, 1], got {shape}")


def _per_item(t: int | torch.Tensor, batch: int) -> torch.Tensor:
    """t as an int or a (B,) / scalar integer tensor -> LongTensor (B,) on the CPU, t >= 0."""
    t = torch.as_tensor(t)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"t must be an int or an integer tensor, got dtype {t.dtype}")
    t = t.long().cpu()
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be an int or have shape ({batch},), got {tuple(t.shape)}")
    if batch and int(t.min()) < 0:
        raise ValueError(f"t must be >= 0, got {int(t.min())}")
    return t
