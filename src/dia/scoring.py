"""The CSI score (METHOD.md section 4): feature bank, term weights and the score itself."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .augment import SimCLRAugment
from .config import DetectorConfig, ScoreConfig
from .device import autocast
from .shifts import NUM_SHIFTS, shift


@dataclass
class ShiftedFeatures:
    """Test-time-augmented outputs of the network for every shift.

    ``z``: (K, N, d) projections averaged over the S augmentations (not normalised);
    ``logits``: (K, N, K) shift-head logits averaged the same way.
    """

    z: torch.Tensor
    logits: torch.Tensor


@torch.no_grad()
def shifted_features(
    net: torch.nn.Module,
    images: torch.Tensor,
    detector: DetectorConfig,
    score: ScoreConfig,
    device: torch.device,
    precision: str = "fp32",
) -> ShiftedFeatures:
    """Run (N, C, H, W) images in [0, 1] through ``net`` under every shift and S augmentations.

    The augmentation is the training one with the crop area fixed at ``score.crop_scale`` plus a
    random horizontal flip; its randomness is seeded per sample, so the result is deterministic.
    """
    if images.shape[0] == 0:
        raise ValueError("images is empty; nothing to score")
    was_training = net.training
    net.eval()
    augment = SimCLRAugment(
        images.shape[-1],
        images.shape[1],
        crop_scale=(score.crop_scale, score.crop_scale),
        jitter_strength=detector.jitter_strength,
        jitter_prob=detector.jitter_prob,
        gray_prob=detector.gray_prob,
        flip=True,
    )
    z_sum, logit_sum = None, None
    devices = [device] if device.type == "cuda" else []
    for s in range(score.samples):
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(10_000 + s)
            if device.type == "cuda":
                torch.cuda.manual_seed_all(10_000 + s)
            zs, logits = _features_once(
                net, images, detector.shift, augment, score, device, precision
            )
        z_sum = zs if z_sum is None else z_sum + zs
        logit_sum = logits if logit_sum is None else logit_sum + logits
    net.train(was_training)
    return ShiftedFeatures(z=z_sum / score.samples, logits=logit_sum / score.samples)


def _features_once(net, images, shift_kind, augment, score, device, precision):
    zs, logits = [], []
    for start in range(0, images.shape[0], score.batch_size):
        x = images[start : start + score.batch_size].to(device, non_blocking=True)
        batch = torch.cat([augment(shift(x, k, shift_kind)) for k in range(NUM_SHIFTS)])
        with autocast(device, precision):
            z, logit = net(batch)
        zs.append(z.float().view(NUM_SHIFTS, x.shape[0], -1).cpu())
        logits.append(logit.float().view(NUM_SHIFTS, x.shape[0], -1).cpu())
    return torch.cat(zs, dim=1), torch.cat(logits, dim=1)


@dataclass
class FeatureBank:
    """Normalised training features per shift and the weights of the two score terms.

    ``bank``: (K, M, d); ``w_sim``, ``w_shift``: (K,).
    """

    bank: torch.Tensor
    w_sim: torch.Tensor
    w_shift: torch.Tensor


def build_bank(train: ShiftedFeatures) -> FeatureBank:
    """w_sim_k = 1 / mean ||z_k||, w_shift_k = 1 / mean logit of class k on shift k."""
    k = torch.arange(NUM_SHIFTS)
    norms = train.z.norm(dim=2).mean(dim=1)
    own_logit = train.logits[k, :, k].mean(dim=1)
    return FeatureBank(F.normalize(train.z, dim=2), 1.0 / norms, 1.0 / own_logit)


def score_terms(
    feats: ShiftedFeatures, bank: FeatureBank, exclude_self: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two weighted score terms, each (N,), averaged over shifts: similarity and shift.

    ``exclude_self`` scores the bank's own images leave-one-out (item n never matches bank
    entry n), which makes their scores comparable to those of unseen images.
    """
    sim = torch.einsum("knd,kmd->knm", feats.z, bank.bank)
    if exclude_self:
        n = sim.shape[1]
        if n != sim.shape[2]:
            raise ValueError("exclude_self needs the features of exactly the bank's images")
        sim = sim.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    k = torch.arange(NUM_SHIFTS)
    sim_term = (sim.max(dim=2).values * bank.w_sim[:, None]).mean(dim=0)
    shift_term = (feats.logits[k, :, k] * bank.w_shift[:, None]).mean(dim=0)
    return sim_term, shift_term


def csi_score(feats: ShiftedFeatures, bank: FeatureBank, exclude_self: bool = False):
    """(N,) scores (1/K) sum_k [w_sim_k max_b z_k(x).b + w_shift_k logit_k(x)[k]]; high = normal."""
    sim_term, shift_term = score_terms(feats, bank, exclude_self)
    return sim_term + shift_term
