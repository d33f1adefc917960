"""The SimCLR augmentation of CSI (docs/method.md, section 3), on batched tensors."""

from __future__ import annotations

import functools
import hashlib

import kornia.augmentation as K
import torch
from torch import nn

from .shifts import NUM_SHIFTS

# How many sets of test-time randomness there are; an image's key picks one.
KEY_ROWS = 4096


class SimCLRAugment(nn.Module):
    """Colour jitter, random grayscale and random resized crop, independently per image.

    Input and output: (B, C, H, W) in [0, 1], same shape. On 1-channel images only brightness
    and contrast apply (saturation, hue and grayscale mean nothing there). ``crop_scale`` is the
    (min, max) area fraction of the crop; test-time augmentation fixes it, e.g. (0.54, 0.54).
    The horizontal flip is not part of it: it comes before the shift (training's
    ``random_hflip``, scoring's :func:`keyed_views`), since a flip after a rotation is another
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
        ops: list[nn.Module] = []
        if channels == 3:
            ops.append(K.ColorJitter(s, s, s, s / 4, p=jitter_prob))
            ops.append(K.RandomGrayscale(p=gray_prob))
        else:
            ops.append(K.ColorJitter(s, s, 0.0, 0.0, p=jitter_prob))
        ops.append(
            K.RandomResizedCrop((image_size, image_size), scale=crop_scale, ratio=(3 / 4, 4 / 3))
        )
        self.ops = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> augmented (B, C, H, W) in [0, 1]."""
        return self.ops(x).clamp_(0.0, 1.0)


class KeyedAugment:
    """A :class:`SimCLRAugment` whose randomness follows each image, not its place in a batch.

    ``rows`` sets of the augmentation's parameters are drawn once from ``seed``; an image takes
    the set its key names (:func:`image_keys`: a hash of its pixels), so that an image gets
    the same views, hence the same score, alone or among any others. Test-time augmentation
    uses it: with draws made batch by batch, an image's score would depend on its neighbours
    in the batch and on its position. Each image's views are drawn as the batch-wise
    augmentation draws them; ColorJitter's order of operations is one a table, as it was one
    a batch.
    """

    # Parameters that are not one a row: the op's order of operations, the batch's shape.
    SHARED = frozenset({"order", "forward_input_shape"})

    def __init__(
        self, augment: SimCLRAugment, shape: tuple[int, int, int], seed: int, rows: int = KEY_ROWS
    ) -> None:
        self.ops = list(augment.ops)
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


@functools.lru_cache(maxsize=64)
def keyed_views(settings: tuple, shape: tuple[int, int, int], sample: int, shifts: int) -> tuple:
    """Test-time sample ``sample``'s randomness: (flips, augments). ``flips``: (rows,) bools,
    whether the image of each key is flipped horizontally, before it is shifted, as training
    flips its views; ``augments``: one :class:`KeyedAugment` a shift, applied after the shift,
    each with a seed of its own (that of shift k is the same whatever ``shifts``, the number
    of shifts scored, is). ``settings``: :class:`SimCLRAugment`'s arguments, in order. Kept, so
    that scoring draws its tables once, not at every call."""
    augment = SimCLRAugment(*settings)
    flips = torch.rand(KEY_ROWS, generator=torch.Generator().manual_seed(20_000 + sample)) < 0.5
    augments = tuple(
        KeyedAugment(augment, shape, seed=10_000 + NUM_SHIFTS * sample + k) for k in range(shifts)
    )
    return flips, augments


def keyed_flip(x: torch.Tensor, flips: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images, each flipped horizontally where ``flips`` says so for its key."""
    flip = flips[keys.cpu()].to(x.device)[:, None, None, None]
    return torch.where(flip, x.flip(-1), x)


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
