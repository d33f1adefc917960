"""Typed settings of every stage, with the defaults of the ``quick`` preset.

Each dataclass is plain data: it is saved as JSON next to every result and read back with
:func:`from_dict`, so a run folder says exactly how it was made.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .scores import get_score_class
from .shifts import get_shift

# What the contrastive loss is averaged over (DetectorConfig.contrastive_per).
CONTRASTIVE_PER = ("anchor", "view")


@dataclass
class DataConfig:
    """Where images come from and how they are shaped.

    ``spec`` is a data spec: ``synthetic``, a path to a MedMNIST ``.npz`` file,
    ``medmnist:NAME``, a folder or a ``.csv`` list of image files. ``image_size`` None means the
    source's own default (MedMNIST: native size, folder and CSV list: 64, synthetic: 32);
    ``channels`` None means automatic (1 for grayscale sources, 3 as soon as one image has
    colour). ``dicom_window`` (centre, width), for folders and lists of DICOM and NIfTI files:
    show every grayscale file through this window, in the files' own units after rescaling
    (Hounsfield units for CT; e.g. -600, 1500 for lung), instead of each file's own window
    (a NIfTI volume's: its 0.5 to 99.5 percentile range). ``dicom_studies``: keep the DICOM
    files of one study (one StudyInstanceUID) together, in the splits drawn here and when the
    threshold is chosen; False groups them file by file, for data whose anonymiser gave every
    file one StudyInstanceUID.
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
    dicom_window: tuple[float, float] | None = None
    dicom_studies: bool = True
    synthetic_train: int = 1000
    synthetic_val: int = 200
    synthetic_test: int = 500


@dataclass
class DiffusionConfig:
    """The DDPM used as a dissolving operator (docs/method.md, section 1).

    ``prediction``: what the UNet predicts, ``epsilon`` (the noise, as the authors'),
    ``sample`` (x0 itself) or ``v`` (sqrt(abar) eps - sqrt(1 - abar) x0); dissolving reads x0
    from it either way. ``schedule``: the betas, ``linear`` from ``beta_start`` to ``beta_end``
    or ``cosine`` (Nichol and Dhariwal's). ``loss``: ``mse`` or ``l1`` between the prediction
    and its target. ``train_t_max``: training draws t uniformly from [0, train_t_max) (None:
    every timestep), so that a short training spends itself on the low-noise end that
    dissolving uses. The defaults, x0 and t below 200, make a model that removes fine detail
    from a clean image and never adds any; one predicting the noise, as the authors' does,
    added detail to most images from t = 75 after a CPU's minutes of training
    (``bench/RESULTS.md``, "What the UNet predicts").
    """

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


@dataclass
class DetectorConfig:
    """The amplifying network and its training (docs/method.md, sections 2 and 3).

    ``ema``: decay of a moving average of the weights, updated every step; the average is the
    trained network (0 = off, the last weights themselves). ``dissolve_fraction``: the share
    of each batch's images that also get a dissolved view (1 = all, docs/method.md, section 3).
    ``dissolve_start``: the share of training (of its steps or its time, whichever runs out
    first) done as plain CSI before the dissolved views join (0 = from the first step).
    ``stem_stride``: how much the network's stem downsamples images before its first stage (a
    power of two; 0 = from the image size: the first stage at 32 to 63 px, see
    :func:`~dia.networks.stem_stride_for`). ``warmup_peak``: the learning rate at the end of
    the warm-up, in multiples of ``lr`` (1: warm up from 0 to ``lr``; CSI's 10: from ``lr`` to
    10 ``lr``, :func:`~dia.optim.lr_factor`). ``contrastive_per``: the contrastive loss is the
    mean over its ``anchor`` views (the two views of each image) or its sum over every
    ``view`` (the dissolved ones too: the authors' DIA, where it weighs 2/3 as much against
    the shift loss).
    """

    dissolve: str = "diffusion"
    t_min: int = 30
    t_max: int = 100
    shift: str = "rotation"
    mask: str = "shifted_removed"
    width: int = 16
    stem_stride: int = 0
    input_norm: str = "fixed"
    proj_dim: int = 128
    temperature: float = 0.5
    batch_size: int = 32
    epochs: int = 100
    max_seconds: float | None = 240.0
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-6
    warmup_epochs: int = 0
    warmup_peak: float = 1.0
    schedule: str = "cosine"
    contrastive_per: str = "anchor"
    crop_scale_min: float = 0.08
    jitter_strength: float = 0.4
    jitter_prob: float = 0.8
    gray_prob: float = 0.2
    dissolve_cache_steps: int = 4
    dissolve_fraction: float = 1.0
    dissolve_start: float = 0.0
    ema: float = 0.0


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


def check_settings(detector: DetectorConfig, score: ScoreConfig) -> None:
    """Refuse detector and score settings that cannot work, before anything is trained (the
    training checks its own choices, such as the timestep range, as it starts)."""
    at_least = {
        "width": (detector.width, 1),
        "stem_stride": (detector.stem_stride, 0),
        "proj_dim": (detector.proj_dim, 1),
        "batch_size": (detector.batch_size, 1),
        "epochs": (detector.epochs, 1),
        "warmup_epochs": (detector.warmup_epochs, 0),
        "dissolve_cache_steps": (detector.dissolve_cache_steps, 0),
        "weight_decay": (detector.weight_decay, 0.0),
        "jitter_strength": (detector.jitter_strength, 0.0),
        "score samples": (score.samples, 0),
        "score shifts": (score.shifts, 1),
        "score neighbours": (score.neighbours, 1),
        "score batch_size": (score.batch_size, 1),
    }
    for name, (value, least) in at_least.items():
        if not value >= least:
            raise ValueError(f"{name}={value}; expected at least {least}")
    if not detector.warmup_peak >= 1.0:
        raise ValueError(f"warmup_peak={detector.warmup_peak}; expected at least 1")
    if detector.contrastive_per not in CONTRASTIVE_PER:
        raise ValueError(
            f"contrastive_per={detector.contrastive_per!r}; expected one of {CONTRASTIVE_PER}"
        )
    above_zero = {
        "temperature": detector.temperature,
        "lr": detector.lr,
        "max_seconds": 1.0 if detector.max_seconds is None else detector.max_seconds,
    }
    if detector.stem_stride & (detector.stem_stride - 1):
        raise ValueError(
            f"stem_stride={detector.stem_stride}; expected a power of two, or 0 for automatic"
        )
    # The registered choices: an unknown name is an error that lists the known ones.
    count = get_shift(detector.shift).count
    if score.shifts > count:
        raise ValueError(
            f"score shifts={score.shifts}; expected at most {count}, as many as "
            f"shift={detector.shift!r} makes"
        )
    get_score_class(score.kind)
    for name, value in above_zero.items():
        if not value > 0:
            raise ValueError(f"{name}={value}; expected more than 0")
    fractions = {
        "crop_scale_min": (detector.crop_scale_min, False),
        "score crop_scale": (score.crop_scale, False),
        "jitter_prob": (detector.jitter_prob, True),
        "gray_prob": (detector.gray_prob, True),
    }
    for name, (value, zero_allowed) in fractions.items():
        if not (0.0 <= value <= 1.0 if zero_allowed else 0.0 < value <= 1.0):
            raise ValueError(
                f"{name}={value}; expected a fraction in {'[' if zero_allowed else '('}0, 1]"
            )


# The sections of a RunConfig that hold settings (the flags of the command line).
SECTIONS = ("data", "detector", "diffusion", "score")


def with_settings(config: RunConfig, given: dict[str, object]) -> RunConfig:
    """``config`` with the settings ``given`` (``{"section.field": value}``) on top."""
    for section in SECTIONS:
        values = {k.split(".", 1)[1]: v for k, v in given.items() if k.startswith(section + ".")}
        if values:
            sub = dataclasses.replace(getattr(config, section), **values)
            config = dataclasses.replace(config, **{section: sub})
    return config


def to_dict(config: Any) -> dict:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(config)


def from_dict(cls: type, values: dict) -> Any:
    """Build ``cls`` from a dict written by :func:`to_dict`. Unknown keys, and values not of
    their field's type (a string for a number, NaN or infinity for a float, a list of the
    wrong length), are errors that name the setting and what it must be."""
    if not isinstance(values, dict):
        raise ValueError(f"{cls.__name__} settings must be a JSON object, got {values!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings: {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    kwargs = {
        key: _typed(value, hints[key], f"{cls.__name__}.{key}") for key, value in values.items()
    }
    return cls(**kwargs)


def _typed(value: Any, annotation: Any, name: str) -> Any:
    """``value`` as a field annotated ``annotation`` holds it (lists become tuples), or a
    ValueError naming ``name`` and the type expected."""
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    for option in options:
        try:
            return _as_type(value, option, name)
        except ValueError:
            if len(options) == 1:
                raise
    raise ValueError(f"{name}={value!r}; expected {' or '.join(_describe(o) for o in options)}")


# What a JSON value of a plain-typed setting must be.
_PLAIN = {
    type(None): lambda v: v is None,
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def _as_type(value: Any, annotation: Any, name: str) -> Any:
    if annotation in _PLAIN:
        if _PLAIN[annotation](value):
            return value
    elif dataclasses.is_dataclass(annotation):
        if isinstance(value, dict):
            return from_dict(annotation, value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
            raise ValueError(f"{name}={value!r}; expected a finite number")
    elif typing.get_origin(annotation) is tuple and isinstance(value, (list, tuple)):
        items = _tuple_items(annotation, len(value))
        if items is not None:
            return tuple(
                _typed(v, t, f"{name}[{i}]")
                for i, (v, t) in enumerate(zip(value, items, strict=True))
            )
    raise ValueError(f"{name}={value!r}; expected {_describe(annotation)}")


def _tuple_items(annotation: Any, length: int) -> tuple | None:
    """The item types of a tuple annotation for a value of ``length`` items, or None when it
    cannot have that many."""
    items = typing.get_args(annotation)
    if len(items) == 2 and items[1] is Ellipsis:
        items = (items[0],) * length
    return items if len(items) == length else None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _describe(annotation: Any) -> str:
    """How an error names a type: 'an integer', 'null', 'a list of 2 numbers', ..."""
    words = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    if annotation is type(None):
        return "null"
    if annotation in words:
        return words[annotation]
    if dataclasses.is_dataclass(annotation):
        return f"an object of {annotation.__name__} settings"
    items = typing.get_args(annotation)
    if len(items) == 2 and items[1] is Ellipsis:
        return f"a list of {_describe(items[0]).split(' ', 1)[-1]}s"
    if len(set(items)) == 1:
        return f"a list of {len(items)} {_describe(items[0]).split(' ', 1)[-1]}s"
    return f"a list of {len(items)} values"
