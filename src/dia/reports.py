"""Pictures of a run: ROC curve, score histograms, dissolving grids and anomaly maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from sklearn.metrics import roc_auc_score, roc_curve

# What a run draws besides its curves: how many test images, and the dissolving timesteps.
PICTURE_COUNT = 8
GRID_TIMESTEPS = (0, 30, 50, 100, 200, 400)


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
    columns: list[torch.Tensor],
    titles: list[str],
    scale: int = 4,
    pad: int = 2,
    row_labels: list[str] | None = None,
) -> Image.Image:
    """A grid whose column j shows the (N, C, H, W) images ``columns[j]`` under ``titles[j]``.

    ``row_labels``, one per image, are written to the right of their rows.
    """
    if len(columns) != len(titles) or not columns:
        raise ValueError("need one title per column and at least one column")
    cols = [to_pil(c, scale) for c in columns]
    n = len(cols[0])
    if row_labels is not None and len(row_labels) != n:
        raise ValueError(f"{len(row_labels)} row labels for {n} rows; expected one per row")
    w, h = cols[0][0].size
    header = 14
    label_w = 0
    if row_labels:
        measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        label_w = 6 + max(int(measure.textlength(label)) for label in row_labels)
    width = len(cols) * (w + pad) + pad + label_w
    grid = Image.new("RGB", (width, header + n * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for j, (col, title) in enumerate(zip(cols, titles, strict=True)):
        x = pad + j * (w + pad)
        draw.text((x + 2, 1), title, fill="black")
        for i, img in enumerate(col):
            grid.paste(img, (x, header + pad + i * (h + pad)))
    for i, label in enumerate(row_labels or []):
        top = header + pad + i * (h + pad)
        draw.text((len(cols) * (w + pad) + pad + 2, top + 2), label, fill="black")
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


def heat_overlay(images: torch.Tensor, maps: torch.Tensor, alpha: float = 0.7) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] tinted red where maps (N, H, W) are positive, (N, 3, H, W).

    Each map is divided by its own largest positive value, so the reddest pixel of every image
    marks that image's most abnormal region (colours compare regions within an image, not
    across images); zero and negative values leave the image as it is.
    """
    rgb = images.float().expand(-1, 3, -1, -1) if images.shape[1] == 1 else images.float()
    heat = maps.float().clamp_min(0)
    peak = heat.flatten(1).amax(dim=1).clamp_min(1e-12)
    weight = alpha * (heat / peak[:, None, None])[:, None]
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return (rgb * (1 - weight) + red * weight).clamp(0, 1)


def anomaly_map_grid(
    images: torch.Tensor,
    maps,
    scores=None,
    threshold: float | None = None,
    scale: int = 4,
) -> Image.Image:
    """Rows of: image (N, C, H, W), its map (N, H, W) as a red overlay (:func:`heat_overlay`,
    normalised per image), and a caption with the map's largest value and, when given, the score
    and the decision (abnormal when the score is below ``threshold``)."""
    maps = torch.as_tensor(maps).float()
    if maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(
            f"maps have shape {tuple(maps.shape)}; expected (N, H, W) = "
            f"{(images.shape[0], *images.shape[-2:])}"
        )
    if scores is not None and len(scores) != images.shape[0]:
        raise ValueError(f"{len(scores)} scores for {images.shape[0]} images")
    labels = []
    for i in range(images.shape[0]):
        parts = []
        if scores is not None:
            parts.append(f"score {float(scores[i]):.3f}")
            if threshold is not None:
                parts.append("abnormal" if float(scores[i]) < threshold else "normal")
        parts.append(f"map max {float(maps[i].max()):+.3g}")
        labels.append("  ".join(parts))
    overlay = heat_overlay(images.cpu(), maps)
    return image_grid([images.cpu(), overlay], ["input", "map"], scale, row_labels=labels)
