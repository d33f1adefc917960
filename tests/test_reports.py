"""The report page of a run."""

import numpy as np
from PIL import Image

from dia.reports import _moving_average, report_html, training_plot


def test_the_report_page_escapes_text_and_shows_only_the_pictures_it_has():
    metrics = {
        "auroc": 0.91234,
        "auprc": 0.8,
        "fpr_at_95_tpr": 0.3,
        "data": {"name": "scans <b>&</b>", "train": 10, "test_normal": 4, "test_abnormal": 3},
        "config": {"detector": {"dissolve": "median", "shift": "rotation"}, "budget_s": None},
    }
    page = report_html(metrics, {"roc.png": b"\x89PNG-roc"})
    assert "scans &lt;b&gt;&amp;&lt;/b&gt;, AUROC 0.912" in page and "<b>&</b>" not in page
    assert "DIA, median dissolving, rotation shifts" in page
    assert page.count("data:image/png;base64,") == 1 and 'alt="roc.png"' in page
    assert "<td>none</td>" in page  # no budget
    assert "resumed" not in page and "reused" not in page
    again = report_html({**metrics, "resumed_at_step": 50, "diffusion_reused": True}, {})
    assert "at step 50" in again and "reused: trained by an earlier start" in again
    empty = report_html({}, {})
    assert "none in this folder" in empty and "AUROC -" in empty
    assert "baselines" not in page and "baselines" not in empty


def test_the_report_page_shows_the_detector_beside_the_baselines():
    baselines = {
        "knn_pixel_k5": {"test": 0.61234, "k": 5},
        "knn_standardized_k5": {"test": 0.687, "k": 5},
    }
    page = report_html({"auroc": 0.75, "val_auroc": 0.7, "baselines": baselines}, {})
    assert "Against simple baselines (AUROC)" in page
    assert "<th>raw-pixel kNN (k=5)</th><td>0.612</td><td>-</td>" in page
    assert "<th>standardised-pixel kNN (k=5)</th><td>0.687</td><td>-</td>" in page
    assert "<th>this detector</th><td>0.750</td><td>0.700</td>" in page


def test_the_training_curve_smooths_over_a_fiftieth_of_the_steps(tmp_path):
    values = np.arange(1.0, 201.0)  # 200 steps: a window of 4
    smooth = _moving_average(values)
    assert smooth[:4].tolist() == [1.0, 1.5, 2.0, 2.5] and smooth[-1] == (197 + 200) / 2
    history = {"loss": values.tolist(), "contrastive": values.tolist(), "shift": [0.0] * 200}
    one = training_plot(history, tmp_path / "one.png")
    two = training_plot(history, tmp_path / "two.png", {"loss": [1.0, 0.5]})
    with Image.open(one) as single, Image.open(two) as double:
        assert double.width > 1.8 * single.width and double.height == single.height
