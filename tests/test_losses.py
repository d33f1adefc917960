import math

import pytest
import torch

from dia.config import replace_settings
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
    m = contrastive_mask(group_size=2, dissolved_of=torch.arange(2), mask="shifted_removed")
    assert m.shape == (4, 6)
    assert m.nonzero().tolist() == [[0, 0], [0, 4], [1, 1], [1, 5], [2, 2], [2, 4], [3, 3], [3, 5]]
    # one dissolved item, a copy of image 1: only image 1's anchors lose it
    m = contrastive_mask(group_size=2, dissolved_of=torch.tensor([1]), mask="shifted_removed")
    assert m.nonzero().tolist() == [[0, 0], [1, 1], [1, 4], [2, 2], [3, 3], [3, 4]]
    assert contrastive_mask(2, None, "shifted_removed").shape == (4, 4)


def test_loss_with_a_partial_dissolved_view_matches_hand_computation():
    # Items 0-3 as before; item 4 alone is dissolved, a copy of image 0 (dissolved_of = [0]).
    denominators = {0: [1, 2, 3], 1: [0, 2, 3, 4], 2: [0, 1, 3], 3: [0, 1, 2, 4]}
    got = contrastive_loss(Z[:5], 2, 0.5, "shifted_removed", dissolved_of=torch.tensor([0]))
    assert got.item() == pytest.approx(hand_loss(denominators), rel=1e-5)
    # a whole third group named explicitly is the default layout
    full = contrastive_loss(Z, 2, dissolved_of=torch.arange(2))
    assert full.item() == pytest.approx(contrastive_loss(Z, 2).item(), rel=1e-6)
    with pytest.raises(ValueError, match="dissolved_of names 2"):
        contrastive_loss(Z[:5], 2, dissolved_of=torch.arange(2))


def _train_tiny(monkeypatch, epochs: int = 1, **settings) -> tuple[list, dict]:
    """Train a width-4 detector on 8 random images, 8 a step, with Gaussian dissolving and
    ``settings``; returns each step's (rows, group size, dissolved_of) given to the
    contrastive loss, and the history."""
    import dia.training
    from dia.config import DetectorConfig
    from dia.dissolve import build_dissolver
    from dia.training import DetectorTrainer

    calls = []

    def spy(z, group_size, temperature, mask, dissolved_of=None):
        calls.append((z.shape[0], group_size, dissolved_of))
        return contrastive_loss(z, group_size, temperature, mask, dissolved_of)

    monkeypatch.setattr(dia.training, "contrastive_loss", spy)
    config = replace_settings(
        DetectorConfig(),
        dissolve="gaussian",
        width=4,
        batch_size=8,
        epochs=epochs,
        max_seconds=None,
        dissolve_cache_steps=2,
        **settings,
    )
    blur, images = build_dissolver("gaussian"), torch.rand(8, 1, 8, 8)
    trainer = DetectorTrainer(config, images, dissolver=blur, device=torch.device("cpu"))
    return calls, trainer.train(progress=False)[1]


def test_the_trainer_dissolves_the_configured_share_of_each_batch(monkeypatch):
    calls, history = _train_tiny(monkeypatch, dissolve_fraction=0.25)
    rows, group_size, dissolved_of = calls[0]
    # 4 shifts of 8 images in v1 and v2, 4 shifts of 2 images dissolved, shift-major
    assert (rows, group_size) == (72, 32)
    assert dissolved_of.tolist() == [0, 1, 8, 9, 16, 17, 24, 25]
    assert history["steps"] == 1
    with pytest.raises(ValueError, match="dissolve_fraction"):
        _train_tiny(monkeypatch, dissolve_fraction=0.0)


def test_dissolved_views_join_after_the_configured_share_of_training(monkeypatch):
    calls, history = _train_tiny(monkeypatch, epochs=4, dissolve_start=0.5)
    # Steps 0 and 1 are plain CSI (two views of 4 shifts of 8 images), steps 2 and 3 add the
    # dissolved view.
    assert [(rows, dissolved is not None) for rows, _, dissolved in calls] == [
        (64, False),
        (64, False),
        (96, True),
        (96, True),
    ]
    assert (history["steps"], history["dissolved_steps"]) == (4, 2)
    with pytest.raises(ValueError, match="dissolve_start"):
        _train_tiny(monkeypatch, dissolve_start=1.0)


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
