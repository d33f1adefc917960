"""Scoring new image files with a trained detector: a CSV of scores and verdicts, and a
summary per volume scored slice by slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.folder import load_images
from ..data.volumes import split_selection
from ..detector import DIADetector
from ..io import write_csv
from .steps import load_detector


def score_paths(
    out: Path,
    paths: list,
    csv_path: Path | None = None,
    fpr: float | None = None,
    skip_unreadable: bool = False,
    device: str = "auto",
    precision: str = "auto",
) -> dict:
    """``dia score``: :func:`score_files` with the detector saved in ``out`` (a run folder or
    a detector's own), into ``csv_path`` (default ``out/scored.csv``)."""
    detector = load_detector(out, device, precision)
    if csv_path is not None and csv_path.is_dir():
        raise ValueError(f"--csv {csv_path} is a folder; give the CSV file's name")
    csv_path = csv_path or out / "scored.csv"
    return score_files(detector, paths, csv_path, fpr, skip_unreadable)


def score_files(
    detector: DIADetector,
    paths: list,
    csv_path: Path,
    fpr: float | None = None,
    skip_unreadable: bool = False,
) -> dict:
    """Score image files (and the image files under folders) with a fitted ``detector`` and
    write ``path,score,threshold,abnormal`` per image to ``csv_path`` (or ``NAME-2.csv``, ...:
    the first free name, :func:`~dia.io.write_csv`); returns a summary, the file's path in
    ``csv``.

    ``fpr``: call abnormal the share of normal training images this is, instead of the
    detector's own (:meth:`~dia.detector.DIADetector.threshold_at`). ``skip_unreadable``:
    score the files that can be read and list the others, with why, in ``-unreadable.csv``
    beside ``csv_path`` (else the first one stops the scoring).
    """
    threshold = detector.threshold_ if fpr is None else detector.threshold_at(fpr)
    unreadable: list | None = [] if skip_unreadable else None
    images, files = load_images(
        paths, detector.image_size_, detector.channels_, detector.dicom_window, unreadable
    )
    scores = detector.score_samples(images)
    abnormal = scores < threshold
    rows = zip(files, scores, abnormal, strict=True)
    csv_path = write_csv(
        csv_path,
        ["path", "score", "threshold", "abnormal"],
        ([str(p), f"{score:.6f}", f"{threshold:.6f}", int(flag)] for p, score, flag in rows),
        new_name=True,
    )
    volumes = _volume_summary(files, scores, abnormal)
    summary = {
        "csv": str(csv_path),
        "images": len(files),
        "abnormal": int(abnormal.sum()),
        "threshold": threshold,
        "threshold_fpr_target": detector.fpr if fpr is None else fpr,
        "files": [str(p) for p in files],
        "scores": scores.tolist(),
        "volumes": volumes,
        "unreadable": [str(path) for path, _ in unreadable or []],
    }
    if unreadable:
        summary["unreadable_csv"] = str(
            write_csv(
                csv_path.with_name(f"{csv_path.stem}-unreadable.csv"),
                ["path", "reason"],
                ([str(path), reason] for path, reason in unreadable),
                new_name=True,
            )
        )
    if volumes:
        summary["volumes_csv"] = str(
            write_csv(
                csv_path.with_name(f"{csv_path.stem}-volumes.csv"),
                list(volumes[0]),
                (list(v.values()) for v in volumes),
                new_name=True,
            )
        )
    return summary


def _volume_summary(files: list[Path], scores: np.ndarray, abnormal: np.ndarray) -> list[dict]:
    """Per volume scored slice by slice (names ``FILE#K``), in the order first met: its
    slices (each once, however often it was named), how many were called abnormal, and the
    most abnormal slice (the lowest score). A count of flagged slices, not a decision about
    the volume: the threshold is a slice's."""
    volumes: dict[str, dict] = {}
    seen: set[str] = set()
    for name, score, flag in zip(files, scores.tolist(), abnormal.tolist(), strict=True):
        base, selection = split_selection(str(name))
        if selection is None or name.exists() or str(name) in seen:
            continue  # a 2-D file (whatever its name), or a slice named again
        seen.add(str(name))
        entry = volumes.setdefault(
            base,
            {"volume": base, "slices": 0, "abnormal_slices": 0, "most_abnormal": "",
             "lowest_score": float("inf")},
        )  # fmt: skip
        entry["slices"] += 1
        entry["abnormal_slices"] += int(flag)
        if score < entry["lowest_score"]:
            entry["most_abnormal"], entry["lowest_score"] = str(name), score
    return list(volumes.values())
