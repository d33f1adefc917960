"""Reference detectors that every DIA number is compared against."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from .networks import normalize_input


def knn_pixel_scores(
    train: torch.Tensor, test: torch.Tensor, k: int = 5, standardize: bool = False
) -> np.ndarray:
    """Pixel kNN: mean Euclidean distance to the k nearest training images, (M,).

    ``train`` (N, C, H, W) and ``test`` (M, C, H, W) in [0, 1]; higher = more abnormal.
    ``standardize`` first shifts and scales every image to zero mean and unit standard
    deviation, so that exposure and contrast differences between scans do not dominate.
    """
    if k < 1 or k > train.shape[0]:
        raise ValueError(f"k={k}; expected 1 <= k <= {train.shape[0]} (the training images)")
    a, b = train.double(), test.double()
    if standardize:  # the same per-image standardisation as the network's `image` input
        a, b = normalize_input(a, "image"), normalize_input(b, "image")
    a, b = a.flatten(1), b.flatten(1)
    nn = NearestNeighbors(n_neighbors=k).fit(a.numpy())
    distances, _ = nn.kneighbors(b.numpy())
    return distances.mean(axis=1)
