import pytest
import torch

from dia.baselines import knn_pixel_scores


def test_knn_scores_far_images_higher():
    train = torch.zeros(10, 1, 4, 4) + torch.linspace(0, 0.1, 10)[:, None, None, None]
    test = torch.stack([torch.full((1, 4, 4), 0.05), torch.full((1, 4, 4), 0.9)])
    scores = knn_pixel_scores(train, test, k=3)
    assert scores.shape == (2,) and scores[1] > scores[0]


def test_knn_bad_k():
    with pytest.raises(ValueError, match="k=20"):
        knn_pixel_scores(torch.rand(5, 1, 4, 4), torch.rand(2, 1, 4, 4), k=20)
