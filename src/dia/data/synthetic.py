"""The built-in data set: procedural tiny chest X-rays, abnormal ones with one small nodule.

Every image is drawn from the same anatomy model (body, two lung fields, mediastinum and
spine, heart shadow, ribs, smooth tissue texture, exposure); an abnormal image adds one faint
round nodule inside a lung field. Global variation between images (position, size, exposure,
texture) is much larger than the nodule, so the anomaly is fine-grained: whole-image pixel
distances barely see it, while a detector of local structure can.

Geometry works in normalised coordinates (-1..1 across the image) so the same anatomy is
drawn at any ``image_size``; lesion radii are given in pixels of a 32 px image and scaled.
"""

from __future__ import annotations

import numpy as np
import torch

from dia.data.errors import DataError
from dia.data.types import ImageData

# Chosen so that a raw-pixel 5-NN detector reaches only about 0.6 AUROC on the default set
# (1000 train, 500 test) while the nodule stays visible to the eye at 4x zoom.
DEFAULT_LESION_CONTRAST = 0.25
DEFAULT_LESION_RADIUS = (1.5, 3.0)
_REFERENCE_SIZE = 32
_PIXELS_PER_CHUNK = 1 << 20


def make_synthetic(
    n_train: int = 1000,
    n_val: int = 200,
    n_test: int = 500,
    image_size: int = 32,
    seed: int = 0,
    lesion_contrast: float = DEFAULT_LESION_CONTRAST,
    lesion_radius: tuple[float, float] = DEFAULT_LESION_RADIUS,
) -> ImageData:
    """Seeded synthetic set: train (n_train,1,S,S) normal; val/test half normal, half nodule.

    ``lesion_contrast`` is the nodule's peak added to the tissue density before exposure
    (lungs sit near 0.25, soft tissue near 0.65), varied by +-25% per image;
    ``lesion_radius`` is the (min, max) nodule radius in pixels of a 32 px image.
    Val and test hold n//2 abnormal images in a seeded order; n_val=0 gives no val set.
    """
    _check_counts(n_train, n_val, n_test, image_size)
    train_seq, val_seq, test_seq, _ = _streams(seed)
    lesion = {"lesion_contrast": lesion_contrast, "lesion_radius": lesion_radius}

    train = render_images(n_train, image_size, train_seq, np.zeros(n_train, bool), **lesion)
    test, test_labels = _balanced_split(n_test, image_size, test_seq, lesion)
    val = val_labels = None
    if n_val > 0:
        val, val_labels = _balanced_split(n_val, image_size, val_seq, lesion)

    info = {
        "generator": "chest-nodule",
        "seed": seed,
        "lesion_contrast": lesion_contrast,
        "lesion_radius": list(lesion_radius),
    }
    return ImageData(
        name="synthetic",
        train=_to_tensor(train),
        test=_to_tensor(test),
        test_labels=test_labels,
        val=None if val is None else _to_tensor(val),
        val_labels=val_labels,
        info=info,
    )


def synthetic_lesions(
    split: str,
    n: int,
    image_size: int = 32,
    seed: int = 0,
    lesion_contrast: float = DEFAULT_LESION_CONTRAST,
    lesion_radius: tuple[float, float] = DEFAULT_LESION_RADIUS,
) -> torch.Tensor:
    """What the nodule adds to each image of the ``val`` or ``test`` split of n images that
    :func:`make_synthetic` draws with these settings: (n, 1, S, S), zero for normal images.

    Each image minus the same image drawn without its nodule: the ground truth of where the
    anomaly is, for measuring anomaly maps.
    """
    streams = dict(zip(("val", "test"), _streams(seed)[1:3], strict=True))
    if split not in streams:
        raise ValueError(f"split={split!r}; expected 'val' or 'test'")
    lesion = {"lesion_contrast": lesion_contrast, "lesion_radius": lesion_radius}
    images, labels, image_seq = _balanced_split(n, image_size, streams[split], lesion, True)
    plain = render_images(n, image_size, image_seq, np.zeros(n, bool), **lesion)
    return _to_tensor(images - plain)


