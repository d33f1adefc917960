import math

import pytest
import torch

from dia.losses import contrastive_loss, contrastive_mask, shift_loss

# Two images, one shift: groups v1 = items 0-1, v2 = items 2-3, v3 (dissolved) = items 4-5.
ANGLES = [0.0, 1.0, 0.3, 1.4, 0.1, 2.0]
Z = torch.tensor([[math.cos(a), math.sin(a)] for a in ANGLES]) * torch.tensor(
    [[1.0], [2.0], [0.5], [3.0], [1.5], [0.7]]
)  # unnormalised on purpose: the loss must normalise


def sim(i, j, tau=0.5):
    return math.cos(ANGLES[i] - ANGLES[j]) / tau


def hand_loss(denominators: dict[int, list[int]]) -> float:
    positives = {0: 2, 1: 3, 2: 0, 3: 1}
    terms = []
    for anchor, pos in positives.items():
        denom = sum(math.exp(sim(anchor, j)) for j in denominators[anchor])
        terms.append(-math.log(math.exp(sim(anchor, pos)) / denom))
    return sum(terms) / len(terms)


def test_loss_matches_hand_computation_with_shifted_removed_mask():
    # Each anchor sees everything but itself and the dissolved copy of its own image.
    denominators = {0: [1, 2, 3, 5], 1: [0, 2, 3, 4], 2: [0, 1, 3, 5], 3: [0, 1, 2, 4]}
    got = contrastive_loss(Z, group_size=2, temperature=0.5, mask="shifted_removed")
    assert got.item() == pytest.approx(hand_loss(denominators), rel=1e-5)


def test_loss_matches_hand_computation_without_mask():
    denominators = {0: [1, 2, 3, 4, 5], 1: [0, 2, 3, 4, 5], 2: [0, 1, 3, 4, 5], 3: [0, 1, 2, 4, 5]}
    got = contrastive_loss(Z, group_size=2, temperature=0.5, mask="none")
    assert got.item() == pytest.approx(hand_loss(denominators), rel=1e-5)


def test_loss_without_dissolved_group_is_plain_nt_xent():
    denominators = {0: [1, 2, 3], 1: [0, 2, 3], 2: [0, 1, 3], 3: [0, 1, 2]}
    got = contrastive_loss(Z[:4], group_size=2, temperature=0.5)
    assert got.item() == pytest.approx(hand_loss(denominators), rel=1e-5)


def test_dissolved_negatives_raise_the_loss():
    assert contrastive_loss(Z, 2, mask="none") > contrastive_loss(Z[:4], 2)


def test_mask_layout():
    m = contrastive_mask(group_size=2, groups=3, mask="shifted_removed")
    assert m.shape == (4, 6)
    assert m.nonzero().tolist() == [[0, 0], [0, 4], [1, 1], [1, 5], [2, 2], [2, 4], [3, 3], [3, 5]]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="mask='sideways'"):
        contrastive_loss(Z, 2, mask="sideways")
    with pytest.raises(ValueError, match="group_size=4"):
        contrastive_loss(Z, 4)


def test_shift_loss_is_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 3])
    expected = -(math.log(math.exp(2) / (math.exp(2) + 3)) + math.log(math.e / (math.e + 3))) / 2
    assert shift_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
