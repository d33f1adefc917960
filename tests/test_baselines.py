import numpy as np
import pytest
import torch

from dia.baselines import BASELINES, baseline_aurocs, knn_pixel_scores


def test_knn_scores_far_images_higher():
    train = torch.zeros(10, 1, 4, 4) + torch.linspace(0, 0.1, 10)[:, None, None, None]
    test = torch.stack([torch.full((1, 4, 4), 0.05), torch.full((1, 4, 4), 0.9)])
    scores = knn_pixel_scores(train, test, k=3)
    assert scores.shape == (2,) and scores[1] > scores[0]


def test_knn_bad_k():
    with pytest.raises(ValueError, match="k=20"):
        knn_pixel_scores(torch.rand(5, 1, 4, 4), torch.rand(2, 1, 4, 4), k=20)


def test_standardized_knn_ignores_exposure_and_contrast():
    pattern = torch.rand(1, 1, 6, 6)
    train = torch.cat([pattern * 0.5, torch.rand(4, 1, 6, 6)])
    brighter = (pattern * 0.8 + 0.1).clamp(0, 1)  # same image, other exposure and contrast
    other = torch.rand(1, 1, 6, 6)
    test = torch.cat([brighter, other])
    plain = knn_pixel_scores(train, test, k=1)
    scaled = knn_pixel_scores(train, test, k=1, standardize=True)
    assert scaled[0] < 1e-6 < plain[0]
    assert scaled[1] > 1.0
    flat = knn_pixel_scores(train, torch.full((1, 1, 6, 6), 0.3), k=1, standardize=True)
    assert np.isfinite(flat).all()


def test_baseline_aurocs_per_split_with_k_at_most_the_training_images():
    train = torch.rand(3, 1, 4, 4) * 0.2
    test = torch.cat([torch.rand(4, 1, 4, 4) * 0.2, torch.rand(4, 1, 4, 4) * 0.2 + 0.8])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    results = baseline_aurocs(train, {"test": (test, labels), "val": (test[2:6], labels[2:6])})
    assert set(results) == set(BASELINES)
    assert results["knn_pixel_k5"] == {"k": 3, "test": 1.0, "val": 1.0}
    assert results["knn_standardized_k5"]["k"] == 3
    assert 0.0 <= results["knn_standardized_k5"]["test"] <= 1.0
