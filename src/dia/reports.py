"""Pictures of a run: image grids such as the dissolving grid."""

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
