"""Pictures of a run: ROC curve, score histograms and image grids such as the dissolving grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from sklearn.metrics import roc_auc_score, roc_curve


def to_pil(images: torch.Tensor, scale: int = 4) -> list[Image.Image]:
    """(N, C, H, W) in [0, 1] -> N PIL images, upscaled ``scale`` times (nearest neighbour)."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().byte().cpu()
    out = []
    for img in arr:
        mode = "L" if img.shape[0] == 1 else "RGB"
        pixels = img[0].numpy() if mode == "L" else img.permute(1, 2, 0).numpy()
        pil = Image.fromarray(pixels, mode=mode).convert("RGB")
        out.append(pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST))
    return out


def image_grid(
    columns: list[torch.Tensor], titles: list[str], scale: int = 4, pad: int = 2
) -> Image.Image:
    """A grid whose column j shows the (N, C, H, W) images ``columns[j]`` under ``titles[j]``."""
    if len(columns) != len(titles) or not columns:
        raise ValueError("need one title per column and at least one column")
    cols = [to_pil(c, scale) for c in columns]
    n = len(cols[0])
    w, h = cols[0][0].size
    header = 14
    grid = Image.new("RGB", (len(cols) * (w + pad) + pad, header + n * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for j, (col, title) in enumerate(zip(cols, titles, strict=True)):
        x = pad + j * (w + pad)
        draw.text((x + 2, 1), title, fill="black")
        for i, img in enumerate(col):
            grid.paste(img, (x, header + pad + i * (h + pad)))
    return grid


def dissolve_grid(images: torch.Tensor, dissolver, timesteps: list[int], scale: int = 4):
    """Each image (a row) next to its dissolved versions at every timestep (columns)."""
    columns, titles = [images], ["input"]
    for t in timesteps:
        columns.append(dissolver(images, t))
        titles.append(f"t={t}")
    return image_grid(columns, titles, scale)


def _figure(width: float = 5.0, height: float = 4.0):
    # A bare Figure draws with the Agg canvas and never touches pyplot's global backend, so
    # writing a plot does not disturb a notebook's or a GUI's own figures.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    return fig, fig.subplots()


def roc_plot(
    labels: np.ndarray,
    scores: np.ndarray,
    path: str | Path,
    threshold: float | None = None,
    title: str = "ROC",
) -> Path:
    """Write the ROC curve of normality ``scores`` (N,) (higher = more normal) against
    ``labels`` (N,) (1 = abnormal, the positive class) to the PNG ``path``.

    With ``threshold``, the operating point of calling every score below it abnormal is marked.
    """
    labels, anomaly = np.asarray(labels).ravel(), -np.asarray(scores, dtype=np.float64).ravel()
    fpr, tpr, _ = roc_curve(labels, anomaly)
    fig, ax = _figure(4.6, 4.4)
    ax.plot(fpr, tpr, color="tab:blue", label=f"AUROC {roc_auc_score(labels, anomaly):.3f}")
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance")
    if threshold is not None:
        called = anomaly > -threshold
        point = (called[labels == 0].mean(), called[labels == 1].mean())
        ax.plot(*point, "o", color="tab:red", label=f"threshold {threshold:.4g}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), title=title, aspect="equal")
    ax.set(xlabel="false-positive rate (normal called abnormal)")
    ax.set(ylabel="true-positive rate (abnormal found)")
    ax.legend(loc="lower right")
    return _save(fig, path)


def score_histogram(
    labels: np.ndarray,
    scores: np.ndarray,
    path: str | Path,
    threshold: float | None = None,
    title: str = "scores",
) -> Path:
    """Write overlaid histograms of the normality ``scores`` (N,) of the normal (label 0) and
    abnormal (label 1) images to the PNG ``path``, with ``threshold`` as a vertical line."""
    labels, scores = np.asarray(labels).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    bins = np.histogram_bin_edges(scores, bins=min(40, max(10, len(scores) // 10)))
    fig, ax = _figure(6.0, 3.6)
    for value, name, colour in ((0, "normal", "tab:blue"), (1, "abnormal", "tab:red")):
        chosen = scores[labels == value]
        ax.hist(chosen, bins=bins, alpha=0.55, color=colour, label=f"{name} ({len(chosen)})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label="threshold")
    ax.set(xlabel="score (higher = more normal)", ylabel="images", title=title)
    ax.legend()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
