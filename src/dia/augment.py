"""The SimCLR augmentation of CSI (docs/method.md, section 3), on batched tensors."""

from __future__ import annotations

import hashlib
import math

import kornia.augmentation as K
import torch
from torch import nn

# How many sets of test-time randomness there are; an image's key picks one.
KEY_ROWS = 4096


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each (B, C, H, W) image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device="cpu") < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


class SimCLRAugment(nn.Module):
    """Colour jitter, random grayscale and random resized crop, independently per image.

    Input and output: (B, C, H, W) in [0, 1], same shape. On 1-channel images only brightness
    and contrast apply (saturation, hue and grayscale mean nothing there). ``crop_scale`` is the
    (min, max) area fraction of the crop; test-time augmentation fixes it, e.g. (0.54, 0.54).
    The horizontal flip is not part of it: it comes before the shift (:func:`random_hflip` in
    training, :func:`dia.views.keyed_views` in scoring), since a flip after a rotation is another
    rotation of the flipped image.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        jitter_strength: float = 0.4,
        jitter_prob: float = 0.8,
        gray_prob: float = 0.2,
    ) -> None:
        super().__init__()
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale={crop_scale}; expected 0 < min <= max <= 1")
        s = jitter_strength
        colour: list[nn.Module] = []
        if channels == 3:
            jitter = K.ColorJitter(s, s, s, s / 4, p=jitter_prob)
            jitter._hue_fn = adjust_hue  # kornia's, in a fifth of the time
            colour += [jitter, K.RandomGrayscale(p=gray_prob)]
        else:
            colour.append(K.ColorJitter(s, s, 0.0, 0.0, p=jitter_prob))
        # "resample" crops every image of a batch in one interpolation; kornia's default
        # resizes them one by one, to the same values (within 1e-5) at half the speed.
        crop = K.RandomResizedCrop(
            (image_size, image_size),
            scale=crop_scale,
            ratio=(3 / 4, 4 / 3),
            cropping_mode="resample",
        )
        self.colour = tuple(colour)  # pixel by pixel: they commute with every shift
        self.ops = nn.Sequential(*colour, crop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> augmented (B, C, H, W) in [0, 1]."""
        return self.ops(x).clamp_(0.0, 1.0)


def adjust_hue(image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] with each image's hue turned by ``factor`` (B,) radians:
    ``kornia.enhance.adjust_hue`` (to within 1e-6), written on the three channel planes
    instead of a converted HSV image.

    Hue h in sixths of a turn, value v = max, chroma c = max - min; channel n (5, 3, 1 for
    red, green, blue) of the turned pixel is v - c' * clamp(min(k, 4 - k), 0, 1) with
    k = (n + h') mod 6, where c' is kornia's v * saturation.
    """
    r, g, b = image.unbind(-3)
    v = image.amax(-3)
    chroma = v - image.amin(-3)
    safe = torch.where(chroma == 0, torch.ones_like(chroma), chroma)
    turn = factor.to(image).reshape(-1, 1, 1) * (6 / (2 * math.pi))
    sixths = torch.where(
        (r >= g) & (r >= b),
        (g - b).div_(safe),
        torch.where(g >= b, (b - r).div_(safe).add_(2.0), (r - g).div_(safe).add_(4.0)),
    ).add_(turn)
    # kornia's saturation is c / (v + 1e-8), and its channels v - v * saturation * ...
    span = chroma.div_(torch.where(v == 0, torch.ones_like(v), v + 1e-8)).mul_(v)
    planes = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(sixths + n, 6.0)  # min(k, 4 - k) = 2 - |k - 2|
        weight = k.sub_(2.0).abs_().neg_().add_(2.0).clamp_(0.0, 1.0)
        planes.append(v - weight.mul_(span))
    return torch.stack(planes, dim=-3)


class KeyedAugment:
    """Augmentation ops (of a :class:`SimCLRAugment`) whose randomness follows each image, not
    its place in a batch.

    ``rows`` sets of the ops' parameters are drawn once from ``seed``; an image takes the set
    its key names (:func:`image_keys`: a hash of its pixels), so that an image gets the same
    views, hence the same score, alone or among any others. Test-time augmentation uses it:
    with draws made batch by batch, an image's score would depend on its neighbours in the
    batch and on its position. Each image's views are drawn as the batch-wise augmentation
    draws them; ColorJitter's order of operations is one a table, as it was one a batch.
    """

    # Parameters that are not one a row: the op's order of operations, the batch's shape.
    SHARED = frozenset({"order", "forward_input_shape"})

    def __init__(self, ops, shape: tuple[int, int, int], seed: int, rows: int = KEY_ROWS) -> None:
        self.ops = list(ops)
        self.rows = rows
        with torch.random.fork_rng(devices=[]):  # drawn with the CPU generator, restored after
            torch.default_generator.manual_seed(seed)
            self.tables = [op.forward_parameters(torch.Size((rows, *shape))) for op in self.ops]
        for op, table in zip(self.ops, self.tables, strict=True):
            for name, value in table.items():
                if name not in self.SHARED and (value.ndim == 0 or value.shape[0] != rows):
                    raise RuntimeError(
                        f"{type(op).__name__} drew its parameter {name!r} of shape "
                        f"{tuple(value.shape)}, not one a row of {rows}: this kornia version "
                        "draws differently from the one dia was written for (see pyproject.toml)"
                    )

    def __call__(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] and (B,) keys in [0, rows) -> augmented (B, C, H, W)."""
        keys = keys.cpu()  # the tables stay on the CPU; what they give goes to x's device
        for op, table in zip(self.ops, self.tables, strict=True):
            picked = {
                name: (
                    torch.tensor(x.shape)
                    if name == "forward_input_shape"
                    else value
                    if name in self.SHARED
                    else value[keys]
                ).to(x.device)
                for name, value in table.items()
            }
            x = op(x, params=picked)
        return x.clamp_(0.0, 1.0)


def image_keys(images: torch.Tensor, rows: int = KEY_ROWS) -> torch.Tensor:
    """(N,) int64 keys in [0, rows), each a hash of one image's values: equal images, equal
    keys, whatever else is in the batch."""
    keys = []
    for image in images.detach():
        # float32 on the CPU, -0.0 as 0.0: the same image gives the same bytes in any form.
        values = (image.float().cpu() + 0.0).contiguous().numpy()
        digest = hashlib.blake2b(memoryview(values), digest_size=8).digest()
        keys.append(int.from_bytes(digest, "little") % rows)
    return torch.tensor(keys, dtype=torch.long)
