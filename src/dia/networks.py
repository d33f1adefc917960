"""The amplifying network: a ResNet-18 encoder with projection and shift heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import INPUT_NORMS, DetectorConfig
from .shifts import Rotation, get_shift


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place: the sum and the activation reuse the memory they read, as autograd allows
        # (batch norm keeps its input for the backward pass, not its output).
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out.add_(self.skip(x)), inplace=True)


def stem_stride_for(image_size: int) -> int:
    """The stem's downsampling for ``image_size`` px images: the largest power of two that
    leaves the first stage at least 32 px (1 up to 63 px, 2 at 64, 4 at 128 and 224, 8 at 256)."""
    stride = 1
    while image_size // (2 * stride) >= 32:
        stride *= 2
    return stride


class ResNet18(nn.Module):
    """ResNet-18 with the small-image (CIFAR) stem: a 3x3 convolution, no max-pool.

    ``width`` is the channel count of the first stage (64 in the standard network); the feature
    dimension is 8 * width. Input (B, C, H, W), output (B, 8 * width). ``stem_stride`` (a power
    of two) downsamples larger images before the first stage: log2(stride) 3x3 convolutions of
    stride 2 come before the stem's own, so that a 128 px image costs about what a 32 px one
    does (1: CIFAR's stem alone).
    """

    def __init__(self, channels: int = 1, width: int = 64, stem_stride: int = 1) -> None:
        super().__init__()
        if stem_stride < 1 or stem_stride & (stem_stride - 1):
            raise ValueError(f"stem_stride={stem_stride}; expected a power of two")
        layers: list[nn.Module] = []
        c_in = channels
        for step in [2] * (stem_stride.bit_length() - 1) + [1]:
            layers += [nn.Conv2d(c_in, width, 3, step, 1, bias=False), nn.BatchNorm2d(width)]
            layers.append(nn.ReLU())
            c_in = width
        self.stem = nn.Sequential(*layers)
        stages, c_in = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            c_out = width * 2**i
            stages += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.out_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1)


def normalize_input(x: torch.Tensor, mode: str) -> torch.Tensor:
    """The encoder's input from (B, C, H, W) images in [0, 1].

    ``fixed`` maps [0, 1] to [-1, 1]. ``image`` standardises each image on its own (zero mean,
    unit standard deviation over all its pixels and channels), so that the network sees
    structure rather than overall brightness and contrast, which vary between scanners and
    exposures. A flat image stays flat (its deviation is floored at 1e-3). The statistics are
    computed in at least float32 (in float64 for float64 input).
    """
    if mode == "fixed":
        return x.mul(2.0).sub_(1.0)  # one new tensor, not two
    if mode == "image":
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        flat = wide.flatten(1)
        mean = flat.mean(1)[:, None, None, None]
        std = flat.std(1).clamp_min(1e-3)[:, None, None, None]
        return ((wide - mean) / std).to(x.dtype)
    raise ValueError(f"input_norm={mode!r}; expected one of {INPUT_NORMS}")


class AmplifierNet(nn.Module):
    """Encoder f, 2-layer projection g (unnormalised z) and a linear K-way shift head.

    ``forward`` takes (B, C, H, W) in [0, 1] and returns (z (B, proj_dim), shift logits (B, K));
    ``input_norm`` says how images become the encoder's input (:func:`normalize_input`);
    ``shifts`` is K, the count of the shift family trained with (:mod:`dia.shifts`).
    """

    def __init__(
        self,
        channels: int = 1,
        width: int = 64,
        proj_dim: int = 128,
        input_norm: str = "fixed",
        stem_stride: int = 1,
        shifts: int = Rotation.count,
    ) -> None:
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm={input_norm!r}; expected one of {INPUT_NORMS}")
        self.width = width
        self.input_norm = input_norm
        self.encoder = ResNet18(channels, width, stem_stride)
        d = self.encoder.out_dim
        self.projection = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, proj_dim))
        self.shift_head = nn.Linear(d, shifts)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, z, logits = self.forward_features(x)
        return z, logits

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(encoder features h (B, 8 * width), projection z (B, proj_dim), shift logits (B, K))."""
        h = self.encoder(normalize_input(x, self.input_norm))
        return h, self.projection(h), self.shift_head(h)


def build_network(config: DetectorConfig, channels: int, image_size: int) -> AmplifierNet:
    """The network the config describes, untrained, for ``image_size`` px images."""
    return AmplifierNet(
        channels=channels,
        width=config.network.width,
        proj_dim=config.network.proj_dim,
        input_norm=config.network.input_norm,
        stem_stride=config.network.stem_stride or stem_stride_for(image_size),
        shifts=get_shift(config.loss.shift).count,
    )
