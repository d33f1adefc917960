import numpy as np
import pytest

from dia.evaluation import anomaly_metrics, fpr_at_tpr


def _fpr_by_hand(labels: np.ndarray, anomaly: np.ndarray, tpr: float) -> float:
    """The lowest false-positive rate of any threshold calling at least ``tpr`` of the
    abnormal images abnormal (score >= threshold)."""
    return min(
        float((anomaly[labels == 0] >= t).mean())
        for t in np.unique(anomaly)
        if (anomaly[labels == 1] >= t).mean() >= tpr
    )


def test_abnormal_is_the_positive_class():
    labels = np.array([0, 0, 0, 1, 1])
    anomaly = np.array([0.1, 0.2, 0.6, 0.5, 0.9])  # one normal outscores one abnormal
    metrics = anomaly_metrics(labels, anomaly)
    assert metrics["auroc"] == pytest.approx(5 / 6)
    assert anomaly_metrics(labels, -anomaly)["auroc"] == pytest.approx(1 / 6)
    assert metrics["fpr_at_95_tpr"] == pytest.approx(1 / 3)  # both abnormal: down to 0.5


def test_fpr_at_tpr_with_tied_scores():
    # 20 abnormal, 20 normal; three abnormal-normal pairs share a score, which puts three
    # points on one straight stretch of the ROC curve: 95% TPR is reached at the second.
    labels = [1] * 18 + [1, 0] * 3 + [0] * 17
    anomaly = list(range(100, 82, -1)) + [50, 50, 49, 49, 48, 48] + list(range(10, -7, -1))
    labels, anomaly = np.array(labels), np.array(anomaly, dtype=float)
    assert fpr_at_tpr(labels, anomaly, 0.95) == pytest.approx(0.10)
    assert fpr_at_tpr(labels, anomaly, 0.95) == pytest.approx(_fpr_by_hand(labels, anomaly, 0.95))
    rng = np.random.default_rng(0)
    for _ in range(20):  # coarse scores: many ties
        labels = rng.permutation([0] * 15 + [1] * 10)
        anomaly = rng.integers(0, 6, size=25) + 2 * labels
        for tpr in (0.5, 0.8, 0.95):
            assert fpr_at_tpr(labels, anomaly, tpr) == pytest.approx(
                _fpr_by_hand(labels, anomaly, tpr)
            )


def test_one_class_and_broken_scores_are_refused():
    with pytest.raises(ValueError, match="both classes"):
        anomaly_metrics(np.zeros(4), np.arange(4.0))
    with pytest.raises(ValueError, match="3 labels but 2 scores"):
        anomaly_metrics(np.array([0, 1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="NaN"):
        anomaly_metrics(np.array([0, 1]), np.array([0.1, np.nan]))
