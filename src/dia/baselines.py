"""Reference detectors that every DIA number is compared against."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from .evaluation import anomaly_metrics
from .networks import normalize_input

# The pixel kNN baselines every DIA number is read beside: key -> (label, standardize).
_KNN = {
    "knn_pixel_k5": ("raw-pixel kNN (k=5)", False),
    "knn_standardized_k5": ("standardised-pixel kNN (k=5)", True),
}
BASELINES = {key: label for key, (label, _) in _KNN.items()}
BASELINE_K = 5


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


def baseline_aurocs(
    train: torch.Tensor, splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, dict]:
    """AUROC (abnormal positive) of each of :data:`BASELINES` on each labelled split.

    ``train`` (N, C, H, W) as the detector saw it; ``splits`` name -> (images (M, C, H, W),
    labels (M,)). Returns key -> {split: AUROC, ``k``: the neighbours used, at most N}.
    """
    k = min(BASELINE_K, train.shape[0])
    results = {}
    for key, (_, standardize) in _KNN.items():
        results[key] = {"k": k}
        for split, (images, labels) in splits.items():
            scores = knn_pixel_scores(train, images, k, standardize)
            results[key][split] = anomaly_metrics(labels.numpy(), scores)["auroc"]
    return results
