"""Test-time views (docs/method.md, section 4): each image's augmented, shifted copies, keyed
by the image's own pixels so that its score is the same alone or in any batch.

The randomness is drawn by the training augmentation's own kornia ops
(:class:`~dia.augment.KeyedAugment` tables); what the tables say is carried out here, with
fewer passes over the images than kornia makes: the colour jitter and grayscale in place on the
images they apply to, and the horizontal flip, a rotation and the crop of every view as one
bilinear sampling (a flip and a rotation move the sampling grid, not the pixels). The views
are kornia's to within float rounding (tests).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kornia.color import rgb_to_grayscale as gray

from .augment import KEY_ROWS, KeyedAugment, SimCLRAugment, adjust_hue

# ColorJitter's steps in the order its ``order`` parameter numbers them, and each one's
# factor that changes nothing (a step whose factors all are that is skipped, as kornia does).
JITTER_FACTORS = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")
NEUTRAL = (1.0, 1.0, 1.0, 0.0)


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return x.mul_(f).clamp_(0.0, 1.0)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = (gray(x) if x.shape[-3] == 3 else x).mean((-3, -2, -1), keepdim=True)
    return x.mul_(f).add_(mean * (1 - f)).clamp_(0.0, 1.0)


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if x.shape[-3] == 1:
        return x
    luma = gray(x) * (1 - f)  # of the image before it changes
    return x.mul_(f).add_(luma).clamp_(0.0, 1.0)


def _hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return adjust_hue(x, f.reshape(-1) * (2 * math.pi))


STEPS = (_brightness, _contrast, _saturation, _hue)
# Steps that leave a gray pixel (three equal channels) as it is, to within float rounding.
# Brightness and contrast keep a gray image gray, so these and the random grayscale need only
# the images with some colour: most "colour" medical images are gray ones stored as RGB.
CHROMA_STEPS = frozenset({2, 3})


def coloured(x: torch.Tensor) -> torch.Tensor:
    """(B,) bools for (B, C, H, W) images: whether any pixel's channels differ."""
    if x.shape[-3] == 1:
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    return (x.amax(-3) != x.amin(-3)).flatten(1).any(1)