def make_synthetic_abnormal(
    n: int,
    image_size: int = 32,
    seed: int = 0,
    lesion_contrast: float = DEFAULT_LESION_CONTRAST,
    lesion_radius: tuple[float, float] = DEFAULT_LESION_RADIUS,
) -> torch.Tensor:
    """n abnormal training images (n,1,S,S), to contaminate the train set of ``seed``."""
    # A stream of its own: asking for contamination leaves train, val and test unchanged.
    stream = _streams(seed)[3]
    images = render_images(n, image_size, stream, np.ones(n, bool), lesion_contrast, lesion_radius)
    return _to_tensor(images)


def render_images(
    n: int,
    image_size: int,
    seed: int | np.random.SeedSequence,
    with_lesion: np.ndarray,
    lesion_contrast: float = DEFAULT_LESION_CONTRAST,
    lesion_radius: tuple[float, float] = DEFAULT_LESION_RADIUS,
) -> np.ndarray:
    """Draw n images (n,S,S) float32 in [0,1]; a nodule is added where ``with_lesion`` is True.

    Every random draw happens whether or not an image gets a lesion, so the same seed with a
    different ``with_lesion`` gives the same images except inside the nodules.
    """
    with_lesion = np.asarray(with_lesion, dtype=bool)
    if with_lesion.shape != (n,):
        raise DataError(f"with_lesion must have shape ({n},), got {with_lesion.shape}")
    if lesion_contrast < 0:
        raise DataError(f"lesion_contrast must be >= 0, got {lesion_contrast}")
    low, high = lesion_radius
    if not 0 < low <= high:
        raise DataError(
            f"lesion_radius must be (low, high) with 0 < low <= high, got {lesion_radius}"
        )

    rng = np.random.default_rng(seed)
    # Chunks bound the memory of the (n,S,S) temporaries; the chunk length depends only on S,
    # so a seed always gives the same images.
    chunk = max(1, _PIXELS_PER_CHUNK // (image_size * image_size))
    parts = [
        _render(rng, with_lesion[start : start + chunk], image_size, lesion_contrast, low, high)
        for start in range(0, n, chunk)
    ]
    if not parts:
        return np.zeros((0, image_size, image_size), dtype=np.float32)
    return np.concatenate(parts)


def _render(
    rng: np.random.Generator,
    with_lesion: np.ndarray,
    image_size: int,
    lesion_contrast: float,
    radius_low: float,
    radius_high: float,
) -> np.ndarray:
    """The anatomy model for len(with_lesion) images, (n,S,S) float32 in [0,1]."""
    n = len(with_lesion)
    # Pixel centres in normalised coordinates, shape (1, S, S) to broadcast over images.
    # float32 throughout: it halves the time and memory of every per-pixel operation.
    axis = ((np.arange(image_size) + 0.5) / image_size * 2 - 1).astype(np.float32)
    v, u = np.meshgrid(axis, axis, indexing="ij")
    u, v = u[None], v[None]
    px = 2.0 / image_size  # one pixel in normalised units

    def draw(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, size=(n, 1, 1)).astype(np.float32)

    # Patient position and size: the largest source of global variation.
    shift_u, shift_v, scale = draw(-0.08, 0.08), draw(-0.08, 0.08), draw(0.88, 1.05)
    uu, vv = (u - shift_u) / scale, (v - shift_v) / scale

    body = _soft_inside(_ellipse(uu, vv, 0.0, 0.1, draw(0.82, 0.98), draw(1.05, 1.25)), px * 3)
    density = 0.08 + body * draw(0.55, 0.7)

    # Two lung fields, mirrored but drawn independently, tilted so their tops lean inwards.
    lungs = np.zeros_like(density)
    lung_shape = []
    for side in (-1.0, 1.0):
        cu = side * draw(0.32, 0.42)
        cv = draw(-0.1, 0.04)
        au, av = draw(0.22, 0.31), draw(0.55, 0.7)
        angle = side * draw(0.0, 0.18)
        power = draw(2.0, 3.0)
        mask = _soft_inside(_ellipse(uu, vv, cu, cv, au, av, angle, power), px * 1.5)
        lungs = np.maximum(lungs, mask)
        lung_shape.append((cu, cv, au, av, angle))

    # The heart shadow hides the lower inner part of the lung on the image's right.
    heart = _soft_inside(
        _ellipse(uu, vv, draw(0.08, 0.2), draw(0.3, 0.42), draw(0.22, 0.32), draw(0.2, 0.28)),
        px * 2,
    )
    lung_visible = lungs * (1 - 0.8 * heart)
    density = density - lung_visible * draw(0.3, 0.42) + heart * draw(0.03, 0.08)

    # Mediastinum and spine: bright vertical bands around the midline.
    mid = uu - draw(-0.04, 0.04)
    density += body * draw(0.06, 0.12) * np.exp(-0.5 * (mid / draw(0.1, 0.16)) ** 2)
    density += body * draw(0.04, 0.09) * np.exp(-0.5 * (mid / draw(0.04, 0.06)) ** 2)

    # Ribs: curved stripes drooping towards the sides, seen mostly over the dark lungs.
    rib_phase = 2 * np.pi * (draw(3.5, 5.0) * (vv - draw(0.4, 0.8) * uu**2) + draw(0, 1))
    ribs = np.clip(np.sin(rib_phase), 0, None) ** 2
    density += ribs * (0.3 + 0.7 * lungs) * draw(0.03, 0.07)

    # Smooth tissue texture: low-frequency noise that differs in every image.
    density += _smooth_noise(rng, n, image_size, sigma=0.12 / px) * draw(0.02, 0.045)

    # Lesion: parameters are drawn for every image; only masked images get the nodule.
    centre_u, centre_v = _nodule_centres(rng, n, lung_shape)
    radius = draw(radius_low, radius_high) * (image_size / _REFERENCE_SIZE)
    amplitude = lesion_contrast * draw(0.75, 1.25)
    dist = np.sqrt((uu - centre_u) ** 2 + (vv - centre_v) ** 2) / px * scale
    blob = _sigmoid_edge((dist - radius) / 0.45)
    density += with_lesion[:, None, None] * amplitude * blob * lungs

    # Exposure: global gain, offset and gamma, then sensor noise.
    gain, offset, gamma = draw(0.8, 1.2), draw(-0.1, 0.1), draw(0.8, 1.25)
    image = np.clip((density - 0.4) * gain + 0.4 + offset, 0, 1) ** gamma
    image = image + rng.normal(0, 0.012, size=image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


def _nodule_centres(
    rng: np.random.Generator, n: int, lung_shape: list[tuple[np.ndarray, ...]]
) -> tuple[np.ndarray, np.ndarray]:
    """Nodule centres (n,1,1) in the frame of the lung ellipses, inside one of the two lungs."""
    right = rng.integers(0, 2, size=n) == 1
    left_lung, right_lung = lung_shape
    cu, cv, au, av, angle = (
        np.where(right, b[:, 0, 0], a[:, 0, 0]) for a, b in zip(left_lung, right_lung, strict=True)
    )
    # Uniform over the inner 65% of the ellipse, nudged upwards, away from the lung edge and
    # the heart shadow so the nodule sits over lung tissue.
    radius = np.sqrt(rng.uniform(0, 1, size=n)) * 0.65
    theta = rng.uniform(0, 2 * np.pi, size=n)
    du = radius * np.cos(theta) * au
    dv = (radius * np.sin(theta) - 0.15) * av
    cos, sin = np.cos(angle), np.sin(angle)
    centre_u = cu + cos * du - sin * dv
    centre_v = cv + sin * du + cos * dv
    return (
        centre_u[:, None, None].astype(np.float32),
        centre_v[:, None, None].astype(np.float32),
    )


def _ellipse(
    u: np.ndarray,
    v: np.ndarray,
    cu: np.ndarray | float,
    cv: np.ndarray | float,
    au: np.ndarray | float,
    av: np.ndarray | float,
    angle: np.ndarray | float = 0.0,
    power: np.ndarray | float = 2.0,
) -> np.ndarray:
    """Super-ellipse radius (1 on the boundary) of every pixel, shape broadcast (n,S,S)."""
    du, dv = u - cu, v - cv
    cos, sin = np.cos(angle), np.sin(angle)
    ru = (cos * du + sin * dv) / au
    rv = (-sin * du + cos * dv) / av
    if isinstance(power, float) and power == 2.0:
        return np.sqrt(ru * ru + rv * rv)  # the common case, several times faster than pow
    return (np.abs(ru) ** power + np.abs(rv) ** power) ** (1 / power)


def _soft_inside(radius: np.ndarray, softness: float) -> np.ndarray:
    """A mask near 1 inside (radius < 1) falling smoothly to 0 outside."""
    return _sigmoid_edge((radius - 1) / softness)


def _sigmoid_edge(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(x)): 1 well inside (x << 0), 0 well outside."""
    # Clipping keeps float32 exp from overflowing far from the edge.
    return 1 / (1 + np.exp(np.clip(x, -50, 50)))


def _smooth_noise(rng: np.random.Generator, n: int, size: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise (n,S,S) with unit standard deviation per image."""
    # Filter a canvas larger by the kernel radius so no border effect reaches the image.
    radius = max(1, int(np.ceil(3 * sigma)))
    noise = rng.standard_normal((n, 1, size + 2 * radius, size + 2 * radius), dtype=np.float32)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    kernel = torch.from_numpy(taps / taps.sum())
    smooth = torch.nn.functional.conv2d(torch.from_numpy(noise), kernel.view(1, 1, 1, -1))
    smooth = torch.nn.functional.conv2d(smooth, kernel.view(1, 1, -1, 1))[:, 0].numpy()
    smooth = smooth - smooth.mean(axis=(1, 2), keepdims=True)
    return smooth / (smooth.std(axis=(1, 2), keepdims=True) + 1e-8)


def _balanced_split(
    n: int,
    image_size: int,
    seq: np.random.SeedSequence,
    lesion: dict,
    with_stream: bool = False,
) -> tuple:
    """n images, n//2 of them with a nodule at seeded positions in the order; their labels,
    and with ``with_stream`` the seed the images were drawn from."""
    order_seq, image_seq = seq.spawn(2)
    labels = np.zeros(n, dtype=bool)
    labels[: n // 2] = True
    labels = np.random.default_rng(order_seq).permutation(labels)
    images = render_images(n, image_size, image_seq, labels, **lesion)
    result = (images, torch.from_numpy(labels.astype(np.int64)))
    return (*result, image_seq) if with_stream else result


def _streams(seed: int) -> list[np.random.SeedSequence]:
    """Independent seed streams: train, val, test, abnormal train."""
    # Each split has its own stream so changing one split's size leaves the others unchanged.
    return np.random.SeedSequence(seed).spawn(4)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).unsqueeze(1).contiguous()


def _check_counts(n_train: int, n_val: int, n_test: int, image_size: int) -> None:
    if n_train < 1:
        raise DataError(f"n_train must be >= 1, got {n_train}")
    if n_val < 0:
        raise DataError(f"n_val must be >= 0, got {n_val}")
    if n_test < 2:
        raise DataError(f"n_test must be >= 2 (one normal, one abnormal), got {n_test}")
    if image_size < 8:
        raise DataError(f"image_size must be >= 8, got {image_size}")
