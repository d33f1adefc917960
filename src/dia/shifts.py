"""Shifting transformations (docs/method.md, section 2): families of label-breaking shifts.

A family is a :class:`Shift`: ``count`` shifts k = 0 .. count - 1, each a function of
(B, C, H, W) images that keeps their shape, shift 0 leaving them as they are. The network
learns to predict k (its shift head has ``count`` outputs), and the score averages over the
first ``ScoreConfig.shifts`` of them. ``SHIFTS`` maps each family's name (``--shift``) to its
class; :func:`register_shift` adds one.

The shifts are tensor methods, and this module imports torch only where it concatenates, so
that the command line reads the names in ``SHIFTS`` without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from .registry import Registry

if TYPE_CHECKING:
    import torch

__all__ = [
    "SHIFTS",
    "CutPermutation",
    "Rotation",
    "Shift",
    "all_shifts",
    "cut_permute",
    "get_shift",
    "register_shift",
    "rotate",
    "shift",
    "unshift",
]


class Shift:
    """A family of ``count`` shifts of (B, C, H, W) images; ``shift(x, k)`` applies shift k.

    A new family sets ``name`` (its ``--shift`` value) and ``count``, defines ``__call__`` and,
    unless each shift is its own inverse, ``inverse``, and is registered with
    :func:`register_shift`. Shift 0 must leave the images as they are: scoring with
    ``ScoreConfig.shifts`` = 1 scores the images as they are.
    """

    name: ClassVar[str] = ""
    count: ClassVar[int] = 0

    def __call__(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Shift k of (B, C, H, W) images, same shape."""
        raise NotImplementedError

    def inverse(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The inverse of shift k (by default shift k itself: a flip or a swap)."""
        return self(x, k)

    def sampling_matrix(self, k: int) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """The 2 x 2 matrix R for which shift k of a square image, at the normalised point
        p = (x, y) in [-1, 1]^2, is the image at R p; None (the default) where shift k is not
        such a map. Test-time views sample a shift of this kind together with their crop."""
        return None

    def all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every shift of every image: (count * B, C, H, W) ordered shift-major, and the
        labels (count * B,)."""
        import torch  # here, not at the top: see the module's docstring

        views = torch.cat([self(x, k) for k in range(self.count)])
        labels = torch.arange(self.count, device=x.device).repeat_interleave(x.shape[0])
        return views, labels


# Every family by name, the built-in ones first.
SHIFTS: Registry[type[Shift]] = Registry("shift", Shift)


def register_shift(cls: type[Shift]) -> type[Shift]:
    """Make ``cls`` the shift family ``cls.name`` (a choice of ``--shift``); usable as a class
    decorator. A name is registered once."""
    if getattr(cls, "count", 0) < 1:
        raise ValueError(f"{cls.__name__} needs a count of at least 1")
    return SHIFTS.register(cls)


def get_shift(name: str) -> Shift:
    """The shift family ``name`` (a key of ``SHIFTS``)."""
    return SHIFTS.lookup(name)()


def rotate(x: torch.Tensor, k: int) -> torch.Tensor:
    """Rotate (B, C, H, W) square images by k * 90 degrees counter-clockwise."""
    return x.rot90(k % 4, dims=(-2, -1))


def cut_permute(x: torch.Tensor, k: int) -> torch.Tensor:
    """k // 2 swaps the top and bottom halves, k % 2 swaps the left and right halves."""
    h, w = x.shape[-2:]
    if (k % 4) // 2:  # the rows from h // 2 on come first
        x = x.roll(-(h // 2), dims=-2)
    if k % 2:
        x = x.roll(-(w // 2), dims=-1)
    return x


@register_shift
class Rotation(Shift):
    """Rotations by 0, 90, 180 and 270 degrees (of square images)."""

    name = "rotation"
    count = 4

    def __call__(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return rotate(x, k)

    def inverse(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return rotate(x, -k)

    def sampling_matrix(self, k: int) -> tuple[tuple[float, float], tuple[float, float]]:
        cos, sin = ((1, 0), (0, 1), (-1, 0), (0, -1))[k % 4]
        return ((cos, -sin), (sin, cos))


@register_shift
class CutPermutation(Shift):
    """Cut-permutations: the halves swapped top-bottom for k // 2, left-right for k % 2 (each
    its own inverse on even-sized images)."""

    name = "cutperm"
    count = 4

    def __call__(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return cut_permute(x, k)


def shift(x: torch.Tensor, k: int, kind: str = "rotation") -> torch.Tensor:
    """Apply shift k of family ``kind`` (a key of ``SHIFTS``) to (B, C, H, W) images."""
    return get_shift(kind)(x, k)


def unshift(x: torch.Tensor, k: int, kind: str = "rotation") -> torch.Tensor:
    """The inverse of :func:`shift`."""
    return get_shift(kind).inverse(x, k)


def all_shifts(x: torch.Tensor, kind: str = "rotation") -> tuple[torch.Tensor, torch.Tensor]:
    """Every shift of every image: (K*B, C, H, W) ordered shift-major, and labels (K*B,)."""
    return get_shift(kind).all(x)
