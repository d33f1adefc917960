"""The pictures a run folder holds and the page that shows them: training curves, anomaly
maps, dissolving grids, ``report.html``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..detector import DIADetector
from ..dissolve import Dissolver
from ..io import read_json, write_png, write_text
from ..reports import (
    GRID_TIMESTEPS,
    PICTURE_COUNT,
    REPORT_PICTURES,
    anomaly_map_grid,
    dissolve_grid,
    report_html,
    training_plot,
)
from .folders import DETECTOR_DIR, DIFFUSION_DIR, REPORT_NAME


def write_training_curve(out: Path) -> Path | None:
    """``out/training_curve.png`` from the saved training histories of run folder ``out``
    (None when it holds no detector history)."""
    detector_history = out / DETECTOR_DIR / "history.json"
    if not detector_history.is_file():
        return None
    diffusion_history = out / DIFFUSION_DIR / "history.json"
    return training_plot(
        read_json(detector_history),
        out / "training_curve.png",
        read_json(diffusion_history) if diffusion_history.is_file() else None,
    )


def write_report(out: Path, metrics: dict | None = None) -> Path:
    """``out/report.html``: the run's numbers (``metrics``, by default its ``metrics.json``)
    and the pictures found in ``out``, on one self-contained page; returns its path."""
    pictures = {
        name: (out / name).read_bytes() for name, _ in REPORT_PICTURES if (out / name).is_file()
    }
    path = out / REPORT_NAME
    metrics = read_json(out / "metrics.json") if metrics is None else metrics
    write_text(path, report_html(metrics, pictures))
    return path


def refresh_report(out: Path) -> None:
    """Write ``out/report.html`` again when ``out`` is an evaluated run (it has metrics), so
    that a picture drawn anew by ``dia maps`` or ``dia dissolve`` shows in it."""
    if (out / "metrics.json").is_file():
        write_report(out)


def write_anomaly_maps(
    detector: DIADetector,
    images: torch.Tensor,
    scores,
    path: Path,
    count: int = PICTURE_COUNT,
    patch: int | None = None,
    stride: int | None = None,
) -> int:
    """A PNG of the anomaly maps of the ``count`` lowest-scoring ``images`` (the most abnormal
    by ``scores``, the detector's; no label is looked at); returns how many it shows."""
    if count < 1:
        raise ValueError(f"count={count}; expected at least 1")
    scores = np.asarray(scores)
    chosen = np.argsort(scores, kind="stable")[:count]
    picked = images[torch.as_tensor(chosen)]
    maps = detector.anomaly_map(picked, patch=patch, stride=stride)
    grid = anomaly_map_grid(picked, maps, scores[chosen], detector.threshold_)
    write_png(path, grid)
    return len(picked)


def write_dissolve_grid(
    dissolver: Dissolver,
    images: torch.Tensor,
    path: Path,
    device: str | torch.device = "cpu",
    timesteps=GRID_TIMESTEPS,
) -> None:
    """A PNG of ``images`` (rows) and their versions dissolved by the fitted ``dissolver`` at
    every timestep (columns)."""
    dissolver = dissolver.to(device)
    grid = dissolve_grid(images.to(device), dissolver, list(timesteps))
    write_png(path, grid)
