"""Losses of the amplifying framework (METHOD.md section 3, steps 5 to 7). Pure functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

MASKS = ("shifted_removed", "none")


def contrastive_mask(group_size: int, groups: int, mask: str, device=None) -> torch.Tensor:
    """Boolean (2*M, G*M) matrix of the pairs *excluded* from each anchor's denominator.

    Items are laid out as G groups of M = K*B items: group 0 is view v1, group 1 is v2 and
    group 2 (if present) the dissolved view v3; item i of every group is the same image under
    the same shift. Excluded: the anchor itself, and with ``shifted_removed`` the dissolved
    copy (group 2, same i) of the anchor's image and shift.
    """
    if mask not in MASKS:
        raise ValueError(f"mask={mask!r}; expected one of {MASKS}")
    m = group_size
    rows = torch.arange(2 * m, device=device)
    excluded = torch.zeros(2 * m, groups * m, dtype=torch.bool, device=device)
    excluded[rows, rows] = True
    if mask == "shifted_removed" and groups == 3:
        excluded[rows, 2 * m + rows % m] = True
    return excluded


def contrastive_loss(
    z: torch.Tensor, group_size: int, temperature: float = 0.5, mask: str = "shifted_removed"
) -> torch.Tensor:
    """NT-Xent over (G*M, d) projections: v1[i] and v2[i] are positives; v3 only in denominators.

    ``z`` is unnormalised (it is L2-normalised here). Returns the mean over the 2*M anchors of
    -log(exp(s_pos) / sum over non-excluded j of exp(s_ij)), with s_ij = z_i . z_j / temperature.
    """
    n = z.shape[0]
    if n % group_size or n // group_size not in (2, 3):
        raise ValueError(f"z has {n} rows; expected 2 or 3 groups of group_size={group_size}")
    z = F.normalize(z.float(), dim=1)
    m = group_size
    sim = z[: 2 * m] @ z.T / temperature
    sim = sim.masked_fill(contrastive_mask(m, n // m, mask, z.device), float("-inf"))
    rows = torch.arange(2 * m, device=z.device)
    positives = (rows + m) % (2 * m)
    return -(sim[rows, positives] - torch.logsumexp(sim, dim=1)).mean()


def shift_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the (N, K) shift logits against the (N,) shift labels."""
    return F.cross_entropy(logits.float(), labels)
