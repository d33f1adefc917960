"""The features every score compares (docs/method.md, section 4), and the CSI score: its
feature bank, term weights and the score itself (registered as :class:`dia.scores.CSIScore`)."""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .augment import image_keys
from .config import FEATURES, DetectorConfig, ScoreConfig
from .device import autocast, memory_format
from .inference import inference_network
from .shifts import get_shift
from .views import keyed_views


@dataclass
class ShiftedFeatures:
    """Test-time-augmented outputs of the network for every shift (or, from
    :func:`plain_features`, the outputs for one un-augmented view, S = 1).

    ``z``: (K, N, d) projections averaged over the S augmentations (not normalised);
    ``logits``: (K, N, K) shift-head logits averaged the same way;
    ``h``: (K, N, d_h) encoder features averaged the same way (None when not kept).
    """

    z: torch.Tensor
    logits: torch.Tensor
    h: torch.Tensor | None = None

    def select(self, features: str) -> torch.Tensor:
        """The features the similarity term uses: ``projection`` (z) or ``encoder`` (h)."""
        if features == "projection":
            return self.z
        if features == "encoder":
            if self.h is None:
                raise ValueError("these features were computed without the encoder's")
            return self.h
        raise ValueError(f"features={features!r}; expected one of {FEATURES}")


def features(
    net: torch.nn.Module,
    images: torch.Tensor,
    detector: DetectorConfig,
    score: ScoreConfig,
    device: torch.device,
    precision: str = "fp32",
) -> ShiftedFeatures:
    """The features the score compares: :func:`shifted_features` with ``score.samples``
    test-time samples, or with ``samples`` 0 the one un-augmented view of
    :func:`plain_features`."""
    if score.samples == 0:
        return plain_features(net, images, detector, score, device, precision)
    return shifted_features(net, images, detector, score, device, precision)


@torch.inference_mode()
def shifted_features(
    net: torch.nn.Module,
    images: torch.Tensor,
    detector: DetectorConfig,
    score: ScoreConfig,
    device: torch.device,
    precision: str = "fp32",
    keys: torch.Tensor | None = None,
) -> ShiftedFeatures:
    """Run (N, C, H, W) images in [0, 1] through ``net`` under the first ``score.shifts``
    shifts and ``score.samples`` augmentations (at least one).

    Each view is made as training makes one: a random horizontal flip, the shift, then the
    training augmentation with the crop area fixed at ``score.crop_scale``; its colour jitter
    is drawn once for all the shifts of an image (:class:`~dia.views.TestViews`, the same
    as jittering after the shift, at a fraction of the cost). Its randomness is
    seeded, and an image's views follow from its own pixels (:class:`~dia.augment.KeyedAugment`;
    ``keys``, when given, are the images' :func:`~dia.augment.image_keys`), so that its
    features, hence its score, are the same alone or in any batch.
    """
    if images.shape[0] == 0:
        raise ValueError("images is empty; nothing to score")
    keys = image_keys(images) if keys is None else keys
    samples = max(score.samples, 1)
    total = None
    with _scoring_mode(net) as (fast, _):  # folded once for every sample
        for s in range(samples):
            outs = sample_features(fast, images, detector, score, device, precision, s, keys)
            total = outs if total is None else [a + b for a, b in zip(total, outs, strict=True)]
    h, z, logits = (t / samples for t in total)
    return ShiftedFeatures(z=z, logits=logits, h=h)


@torch.inference_mode()
def sample_features(
    net: torch.nn.Module,
    images: torch.Tensor,
    detector: DetectorConfig,
    score: ScoreConfig,
    device: torch.device,
    precision: str,
    sample: int,
    keys: torch.Tensor,
) -> list[torch.Tensor]:
    """[h, z, logits], each (K, N, ...), of test-time sample ``sample`` alone: the mean of
    those of samples 0 to S - 1 are :func:`shifted_features`' with S samples."""
    views = _sample_views(images, detector, score, sample)
    shift = get_shift(detector.loss.shift)

    def view(x, batch):
        return views(x, keys[batch], shift)

    with _scoring_mode(net) as (fast, fmt):
        return _features_once(fast, images, view, score, (device, precision, fmt))


def _sample_views(images: torch.Tensor, detector: DetectorConfig, score: ScoreConfig, s: int):
    """Test-time sample ``s``'s keyed views (:func:`~dia.views.keyed_views`)."""
    settings = (
        images.shape[-1],
        images.shape[1],
        (score.crop_scale, score.crop_scale),
        detector.augment.jitter_strength,
        detector.augment.jitter_prob,
        detector.augment.gray_prob,
    )
    count = get_shift(detector.loss.shift).count
    return keyed_views(settings, tuple(images.shape[1:]), s, score.shifts, count)


