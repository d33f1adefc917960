"""A small DDPM: a diffusers ``UNet2DModel``, linear beta schedule (docs/method.md, section 1).

The model works in its own space: square images of side ``config.resolution`` with values in
[-1, 1]. :meth:`DiffusionModel.to_model_space` and :meth:`DiffusionModel.from_model_space`
convert from and back to the library's images (B, C, H, W) in [0, 1] of any size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn

from ..config import DiffusionConfig, from_dict, to_dict
from ..saved import CONFIG_NAME, WEIGHTS_NAME, load_component, save_component
from .targets import TARGETS, Epsilon

FORMAT = "dia-diffusion-model"
FORMAT_VERSION = 1
# The largest resolution a config may name: beyond it a config is damaged, not large.
MAX_RESOLUTION = 4096
# Images this much smaller than the resolution (MedMNIST 28 -> 32) are padded, not resized,
# so that no interpolation blurs the fine detail the detector has to learn.
PAD = 2
# DiffusionConfig's names for diffusers' schedules (its predictions: dia.diffusion.targets),
# and its losses.
SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}
# How every model was made before these settings existed: what a saved config without them means.
EARLIER_SETTINGS = {
    "prediction": "epsilon",
    "schedule": "linear",
    "loss": "mse",
    "train_t_max": None,
    "noise_draws": 0,
}


class DiffusionModel(nn.Module):
    """A DDPM on (B, C, r, r) images in [-1, 1], r = ``config.resolution``, whose UNet
    predicts eps, x0, v or a preconditioned correction (``config.prediction``).

    ``attention`` adds self-attention at the lowest resolution and in the middle block. It is
    off by default: measured on PneumoniaMNIST (default config, 2 CPU threads, 90 s) it trained
    at 47 instead of 56 images/s, with the same loss per epoch and no visible difference in the
    dissolved images. ``seed`` fixes the UNet's initial weights (without it they come from
    torch's global random state, which this leaves untouched when a seed is given).
    """

    def __init__(
        self,
        config: DiffusionConfig,
        channels: int,
        *,
        attention: bool = False,
        seed: int | None = None,
    ):
        super().__init__()
        _check_config(config)
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        self.config = config
        self.channels = channels
        self.attention = bool(attention)
        blocks = tuple(int(c) for c in config.block_out_channels)
        down = ["DownBlock2D"] * len(blocks)
        up = ["UpBlock2D"] * len(blocks)
        if self.attention:
            down[-1] = "AttnDownBlock2D"
            up[0] = "AttnUpBlock2D"
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self.unet = UNet2DModel(
                sample_size=config.resolution,
                in_channels=channels,
                out_channels=channels,
                block_out_channels=blocks,
                layers_per_block=config.layers_per_block,
                down_block_types=tuple(down),
                up_block_types=tuple(up),
                norm_num_groups=norm_groups(blocks),
                add_attention=self.attention,
            )
        self.scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=SCHEDULES[config.schedule],
            beta_start=config.beta_start,
            beta_end=config.beta_end,
            prediction_type=TARGETS[config.prediction].scheduler_prediction,
        )
        # Derived from the config, so not saved with the weights.
        abar = self.scheduler.alphas_cumprod.to(torch.float32).clone()
        self.register_buffer("alphas_cumprod", abar, persistent=False)

    @property
    def num_timesteps(self) -> int:
        return int(self.config.num_train_timesteps)

    @property
    def resolution(self) -> int:
        return int(self.config.resolution)

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> (B, C, r, r) in [-1, 1] (pad 2 if H = W = r - 4)."""
        _check_images(x, "x", self.channels)
        r = self.resolution
        h, w = x.shape[-2:]
        if (h, w) == (r, r):
            y = x
        elif h == w == r - 2 * PAD:
            # Reflect rather than replicate: mirrored texture looks like more image to the
            # UNet, while replicated edge pixels make flat streaks that no training image has.
            y = F.pad(x, (PAD, PAD, PAD, PAD), mode="reflect")
        else:
            y = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
        return y * 2 - 1

    def from_model_space(self, y: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
        """Inverse of :meth:`to_model_space`: (B, C, r, r) in [-1, 1] -> (B, C, H, W) in [0, 1]."""
        _check_images(y, "y", self.channels)
        h, w = _size_pair(size)
        r = self.resolution
        if tuple(y.shape[-2:]) != (r, r):
            raise ValueError(f"y must be {r}x{r} (model space), got shape {tuple(y.shape)}")
        if (h, w) == (r, r):
            x = y
        elif h == w == r - 2 * PAD:
            x = y[..., PAD:-PAD, PAD:-PAD]
        else:
            x = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return ((x + 1) / 2).clamp(0.0, 1.0)

    def timesteps(self, t: int | torch.Tensor, batch: int) -> torch.Tensor:
        """An int or a (B,) / scalar tensor of timesteps -> LongTensor (B,) on the model device."""
        t = torch.as_tensor(t, device=self.device)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"t must be an int or an integer tensor, got dtype {t.dtype}")
        t = t.long()
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must be an int or have shape ({batch},), got {tuple(t.shape)}")
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= self.num_timesteps:
            raise ValueError(f"t must lie in [0, {self.num_timesteps}), got values {lo}..{hi}")
        return t

    def predict(self, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """The UNet's output (B, C, r, r) for noisy images x_t (B, C, r, r) in model space: eps,
        x0, v or the preconditioned model's correction, as ``config.prediction`` says."""
        t = self.timesteps(t, x_t.shape[0])
        unet_input = self.target.unet_input(x_t, self._abar(t, x_t))
        return self.unet(unet_input, t).sample

    @property
    def target(self) -> Epsilon:
        """What the UNet predicts (:data:`dia.diffusion.targets.TARGETS`)."""
        return TARGETS[self.config.prediction]

    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod.to(like.device)[t].view(-1, 1, 1, 1).to(like.dtype)

    def predict_x0(self, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Unclipped one-step x0 (B, C, r, r) from noisy images x_t: for an eps-predicting
        model (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), for an x0-predicting one the
        prediction itself, and so on (:mod:`dia.diffusion.targets`)."""
        t = self.timesteps(t, x_t.shape[0])
        return self.target.x0(x_t, self.predict(x_t, t), self._abar(t, x_t))

    def dissolve(self, y: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Unclipped one-step x0 (B, C, r, r) of clean images ``y`` in model space taken as the
        noisy ones at step t, no noise added (docs/method.md, section 1)."""
        t = self.timesteps(t, y.shape[0])
        return self.predict_x0(self.target.as_noisy(y, self._abar(t, y)), t)

    def noised(self, y: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) y + sqrt(1 - abar_t) noise: clean images ``y`` (B, C, r, r) in
        model space noised to step t with standard normal ``noise`` of their shape."""
        abar = self._abar(self.timesteps(t, y.shape[0]), y)
        return abar.sqrt() * y + (1 - abar).sqrt() * noise

    def denoise(self, y: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Unclipped one-step x0 (B, C, r, r) of clean images ``y`` in model space noised to
        step t for real with ``noise`` (:meth:`noised`)."""
        return self.predict_x0(self.noised(y, t, noise), t)

    def loss(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """DDPM loss (scalar): ``config.loss`` between the UNet's output and its target
        (noise, x0, v, ...), t uniform in [0, ``config.train_t_max``) (every timestep when
        None)."""
        b = x0.shape[0]
        # Draw on the generator's device so that one seeded CPU generator also serves CUDA.
        g_device = generator.device if generator is not None else x0.device
        top = self.config.train_t_max or self.num_timesteps
        t = torch.randint(0, top, (b,), generator=generator, device=g_device)
        noise = torch.randn(x0.shape, generator=generator, device=g_device, dtype=x0.dtype)
        t, noise = t.to(x0.device), noise.to(x0.device)
        x_t = self.noised(x0, t, noise)
        target = self.target.target(x0, noise, x_t, self._abar(t, x0))
        return LOSSES[self.config.loss](self.predict(x_t, t), target)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into folder ``directory``, atomically
        (:func:`~dia.saved.save_component`): a failed save leaves an earlier model intact."""
        values = to_dict(self.config)
        values.update(channels=self.channels, attention=self.attention)
        return save_component(directory, FORMAT, FORMAT_VERSION, values, self.state_dict())

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, device: str | torch.device = "cpu"
    ) -> DiffusionModel:
        """Read a model written by :meth:`save_pretrained` (or by an earlier dia, whose
        ``config.json`` has no ``format``); returned in eval mode on ``device``."""
        saved = load_component(directory, FORMAT, range(1, FORMAT_VERSION + 1), unnamed=True)
        config_path = saved.folder / CONFIG_NAME
        model = cls._from_config_dict(saved.config, config_path)
        try:
            model.load_state_dict(saved.tensors, strict=True)
        except RuntimeError as err:
            weights_path = saved.folder / WEIGHTS_NAME
            raise ValueError(f"weights in {weights_path} do not fit {config_path}: {err}") from err
        return model.to(device).eval()

    @classmethod
    def _from_config_dict(cls, values: dict, path: Path) -> DiffusionModel:
        values = dict(values)
        channels = values.pop("channels", None)
        attention = values.pop("attention", False)
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ValueError(
                f"invalid diffusion config {path}: channels={channels!r}; expected 1 or 3"
            )
        if not isinstance(attention, bool):
            raise ValueError(
                f"invalid diffusion config {path}: attention={attention!r}; expected true or false"
            )
        values = {**EARLIER_SETTINGS, **values}  # saved before those settings existed
        try:
            return cls(from_dict(DiffusionConfig, values), channels, attention=attention)
        except (TypeError, ValueError) as err:
            raise ValueError(f"invalid diffusion config {path}: {err}") from err


def norm_groups(block_out_channels: Sequence[int]) -> int:
    """GroupNorm group count that divides every block width: gcd of the widths, at most 32."""
    return min(32, math.gcd(*(int(c) for c in block_out_channels)))


def _check_config(config: DiffusionConfig) -> None:
    blocks = tuple(config.block_out_channels)
    if not blocks or any(int(c) < 1 for c in blocks):
        raise ValueError(f"block_out_channels must be positive ints, got {blocks!r}")
    scale = 2 ** (len(blocks) - 1)
    if config.resolution > MAX_RESOLUTION:
        raise ValueError(f"resolution={config.resolution}; expected at most {MAX_RESOLUTION}")
    if config.resolution < scale or config.resolution % scale:
        raise ValueError(
            f"resolution={config.resolution} must be a multiple of {scale} "
            f"for {len(blocks)} UNet blocks"
        )
    if config.layers_per_block < 1:
        raise ValueError(f"layers_per_block must be >= 1, got {config.layers_per_block}")
    if not 0 < config.beta_start < config.beta_end < 1:
        raise ValueError(
            f"need 0 < beta_start < beta_end < 1, got {config.beta_start}, {config.beta_end}"
        )
    if config.num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {config.num_train_timesteps}")
    for name, known in (("prediction", TARGETS), ("schedule", SCHEDULES), ("loss", LOSSES)):
        if getattr(config, name) not in known:
            raise ValueError(f"{name}={getattr(config, name)!r}; expected one of {sorted(known)}")
    top = config.train_t_max
    if top is not None and not 1 <= top <= config.num_train_timesteps:
        raise ValueError(
            f"train_t_max={top}; expected 1 to num_train_timesteps={config.num_train_timesteps}"
        )


def _check_images(x: torch.Tensor, name: str, channels: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a float tensor (B, C, H, W), got {shape}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels, the model expects {channels}")


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    pair = tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"size must be an int or (H, W), got {size!r}")
    return pair
