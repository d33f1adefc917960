"""Metrics of an anomaly detector, abnormal as the positive class."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def _check(labels: np.ndarray, anomaly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, anomaly = np.asarray(labels).ravel(), np.asarray(anomaly, dtype=np.float64).ravel()
    if labels.shape != anomaly.shape:
        raise ValueError(f"{labels.shape[0]} labels but {anomaly.shape[0]} scores")
    if set(np.unique(labels)) != {0, 1}:
        raise ValueError(
            "labels need both classes, 0 = normal and 1 = abnormal; "
            f"got values {sorted(np.unique(labels).tolist())}"
        )
    if not np.isfinite(anomaly).all():
        raise ValueError("scores contain NaN or infinity")
    return labels, anomaly


def fpr_at_tpr(labels: np.ndarray, anomaly: np.ndarray, tpr: float = 0.95) -> float:
    """False-positive rate at the first threshold that reaches ``tpr`` on the abnormal class."""
    labels, anomaly = _check(labels, anomaly)
    # Every threshold kept: dropping the points on straight stretches of the curve (tied
    # scores make them) could skip the one where ``tpr`` is first reached.
    fprs, tprs, _ = roc_curve(labels, anomaly, drop_intermediate=False)
    return float(fprs[np.searchsorted(tprs, tpr, side="left")])


def anomaly_metrics(labels: np.ndarray, anomaly: np.ndarray) -> dict:
    """AUROC, AUPRC and FPR at 95% TPR of anomaly scores (higher = more abnormal)."""
    labels, anomaly = _check(labels, anomaly)
    return {
        "auroc": float(roc_auc_score(labels, anomaly)),
        "auprc": float(average_precision_score(labels, anomaly)),
        "fpr_at_95_tpr": fpr_at_tpr(labels, anomaly, 0.95),
    }