@torch.inference_mode()
def plain_features(
    net: torch.nn.Module,
    images: torch.Tensor,
    detector: DetectorConfig,
    score: ScoreConfig,
    device: torch.device,
    precision: str = "fp32",
) -> ShiftedFeatures:
    """Like :func:`shifted_features` but with one un-augmented view per shift (no crop, flip or
    jitter): every image's features depend on that image alone, with no randomness at all.

    ``score.samples`` and ``score.crop_scale`` are not used; ``score.shifts`` and
    ``score.batch_size`` are.
    """
    if images.shape[0] == 0:
        raise ValueError("images is empty; nothing to score")
    shift = get_shift(detector.loss.shift)

    def view(x, batch):
        return torch.cat([shift(x, k) for k in range(score.shifts)])

    with _scoring_mode(net) as (fast, fmt):
        h, z, logits = _features_once(fast, images, view, score, (device, precision, fmt))
    return ShiftedFeatures(z=z, logits=logits, h=h)


@contextlib.contextmanager
def _scoring_mode(net: torch.nn.Module):
    """Evaluation mode and the fast memory layout while scoring; yields the network to run
    (:func:`~dia.networks.inference_network`: batch norms folded into the convolutions) and
    the layout."""
    was_training = net.training
    net.eval()
    fmt = memory_format(getattr(net, "width", 0))
    try:
        yield inference_network(net).to(memory_format=fmt), fmt  # same values, faster
    finally:
        net.train(was_training)


def _features_once(net, images, view, score, runtime):
    """[h, z, logits], each (K, N, ...) for the K = ``score.shifts`` shifts, for one
    augmentation sample: ``view(x, batch)`` gives the views of the images ``x`` (those of slice
    ``batch``) under every shift, shift by shift."""
    device, precision, fmt = runtime
    shifts = score.shifts
    outs: list[list[torch.Tensor]] = [[], [], []]
    for start in range(0, images.shape[0], score.batch_size):
        batch = slice(start, start + score.batch_size)
        x = images[batch].to(device, non_blocking=True)
        views = view(x, batch).contiguous(memory_format=fmt)
        with autocast(device, precision):
            results = net.forward_features(views)
        for out, result in zip(outs, results, strict=True):
            out.append(result.float().view(shifts, x.shape[0], -1).cpu())
    return [torch.cat(out, dim=1) for out in outs]


# Images timed to estimate the feature bank's time: enough for a warm batch's cost per image
# (with 64, a call's fixed costs made knee-oa's 64 px bank look 2.3 times as long as it was).
ESTIMATE_IMAGES = 128


@torch.inference_mode()
def estimate_seconds(
    net: torch.nn.Module,
    images: torch.Tensor,
    detector: DetectorConfig,
    score: ScoreConfig,
    device: torch.device,
    precision: str = "fp32",
) -> float:
    """Seconds :func:`features` will take on ``images``: the median of three timings of one
    warm batch of at most ``ESTIMATE_IMAGES`` images and one test-time sample, so that one
    timing slowed by another process does not count.

    Keys, shifts, augmentation and the network are all timed; the augmentation's tables of
    every sample are drawn before (once a process, and not part of the bank's time after that).
    Used to reserve time for the feature bank when training runs under a wall-clock budget.
    """
    n = min(score.batch_size, ESTIMATE_IMAGES, images.shape[0])
    batch = images[:n]
    once = dataclasses.replace(score, samples=min(score.samples, 1), batch_size=n)
    for s in range(score.samples):  # draws the tables; kept for the bank
        _sample_views(batch, detector, score, s)
    features(net, batch, detector, once, device, precision)  # the remaining one-off costs
    timings = []
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        features(net, batch, detector, once, device, precision)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - t0)
    return statistics.median(timings) / n * max(score.samples, 1) * images.shape[0]


@dataclass
class FeatureBank:
    """Normalised training features per shift and the weights of the two score terms.

    ``bank``: (K, M, d); ``w_sim``, ``w_shift``: (K,).
    """

    bank: torch.Tensor
    w_sim: torch.Tensor
    w_shift: torch.Tensor


def build_bank(train: ShiftedFeatures, score: ScoreConfig | None = None) -> FeatureBank:
    """w_sim_k = 1 / mean ||f_k||, w_shift_k = 1 / mean logit of class k on shift k.

    f is the feature ``score.features`` names (z for ``projection``, as in CSI; h for
    ``encoder``); ``score`` defaults to ``ScoreConfig()``.
    """
    score = score or ScoreConfig()
    f = train.select(score.features)
    k = torch.arange(f.shape[0])
    norms = f.norm(dim=2).mean(dim=1)
    own_logit = train.logits[k, :, k].mean(dim=1)
    return FeatureBank(F.normalize(f, dim=2), 1.0 / norms, 1.0 / own_logit)