def _on_rows(step, x: torch.Tensor, f: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """``step`` applied to the images ``rows`` of ``x`` (with their factors ``f``) alone, or
    to every image with ``rows`` None."""
    if rows is None or len(rows) == x.shape[0]:
        return step(x, f)
    if len(rows):
        x[rows] = step(x[rows], f[rows])
    return x


class KeyedColour:
    """The colour jitter (kornia's ColorJitter: brightness, contrast and saturation as
    torchvision's, dia's hue turn) and, on colour images, the random grayscale of a
    :class:`~dia.augment.KeyedAugment`, applied image by image as its tables say."""

    def __init__(self, keyed: KeyedAugment) -> None:
        jitter = keyed.tables[0]
        self.order = [int(i) for i in jitter["order"]]
        self.jittered = jitter["batch_prob"] > 0.5
        self.factors = torch.stack([jitter[name] for name in JITTER_FACTORS], 1)  # (rows, 4)
        self.grayed = keyed.tables[1]["batch_prob"] > 0.5 if len(keyed.tables) > 1 else None

    def __call__(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] and (B,) keys -> a jittered copy, (B, C, H, W) in [0, 1]."""
        keys = keys.cpu()
        x = x.clamp(0.0, 1.0)
        colour = coloured(x).cpu()
        picked = self.jittered[keys].nonzero().squeeze(1)
        if len(picked):
            factors = self.factors[keys[picked]].to(x)
            chroma = colour[picked].nonzero().squeeze(1).to(x.device)
            picked = picked.to(x.device)
            part = x[picked]
            for step in self.order:
                f = factors[:, step]
                if (f != NEUTRAL[step]).any():
                    rows = chroma if step in CHROMA_STEPS else None
                    part = _on_rows(STEPS[step], part, f.view(-1, 1, 1, 1), rows)
            x[picked] = part.clamp_(0.0, 1.0)
        if self.grayed is not None:
            grayed = (self.grayed[keys] & colour).nonzero().squeeze(1).to(x.device)
            if len(grayed):
                x[grayed] = gray(x[grayed]).expand(-1, 3, -1, -1)
        return x


class KeyedCrop:
    """The resized crop of a :class:`~dia.augment.KeyedAugment` (kornia's RandomResizedCrop,
    bilinear, corners aligned) as a map of each image's normalised coordinates: the crop of
    image n at output point p is the image at ``scale[n] * p + offset[n]``."""

    def __init__(self, keyed: KeyedAugment, size: tuple[int, int]) -> None:
        box = keyed.tables[0]["src"].float()  # (rows, 4, 2) corners (x, y), clockwise from top left
        h, w = size
        extent = torch.tensor([max(w - 1, 1), max(h - 1, 1)], dtype=torch.float32)
        low, high = box[:, 0], box[:, 2]
        self.scale = (high - low) / extent  # (rows, 2) for (x, y)
        self.offset = (low + high) / extent - 1

    def sample(self, x: torch.Tensor, keys: torch.Tensor, linear: torch.Tensor) -> torch.Tensor:
        """Crops of (B, C, H, W) images ``x`` moved by (B, 2, 2) ``linear`` maps: the view at
        p is ``x`` at ``linear[n] @ (scale[n] * p + offset[n])``."""
        keys = keys.cpu()
        scaled = linear * self.scale[keys][:, None, :]  # (B, 2, 2): its columns act on x and y
        moved = (linear @ self.offset[keys][:, :, None]).squeeze(2)  # (B, 2)
        h, w = x.shape[-2:]
        xs, ys = _axis(w), _axis(h)
        grid = torch.empty(len(keys), h, w, 2)
        for i in range(2):  # the grid's x, then its y: a sum of a row term and a column term
            across = scaled[:, i, 0, None, None] * xs[None, None, :]  # (B, 1, W)
            down = torch.addcmul(moved[:, i, None, None], scaled[:, i, 1, None, None], ys[:, None])
            torch.add(across, down, out=grid[..., i])
        return F.grid_sample(
            x, grid.to(x), mode="bilinear", padding_mode="zeros", align_corners=True
        ).clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=16)
def _axis(n: int) -> torch.Tensor:
    """(n,) normalised coordinates of n pixels, corners aligned."""
    return torch.linspace(-1.0, 1.0, n) if n > 1 else torch.zeros(1)


@dataclass(frozen=True)
class TestViews:
    """One test-time sample's randomness, keyed by image (:func:`keyed_views`).

    ``flips``: (rows,) bools, whether the image of each key is flipped horizontally (before it
    is shifted, as training flips its views); ``colour``: the colour jitter and grayscale, one
    draw for all shifts of an image (they act pixel by pixel, so jittering once and then
    shifting is jittering each shift alike); ``crops``: shift k's crop, drawn on its own.
    """

    flips: torch.Tensor
    colour: KeyedColour
    crops: tuple[KeyedCrop, ...]

    def __call__(self, x: torch.Tensor, keys: torch.Tensor, shift) -> torch.Tensor:
        """Every shift's views of (B, C, H, W) images ``x`` with ``keys``, concatenated
        (K * B, ...) for a :class:`~dia.shifts.Shift` ``shift``. Shifts with a sampling
        matrix are sampled with the flip and the crop in one pass; others are applied to the
        flipped images first."""
        x = self.colour(x, keys)
        flipped = self.flips[keys.cpu()]
        matrices = [shift.sampling_matrix(k) for k in range(len(self.crops))]
        if any(m is None for m in matrices):
            x = torch.where(flipped.to(x.device)[:, None, None, None], x.flip(-1), x)
            same = torch.eye(2).expand(len(keys), 2, 2)
            return torch.cat(
                [crop.sample(shift(x, k), keys, same) for k, crop in enumerate(self.crops)]
            )
        mirror = torch.ones(len(keys), 2)
        mirror[:, 0] = 1 - 2 * flipped.float()  # x -> -x where flipped
        mirror = torch.diag_embed(mirror)
        return torch.cat(
            [
                crop.sample(x, keys, mirror @ torch.tensor(m, dtype=torch.float32))
                for m, crop in zip(matrices, self.crops, strict=True)
            ]
        )


@functools.lru_cache(maxsize=64)
def keyed_views(
    settings: tuple, shape: tuple[int, int, int], sample: int, shifts: int, count: int
) -> TestViews:
    """Test-time sample ``sample``'s randomness for the first ``shifts`` shifts of a family of
    ``count`` (:class:`TestViews`), each table with a seed of its own (that of shift k's crop
    is the same whatever ``shifts`` is). ``settings``: :class:`~dia.augment.SimCLRAugment`'s
    arguments, in order. Kept, so that scoring draws its tables once, not at every call."""
    augment = SimCLRAugment(*settings)
    flips = torch.rand(KEY_ROWS, generator=torch.Generator().manual_seed(20_000 + sample)) < 0.5
    colour = KeyedAugment(augment.colour, shape, seed=30_000 + sample)
    crop = augment.ops[-1:]
    crops = tuple(
        KeyedCrop(KeyedAugment(crop, shape, seed=10_000 + count * sample + k), shape[1:])
        for k in range(shifts)
    )
    return TestViews(flips, KeyedColour(colour), crops)
