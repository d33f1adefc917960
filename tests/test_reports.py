"""The report page of a run."""

from dia.reports import report_html


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
    empty = report_html({}, {})
    assert "none in this folder" in empty and "AUROC -" in empty
