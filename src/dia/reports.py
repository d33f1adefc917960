"""Pictures of a run: image grids such as the dissolving grid and the anomaly maps."""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw


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