# Memory the similarities of a slice of items against the bank may take at once.
SIMILARITY_BYTES = 256 * 2**20


def score_terms(
    feats: ShiftedFeatures,
    bank: FeatureBank,
    score: ScoreConfig | None = None,
    exclude_self: bool = False,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two weighted score terms, each (N,), averaged over shifts: similarity and shift.

    The similarity is CSI's w_sim_k * max_b f_k(x).b, or with ``score.cosine`` the plain
    cosine max_b f_k(x).b / ||f_k(x)||; with ``score.neighbours`` = n > 1 the max becomes the
    mean of the n largest (all of the bank's when it has fewer). ``exclude_self`` scores the
    bank's own images leave-one-out (item n never matches bank entry n), which makes their
    scores comparable to those of unseen images. With it, ``groups`` ((N,) integers: the file,
    say a volume, each image came from) leaves a whole group out: item n never matches an
    entry of its own group, whose images would be near copies of it (neighbouring slices).
    """
    score = score or ScoreConfig()
    if score.neighbours < 1:
        raise ValueError(f"neighbours={score.neighbours}; expected at least 1")
    if groups is not None and not exclude_self:
        raise ValueError("groups leave images out only with exclude_self")
    f = feats.select(score.features)
    if f.shape[0] != bank.bank.shape[0]:
        raise ValueError(
            f"features of {f.shape[0]} shifts against a bank of {bank.bank.shape[0]}: score "
            "with the shifts the bank was built with"
        )
    if score.cosine:
        f = F.normalize(f, dim=2)
    n, m = f.shape[1], bank.bank.shape[1]
    # How many bank entries each item may match: all, or those outside its own group.
    available = torch.full((n,), m)
    index = None
    if exclude_self:
        if n != m:
            raise ValueError("exclude_self needs the features of exactly the bank's images")
        groups = torch.arange(n) if groups is None else torch.as_tensor(groups)
        if groups.shape != (n,) or groups.is_floating_point():
            raise ValueError(
                f"groups must be {n} integers; got {groups.dtype} of shape {tuple(groups.shape)}"
            )
        _, index, sizes = torch.unique(groups.cpu(), return_inverse=True, return_counts=True)
        available -= sizes[index]
        if available.min() < 1:
            raise ValueError("every image is in one group: no other group to score against")
    # The mean of each item's n best matches (n = its available count when that is fewer):
    # items of a large group have fewer entries to choose from, not fewer averaged.
    take = torch.clamp(available, max=score.neighbours)
    width = int(take.max())
    nearest = torch.empty(f.shape[0], n, dtype=f.dtype)
    # Items a slice at a time: the (K, items, M) similarities of a whole training set against
    # itself would grow with the square of its size.
    rows = max(1, SIMILARITY_BYTES // (f.element_size() * f.shape[0] * max(m, 1)))
    for start in range(0, n, rows):
        part = slice(start, min(start + rows, n))
        sim = torch.einsum("knd,kmd->knm", f[:, part], bank.bank)
        if index is not None:
            sim.masked_fill_(index[part, None] == index[None, :], float("-inf"))
        best = sim.topk(width, dim=2).values
        counted = torch.arange(width)[None, :] < take[part, None]
        nearest[:, part] = torch.where(counted, best, 0.0).sum(dim=2) / take[part]
    k = torch.arange(f.shape[0])
    w_sim = torch.ones_like(bank.w_sim) if score.cosine else bank.w_sim
    sim_term = (nearest * w_sim[:, None]).mean(dim=0)
    shift_term = (feats.logits[k, :, k] * bank.w_shift[:, None]).mean(dim=0)
    return sim_term, shift_term


def csi_score(
    feats: ShiftedFeatures,
    bank: FeatureBank,
    score: ScoreConfig | None = None,
    exclude_self: bool = False,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N,) scores (1/K) sum_k [w_sim_k max_b z_k(x).b + w_shift_k logit_k(x)[k]]; high = normal.

    ``score`` (default ``ScoreConfig()``) picks the features and the similarity
    (:func:`score_terms`) and ``shift_weight``, which scales the shift term: 1 is CSI, 0 keeps
    the similarity alone. CSI's own score is ``features="projection"``, ``cosine=False``,
    ``shift_weight=1``. ``exclude_self`` and ``groups``: as in :func:`score_terms`.
    """
    score = score or ScoreConfig()
    sim_term, shift_term = score_terms(feats, bank, score, exclude_self, groups)
    return sim_term + score.shift_weight * shift_term
