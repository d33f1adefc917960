"""How well a dissolver dissolves (docs/method.md, section 1), measured on normal images it
was not trained on: how much fine detail it removes or adds, how well a diffusion model
denoises at the low-noise end dissolving uses, and how easily dissolved images are told from
clean ones by global statistics (a negative that is easy to tell apart teaches little)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .diffusion.model import DiffusionModel

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """The Laplacian of each channel of (N, C, H, W) images, inside the border: (N, C, H-2, W-2)."""
    n, c, h, w = x.shape
    kernel = _LAPLACIAN.to(x.device, torch.float32)[None, None]
    return F.conv2d(x.float().reshape(n * c, 1, h, w), kernel).reshape(n, c, h - 2, w - 2)


def detail_energy(x: torch.Tensor) -> torch.Tensor:
    """(N,) high-frequency energy of each image: the mean square of its Laplacian."""
    return laplacian(x).pow(2).flatten(1).mean(1)


def detail_change(x: torch.Tensor, dissolved: torch.Tensor) -> dict[str, float]:
    """``detail_ratio``: the dissolved images' high-frequency energy over the inputs', the mean
    of the per-image ratios (dissolving removes detail: below 1); ``share_added_detail``: the
    share of images whose energy rises."""
    before, after = detail_energy(x), detail_energy(dissolved)
    ratio = after / before.clamp_min(1e-12)
    return {
        "detail_ratio": float(ratio.mean()),
        "share_added_detail": float((after > before).float().mean()),
    }


@torch.no_grad()
def denoise_mse_ratio(
    model: DiffusionModel, x: torch.Tensor, t: int, generator: torch.Generator
) -> float:
    """Noise (N, C, H, W) images in [0, 1] to step ``t`` for real, predict x0 in one step and
    divide its squared error by the noisy image's, both in the model's space: far below 1 for a
    model that denoises at ``t``."""
    model.eval()
    y = model.to_model_space(x.to(model.device))
    noise = torch.randn(y.shape, generator=generator).to(y)
    y_t = model.noised(y, t, noise)
    x0 = model.predict_x0(y_t, t).clamp(-1.0, 1.0)
    return float(F.mse_loss(x0, y) / F.mse_loss(y_t, y).clamp_min(1e-12))


def global_statistics(x: torch.Tensor) -> np.ndarray:
    """(N, 4) per-image mean, standard deviation, log high-frequency energy and a noise level
    (the median absolute Laplacian, scaled as a Gaussian's deviation)."""
    flat = x.float().flatten(1)
    lap = laplacian(x).abs().flatten(1)
    noise = lap.median(1).values / (0.6745 * 20**0.5)  # the Laplacian of unit noise: sd sqrt(20)
    energy = torch.log(detail_energy(x).clamp_min(1e-12))
    return torch.stack([flat.mean(1), flat.std(1), energy, noise], 1).cpu().numpy()


def separability_auroc(clean: torch.Tensor, dissolved: torch.Tensor, seed: int = 0) -> float:
    """How well a logistic regression on :func:`global_statistics` tells dissolved images from
    clean ones: the AUROC of its 5-fold cross-validated predictions (0.5: not at all)."""
    features = np.concatenate([global_statistics(clean), global_statistics(dissolved)])
    labels = np.r_[np.zeros(len(clean)), np.ones(len(dissolved))]
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    scores = cross_val_predict(model, features, labels, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(labels, scores))


def dissolver_quality(
    dissolver, images: torch.Tensor, timesteps, model: DiffusionModel | None = None, seed: int = 0
) -> dict:
    """Every measure of this module for ``dissolver`` (a :class:`~dia.dissolve.Dissolver`) on
    (N, C, H, W) images in [0, 1], at each of ``timesteps``: ``{"t": [...], FIELD: [one value a
    t], ...}``; ``denoise_mse_ratio`` only with the diffusion ``model``."""
    out: dict = {"t": [int(t) for t in timesteps]}
    generator = torch.Generator().manual_seed(seed)
    for t in out["t"]:
        with torch.no_grad():
            dissolved = dissolver(images, t)
        row = detail_change(images, dissolved)
        row["separability_auroc"] = separability_auroc(images, dissolved, seed)
        if model is not None:
            row["denoise_mse_ratio"] = denoise_mse_ratio(model, images, t, generator)
        for key, value in row.items():
            out.setdefault(key, []).append(round(value, 4))
    return out
