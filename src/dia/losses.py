"""Losses of the amplifying framework (docs/method.md, section 3). Pure functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

MASKS = ("shifted_removed", "none")


def contrastive_mask(
    group_size: int, dissolved_of: torch.Tensor | None, mask: str, device=None
) -> torch.Tensor:
    """Boolean (2*M, 2*M + D) matrix of the pairs *excluded* from each anchor's denominator.

    Items are laid out as view v1 (M = K*B items), view v2 (M items), then D dissolved items
    (view v3); item i of v1 and of v2 is the same image under the same shift, and dissolved
    item j is a copy of item ``dissolved_of[j]``'s image under its shift (``None``: no v3).
    Excluded: the anchor itself, and with ``shifted_removed`` the dissolved copies of the
    anchor's image and shift.
    """
    if mask not in MASKS:
        raise ValueError(f"mask={mask!r}; expected one of {MASKS}")
    m = group_size
    d = 0 if dissolved_of is None else dissolved_of.numel()
    rows = torch.arange(2 * m, device=device)
    excluded = torch.zeros(2 * m, 2 * m + d, dtype=torch.bool, device=device)
    excluded[rows, rows] = True
    if mask == "shifted_removed" and dissolved_of is not None:
        source = dissolved_of.to(device)
        excluded[:, 2 * m :] = (rows % m)[:, None] == source[None, :]
    return excluded


def contrastive_loss(
    z: torch.Tensor,
    group_size: int,
    temperature: float = 0.5,
    mask: str = "shifted_removed",
    dissolved_of: torch.Tensor | None = None,
) -> torch.Tensor:
    """NT-Xent over (2*M + D, d) projections: v1[i] and v2[i] are positives; the D dissolved
    items after them are only in denominators.

    ``dissolved_of`` names the v1/v2 item (0 to M-1) each dissolved item copies; without it the
    dissolved items are either none or a whole third group of M in the order of v1.
    ``z`` is unnormalised (it is L2-normalised here). Returns the mean over the 2*M anchors of
    -log(exp(s_pos) / sum over non-excluded j of exp(s_ij)), with s_ij = z_i . z_j / temperature.
    """
    n, m = z.shape[0], group_size
    extra = n - 2 * m
    if dissolved_of is None:
        if extra not in (0, m):
            raise ValueError(f"z has {n} rows; expected 2 or 3 groups of group_size={group_size}")
        dissolved_of = torch.arange(m, device=z.device) if extra else None
    elif dissolved_of.numel() != extra:
        raise ValueError(
            f"z has {n} rows: {extra} after two groups of {m}, "
            f"but dissolved_of names {dissolved_of.numel()}"
        )
    z = F.normalize(z.float(), dim=1)
    sim = z[: 2 * m] @ z.T / temperature
    sim = sim.masked_fill(contrastive_mask(m, dissolved_of, mask, z.device), float("-inf"))
    rows = torch.arange(2 * m, device=z.device)
    positives = (rows + m) % (2 * m)
    return -(sim[rows, positives] - torch.logsumexp(sim, dim=1)).mean()


def shift_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the (N, K) shift logits against the (N,) shift labels."""
    return F.cross_entropy(logits.float(), labels)
