"""Typed settings of every stage, with the defaults of the ``quick`` preset.

Each dataclass is plain data: it is saved as JSON next to every result and read back with
:func:`from_dict`, so a run folder says exactly how it was made. The settings are grouped by
concern: the detector's into its network, dissolving, augmentation, optimisation and loss,
the data's source-specific ones (DICOM's, the synthetic set's) with their source
(:mod:`dia.config_tree`: each setting keeps a flat name, that of its flag). Every dataclass
checks its values as it is built, so that a config that exists is one that can work; an error
names the setting and the value (``width=0; expected at least 1``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from .config_json import from_dict, to_dict
from .config_tree import replace_settings
from .scores import get_score_class
from .shifts import get_shift

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "DetectorConfig",
    "DicomConfig",
    "DiffusionConfig",
    "DissolvingConfig",
    "LossConfig",
    "NetworkConfig",
    "OptimConfig",
    "RunConfig",
    "ScoreConfig",
    "SyntheticConfig",
    "check_shift_count",
    "from_dict",
    "replace_settings",
    "to_dict",
    "with_settings",
]

# What the contrastive loss is averaged over (LossConfig.contrastive_per).
CONTRASTIVE_PER = ("anchor", "view")
# What the score's similarity term compares (ScoreConfig.features).
FEATURES = ("projection", "encoder")
# The optimisers and learning-rate schedules of dia.optim (OptimConfig).
OPTIMIZERS = ("adam", "sgd", "lars")
SCHEDULES = ("cosine", "constant")
# How the network normalises its input (NetworkConfig.input_norm, dia.networks).
INPUT_NORMS = ("fixed", "image")
# The smallest images the network can take: its stages halve them three times.
MIN_IMAGE_SIZE = 8


def _at_least(values: dict[str, tuple]) -> None:
    for name, (value, least) in values.items():
        if not value >= least:
            raise ValueError(f"{name}={value}; expected at least {least}")


def _above_zero(values: dict[str, float | None]) -> None:
    for name, value in values.items():
        if value is not None and not value > 0:
            raise ValueError(f"{name}={value}; expected more than 0")


def _fraction(name: str, value: float, zero_allowed: bool = False) -> None:
    if not (0.0 <= value <= 1.0 if zero_allowed else 0.0 < value <= 1.0):
        raise ValueError(
            f"{name}={value}; expected a fraction in {'[' if zero_allowed else '('}0, 1]"
        )


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {choices}")


@dataclass
class DicomConfig:
    """How folders and CSV lists read their DICOM and NIfTI files (flags ``--dicom-*``).

    ``window`` (centre, width): show every grayscale file through this window, in the files'
    own units after rescaling (Hounsfield units for CT; e.g. -600, 1500 for lung), instead of
    each file's own window (a NIfTI volume's: its 0.5 to 99.5 percentile range). ``studies``:
    keep the DICOM files of one study (one StudyInstanceUID) together, in the splits drawn
    here and when the threshold is chosen; False groups them file by file, for data whose
    anonymiser gave every file one StudyInstanceUID.
    """

    PREFIX: ClassVar[str] = "dicom_"
    window: tuple[float, float] | None = None
    studies: bool = True

    def __post_init__(self) -> None:
        window = self.window
        if window is not None and (len(window) != 2 or not window[1] >= 1):
            raise ValueError(f"dicom_window must be (centre, width) with width >= 1, got {window}")


@dataclass
class SyntheticConfig:
    """How many images the built-in synthetic set makes (flags ``--synthetic-*``)."""

    PREFIX: ClassVar[str] = "synthetic_"
    train: int = 1000
    val: int = 200
    test: int = 500


@dataclass
class DataConfig:
    """Where images come from and how they are shaped.

    ``spec`` is a data spec: ``synthetic``, a path to a MedMNIST ``.npz`` file,
    ``medmnist:NAME``, a folder or a ``.csv`` list of image files. ``image_size`` None means the
    source's own default (MedMNIST: native size, folder and CSV list: 64, synthetic: 32);
    ``channels`` None means automatic (1 for grayscale sources, 3 as soon as one image has
    colour). ``dicom`` and ``synthetic``: the settings of those sources alone.
    """

    spec: str = "synthetic"
    normal_class: int = 0
    image_size: int | None = None
    channels: int | None = None
    split_seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.0
    contamination: float = 0.0
    max_train: int | None = None
    cache_dir: str | None = None
    dicom: DicomConfig = field(default_factory=DicomConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        if self.image_size is not None and self.image_size < MIN_IMAGE_SIZE:
            raise ValueError(
                f"image_size must be >= {MIN_IMAGE_SIZE} (or None for the source's size), got "
                f"{self.image_size}"
            )
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be None (automatic), 1 or 3, got {self.channels}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.contamination < 1:
            raise ValueError(f"contamination must be in [0, 1), got {self.contamination}")
        if self.max_train is not None and self.max_train < 1:
            raise ValueError(f"max_train must be >= 1 (or None for all), got {self.max_train}")


@dataclass
class DiffusionConfig:
    """The DDPM used as a dissolving operator (docs/method.md, section 1).

    ``prediction``: what the UNet predicts, ``epsilon`` (the noise, as the authors'),
    ``sample`` (x0 itself), ``v`` (sqrt(abar) eps - sqrt(1 - abar) x0) or ``preconditioned``
    (Karras et al.'s correction to the input, :mod:`dia.diffusion.targets`); dissolving reads
    x0 from it either way. ``schedule``: the betas, ``linear`` from ``beta_start`` to ``beta_end``
    or ``cosine`` (Nichol and Dhariwal's). ``loss``: ``mse`` or ``l1`` between the prediction
    and its target. ``train_t_max``: training draws t uniformly from [0, train_t_max) (None:
    every timestep), so that a short training spends itself on the low-noise end that
    dissolving uses. The defaults, x0 and t below 200, make a model that removes fine detail
    from a clean image and never adds any; one predicting the noise, as the authors' does,
    added detail to most images from t = 75 after a CPU's minutes of training
    (``bench/RESULTS.md``, "What the UNet predicts").

    ``noise_draws``: how the trained model dissolves (:func:`dia.dissolve.diffusion_dissolve`):
    0 takes the clean image as x_t, as the authors do; K >= 1 noises it to step t for real K
    times (noise seeded by its own pixels) and averages the K estimates of x0, which from K = 4
    removes more the larger t, at no gain to DIA (``bench/RESULTS.md``, "Noised for real, K
    times, and averaged"). Not in a kept model's key (``DISSOLVING_ONLY``).
    """

    DISSOLVING_ONLY: ClassVar[tuple[str, ...]] = ("noise_draws",)

    resolution: int = 32
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    epochs: int = 30
    max_seconds: float | None = 90.0
    batch_size: int = 64
    lr: float = 2e-4
    prediction: str = "sample"
    schedule: str = "linear"
    loss: str = "mse"
    train_t_max: int | None = 200
    noise_draws: int = 0

    def __post_init__(self) -> None:
        _at_least({"noise_draws": (self.noise_draws, 0)})


@dataclass
class NetworkConfig:
    """The amplifying network (docs/method.md, section 2).

    ``stem_stride``: how much the stem downsamples images before the first stage (a power of
    two; 0 = from the image size: the first stage at 32 to 63 px, see
    :func:`~dia.networks.stem_stride_for`). ``input_norm``: ``fixed`` ([0, 1] to [-1, 1]) or
    ``image`` (each image standardised on its own).
    """

    PREFIX: ClassVar[str] = ""
    width: int = 16
    stem_stride: int = 0
    input_norm: str = "fixed"
    proj_dim: int = 128

    def __post_init__(self) -> None:
        _at_least(
            {
                "width": (self.width, 1),
                "stem_stride": (self.stem_stride, 0),
                "proj_dim": (self.proj_dim, 1),
            }
        )
        if self.stem_stride & (self.stem_stride - 1):
            raise ValueError(
                f"stem_stride={self.stem_stride}; expected a power of two, or 0 for automatic"
            )
        _one_of("input_norm", self.input_norm, INPUT_NORMS)


@dataclass
class DissolvingConfig:
    """The dissolved third views (docs/method.md, section 3).

    ``dissolve``: the dissolver (a key of :data:`dia.dissolve.DISSOLVERS`; ``none``: plain
    CSI), at timesteps drawn from ``t_min`` to ``t_max``. ``dissolve_cache_steps``: dissolve
    the training images once at that many timesteps and draw from them (0: every step anew).
    ``dissolve_fraction``: the share of each batch's images that also get a dissolved view (1
    = all). ``dissolve_start``: the share of training (of its steps or its time, whichever runs
    out first) done as plain CSI before the dissolved views join (0 = from the first step).
    """

    PREFIX: ClassVar[str] = ""
    dissolve: str = "diffusion"
    t_min: int = 30
    t_max: int = 100
    dissolve_cache_steps: int = 4
    dissolve_fraction: float = 1.0
    dissolve_start: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.t_min <= self.t_max:
            raise ValueError(f"t_min={self.t_min}, t_max={self.t_max}; need 0 <= min <= max")
        _at_least({"dissolve_cache_steps": (self.dissolve_cache_steps, 0)})
        if not 0.0 < self.dissolve_fraction <= 1.0:
            raise ValueError(f"dissolve_fraction={self.dissolve_fraction}; expected (0, 1]")
        if not 0.0 <= self.dissolve_start < 1.0:
            raise ValueError(f"dissolve_start={self.dissolve_start}; expected [0, 1)")


@dataclass
class AugmentConfig:
    """The training views' augmentation: random crops of at least ``crop_scale_min`` of the
    image's area, colour jitter of ``jitter_strength`` with probability ``jitter_prob``, gray
    with probability ``gray_prob`` (:mod:`dia.augment`)."""

    PREFIX: ClassVar[str] = ""
    crop_scale_min: float = 0.08
    jitter_strength: float = 0.4
    jitter_prob: float = 0.8
    gray_prob: float = 0.2

    def __post_init__(self) -> None:
        _at_least({"jitter_strength": (self.jitter_strength, 0.0)})
        _fraction("crop_scale_min", self.crop_scale_min)
        _fraction("jitter_prob", self.jitter_prob, zero_allowed=True)
        _fraction("gray_prob", self.gray_prob, zero_allowed=True)


@dataclass
class OptimConfig:
    """How the network is trained (:mod:`dia.optim`): for ``epochs`` or ``max_seconds`` of
    training (None: no limit), whichever comes first.

    ``warmup_peak``: the learning rate at the end of the warm-up, in multiples of ``lr`` (1:
    warm up from 0 to ``lr``; CSI's 10: from ``lr`` to 10 ``lr``, :func:`~dia.optim.lr_factor`).
    ``ema``: decay of a moving average of the weights, updated every step; the average is the
    trained network (0 = off, the last weights themselves).
    """

    PREFIX: ClassVar[str] = ""
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-6
    warmup_epochs: int = 0
    warmup_peak: float = 1.0
    schedule: str = "cosine"
    batch_size: int = 32
    epochs: int = 100
    max_seconds: float | None = 240.0
    ema: float = 0.0

    def __post_init__(self) -> None:
        _at_least(
            {
                "batch_size": (self.batch_size, 1),
                "epochs": (self.epochs, 1),
                "warmup_epochs": (self.warmup_epochs, 0),
                "weight_decay": (self.weight_decay, 0.0),
            }
        )
        if not self.warmup_peak >= 1.0:
            raise ValueError(f"warmup_peak={self.warmup_peak}; expected at least 1")
        _above_zero({"lr": self.lr, "max_seconds": self.max_seconds})
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("schedule", self.schedule, SCHEDULES)
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema={self.ema}; expected 0 (off) or a decay in (0, 1)")


@dataclass
class LossConfig:
    """The training loss (docs/method.md, section 3): the shifts the network tells apart
    (``shift``, a key of :data:`dia.shifts.SHIFTS`) and the contrastive loss at ``temperature``
    with the positives that ``mask`` leaves (``shifted_removed`` or ``none``).

    ``contrastive_per``: the contrastive loss is the mean over its ``anchor`` views (the two
    views of each image) or its sum over every ``view`` (the dissolved ones too: the authors'
    DIA, where it weighs 2/3 as much against the shift loss).
    """

    PREFIX: ClassVar[str] = ""
    shift: str = "rotation"
    mask: str = "shifted_removed"
    temperature: float = 0.5
    contrastive_per: str = "anchor"

    def __post_init__(self) -> None:
        get_shift(self.shift)  # an unknown name is an error that lists the known ones
        _above_zero({"temperature": self.temperature})
        _one_of("contrastive_per", self.contrastive_per, CONTRASTIVE_PER)


@dataclass
class DetectorConfig:
    """The amplifying network and its training (docs/method.md, sections 2 and 3), by concern.

    Build one with the groups' classes (``DetectorConfig(network=NetworkConfig(width=32))``)
    or, shorter, by the settings' flat names: ``replace_settings(DetectorConfig(), width=32)``.
    """

    network: NetworkConfig = field(default_factory=NetworkConfig)
    dissolving: DissolvingConfig = field(default_factory=DissolvingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class ScoreConfig:
    """The score (docs/method.md, section 4) and the choices made in it.

    ``kind``: which score (a key of :data:`dia.scores.SCORES`); ``csi``, CSI's score and its
    variants, is the one that ``features``, ``cosine``, ``shift_weight`` and ``neighbours``
    describe. ``features``: what the similarity term compares, ``projection`` (z, as in CSI) or
    ``encoder`` (the ResNet features h before the projection). ``cosine``: compare by plain
    cosine instead of CSI's norm-weighted dot product. ``shift_weight`` multiplies the shift
    term (1 = CSI, 0 = similarity only). ``neighbours``: how many of the most similar bank
    features the similarity averages (1 = CSI's nearest). CSI's own score is projection, no
    cosine, weight 1, one neighbour
    (the ``paper`` preset); the defaults were chosen on validation splits (``bench/budget.py``,
    ``bench/scoring.py``).
    ``samples``: test-time augmentations averaged per shift (0: one view, not augmented);
    ``shifts``: how many of the shifts, from the first (the image as it is), the score averages
    over. Every image costs ``shifts * max(samples, 1)`` passes through the network.
    """

    kind: str = "csi"
    samples: int = 10
    shifts: int = 2
    crop_scale: float = 0.54
    features: str = "encoder"
    cosine: bool = False
    shift_weight: float = 0.0
    neighbours: int = 1
    batch_size: int = 256

    def __post_init__(self) -> None:
        _at_least(
            {
                "score samples": (self.samples, 0),
                "score shifts": (self.shifts, 1),
                "score neighbours": (self.neighbours, 1),
                "score batch_size": (self.batch_size, 1),
            }
        )
        get_score_class(self.kind)  # an unknown name is an error that lists the known ones
        _fraction("score crop_scale", self.crop_scale)
        _one_of("score features", self.features, FEATURES)


def check_shift_count(detector: DetectorConfig, score: ScoreConfig) -> None:
    """Refuse a score over more shifts than the detector's shift family makes: the one check
    that needs both configs (:class:`RunConfig` and :class:`~dia.detector.DIADetector` make
    it)."""
    count = get_shift(detector.loss.shift).count
    if score.shifts > count:
        raise ValueError(
            f"score shifts={score.shifts}; expected at most {count}, as many as "
            f"shift={detector.loss.shift!r} makes"
        )


@dataclass
class RunConfig:
    """Everything ``dia run`` needs: one object, saved as ``config.json`` in the run folder.

    ``budget_s``, when set, is the wall-clock time from the start of the run to a fitted
    detector (data, diffusion training, dissolve cache, detector training, feature bank):
    detector training ends early enough to meet it, with its schedule fitted to the time left.
    """

    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    seed: int = 0
    budget_s: float | None = 420.0
    device: str = "auto"
    precision: str = "auto"
    preset: str = "quick"

    def __post_init__(self) -> None:
        check_shift_count(self.detector, self.score)


# The sections of a RunConfig that hold settings (the flags of the command line).
SECTIONS = ("data", "detector", "diffusion", "score")


def with_settings(config: RunConfig, given: dict[str, object]) -> RunConfig:
    """``config`` with the settings ``given`` on top: ``{"section.name": value}``, each by its
    flat name (``detector.t_min``, ``data.dicom_window``) or its path in the section
    (``detector.dissolving.t_min``). The new config is built, and so checked, once."""
    sections = {}
    for section in SECTIONS:
        values = {k.split(".", 1)[1]: v for k, v in given.items() if k.startswith(section + ".")}
        if values:
            sections[section] = replace_settings(getattr(config, section), **values)
    return dataclasses.replace(config, **sections) if sections else config
