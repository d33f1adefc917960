"""How a detector is saved: what its ``config.json`` holds besides what every saved component
holds (:mod:`dia.saved`), and the checks that read it back (a damaged or edited file is an error
that names the file and the setting)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from .config import DetectorConfig, ScoreConfig, check_shift_count, from_dict
from .config_tree import with_default

FORMAT = "dia-detector"
# 5: the detector's settings grouped by concern (earlier versions' flat ones are read into
# their groups).
FORMAT_VERSION = 5
VERSIONS = range(0, FORMAT_VERSION + 1)
# The version's field up to format 4 (now format_version, as every saved component's).
OLD_VERSION_KEY = "version"
# Version 1 predates the score settings and always scored with CSI's own score.
V1_SCORE = {"features": "projection", "cosine": False, "shift_weight": 1.0}
# Versions 1 and 2 (and run folders of their time) scored every shift: 4, in both families then.
EARLY_SHIFTS = 4
# How earlier versions made their test-time views, hence their banks and thresholds: versions
# 1 and 2 flipped them after shifting them, and 1 to 3 drew colour jitter for each shift.
OLD_VIEWS = {
    3: "whose test-time views were flipped after they were shifted (now before, as in training)",
    4: "whose test-time views drew their colour jitter for each shift (now once for all)",
}
# The largest image side a saved detector may name: beyond it a config is damaged, not large.
MAX_IMAGE_SIZE = 4096
# What a detector's config.json holds besides its settings: a check and what it expects.
SAVED_VALUES = {
    "channels": (lambda v: _is_int(v) and v in (1, 3), "1 or 3"),
    "image_size": (
        lambda v: _is_int(v) and 2 <= v <= MAX_IMAGE_SIZE,
        f"an integer from 2 to {MAX_IMAGE_SIZE}",
    ),
    "fpr": (lambda v: _is_number(v) and 0 < v < 1, "a fraction in (0, 1)"),
    "threshold": (lambda v: _is_number(v), "a finite number"),
    "seed": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "dicom_window": (
        lambda v: (
            v is None
            or (isinstance(v, list) and len(v) == 2 and all(map(_is_number, v)) and v[1] > 0)
        ),
        "null or [centre, width] with a width above 0",
    ),
}
SAVED_DEFAULTS = {"seed": 0, "dicom_window": None}


def check_saved_config(config: dict, version: int, file: Path) -> dict:
    """A saved detector's settings as :func:`~dia.saved.load_component` read them from its
    ``config.json`` (``file``), saved with format ``version``, checked: every value of
    :data:`SAVED_VALUES` of its type and in its range (a NaN threshold would call every image
    normal), and its settings as :func:`~dia.config.from_dict` builds (and so checks) them,
    brought up to this version's (earlier versions' score and stem, and their settings before
    they were grouped). Returns the values, ``detector`` and ``score`` as dataclasses."""
    missing = [k for k in ("detector", "score", *SAVED_VALUES) if k not in config]
    missing = [k for k in missing if k not in SAVED_DEFAULTS]
    if missing:
        raise ValueError(f"{file} lacks {missing}: not a whole saved detector; save it again")
    values = {**SAVED_DEFAULTS, **config}
    for key, (check, expected) in SAVED_VALUES.items():
        if not check(values[key]):
            raise ValueError(f"{file}: {key}={values[key]!r}; expected {expected}")
    values["threshold"] = float(values["threshold"])
    if values["dicom_window"] is not None:
        values["dicom_window"] = tuple(float(v) for v in values["dicom_window"])
    for key in ("detector", "score"):
        if not isinstance(values[key], dict):
            raise ValueError(f"{file}: {key}={values[key]!r}; expected an object of settings")
    score = values["score"]
    if version < 2:
        score = {**V1_SCORE, **score}
    if version < 3:
        score = {"shifts": EARLY_SHIFTS, **score}
    # grouped as this version groups them; saved before the stem's stride was a setting:
    # CIFAR's stem
    try:
        detector = with_default(DetectorConfig, values["detector"], "stem_stride", 1)
        values["detector"] = from_dict(DetectorConfig, detector)
        values["score"] = from_dict(ScoreConfig, score)
        check_shift_count(values["detector"], values["score"])
    except ValueError as err:
        raise ValueError(f"{file}: {err}") from err
    _warn_old_views(file.parent, version)
    return values


def _warn_old_views(path: Path, version: int) -> None:
    old = [why for since, why in OLD_VIEWS.items() if version < since]
    if old:
        warnings.warn(
            f"{path} was saved by an earlier dia, {old[0]}: its feature bank and threshold "
            "were made the old way, so new scores differ slightly from its own; train it "
            "again for scores made one way throughout",
            stacklevel=4,  # from_pretrained's caller
        )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
