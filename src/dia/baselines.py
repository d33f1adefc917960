"""Reference detectors that every DIA number is compared against."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors


def knn_pixel_scores(train: torch.Tensor, test: torch.Tensor, k: int = 5) -> np.ndarray:
    """Raw-pixel kNN: mean Euclidean distance to the k nearest training images, (M,).

    ``train`` (N, C, H, W) and ``test`` (M, C, H, W) in [0, 1]; higher = more abnormal.
    """
    if k < 1 or k > train.shape[0]:
        raise ValueError(f"k={k}; expected 1 <= k <= {train.shape[0]} (the training images)")
    nn = NearestNeighbors(n_neighbors=k).fit(train.flatten(1).numpy())
    distances, _ = nn.kneighbors(test.flatten(1).numpy())
    return distances.mean(axis=1)
