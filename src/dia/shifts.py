"""Shifting transformations (docs/method.md, section 2): K = 4 label-preserving-breaking shifts.

Each shift k in 0..3 is a function of a (B, C, H, W) tensor that keeps shape; the network
learns to predict k, and the score averages over all k.
"""

from __future__ import annotations

import torch

from .config import NUM_SHIFTS

__all__ = ["NUM_SHIFTS", "SHIFTS", "all_shifts", "cut_permute", "rotate", "shift", "unshift"]
SHIFTS = ("rotation", "cutperm")


def rotate(x: torch.Tensor, k: int) -> torch.Tensor:
    """Rotate (B, C, H, W) square images by k * 90 degrees counter-clockwise."""
    return torch.rot90(x, k % 4, dims=(-2, -1))


def cut_permute(x: torch.Tensor, k: int) -> torch.Tensor:
    """k // 2 swaps the top and bottom halves, k % 2 swaps the left and right halves."""
    h, w = x.shape[-2:]
    if (k % 4) // 2:
        x = torch.cat([x[..., h // 2 :, :], x[..., : h // 2, :]], dim=-2)
    if k % 2:
        x = torch.cat([x[..., :, w // 2 :], x[..., :, : w // 2]], dim=-1)
    return x


def shift(x: torch.Tensor, k: int, kind: str = "rotation") -> torch.Tensor:
    """Apply shift k of ``kind`` ('rotation' or 'cutperm') to (B, C, H, W) images."""
    if kind == "rotation":
        return rotate(x, k)
    if kind == "cutperm":
        return cut_permute(x, k)
    raise ValueError(f"shift={kind!r}; expected one of {SHIFTS}")


def unshift(x: torch.Tensor, k: int, kind: str = "rotation") -> torch.Tensor:
    """The inverse of :func:`shift` (cut-permutation of even-sized images is its own inverse)."""
    if kind == "rotation":
        return rotate(x, -k)
    return shift(x, k, kind)


def all_shifts(x: torch.Tensor, kind: str = "rotation") -> tuple[torch.Tensor, torch.Tensor]:
    """Every shift of every image: (K*B, C, H, W) ordered shift-major, and labels (K*B,)."""
    views = [shift(x, k, kind) for k in range(NUM_SHIFTS)]
    labels = torch.arange(NUM_SHIFTS, device=x.device).repeat_interleave(x.shape[0])
    return torch.cat(views), labels
