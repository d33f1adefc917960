"""Named settings: ``quick`` (minutes on a laptop CPU), ``cpu`` (30 minutes on a 2-core CPU)
and ``paper`` (the authors' recipe, for a GPU)."""

from __future__ import annotations

import dataclasses

from .config import RunConfig, replace_settings
from .shifts import Rotation

PRESETS: dict[str, dict] = {
    # A first result in minutes on a laptop CPU: the dataclass defaults (420 s, width 16, two
    # shifts x 10 samples), detector training taking whatever the budget leaves. Why these:
    # bench/RESULTS.md, "Why the presets are what they are".
    "quick": {"detector": {"max_seconds": None}},
    # 30 minutes on a 2-core CPU: plain CSI, width 32, a constant learning rate and the cosine
    # score, chosen on PneumoniaMNIST's validation split. Why these:
    # bench/RESULTS.md, "Why the presets are what they are".
    "cpu": {
        "budget_s": 1800.0,
        "diffusion": {"max_seconds": 180.0},
        "detector": {
            "dissolve": "none",
            "width": 32,
            "epochs": 1000,
            "max_seconds": None,
            "schedule": "constant",
        },
        # All four shifts for the cosine score (bench/RESULTS.md, "Why the presets are what
        # they are").
        "score": {"features": "encoder", "cosine": True, "shift_weight": 0.0, "shifts": 4},
    },
    # The authors' settings (docs/method.md, section 3): ResNet-18 at full width, 32 images a step,
    # LARS at lr 0.1 warmed up to 1.0 over 10 epochs (CSI's multiplier 10), the contrastive
    # loss over every view, up to 1000 epochs, no time limit. Meant for a GPU: on a 2-core CPU
    # it would take days.
    "paper": {
        "budget_s": None,
        "diffusion": {"epochs": 100, "max_seconds": None},
        "detector": {
            "width": 64,
            "batch_size": 32,
            "epochs": 1000,
            "max_seconds": None,
            "optimizer": "lars",
            "lr": 0.1,
            "warmup_epochs": 10,
            "warmup_peak": 10.0,
            "contrastive_per": "view",
            "dissolve_cache_steps": 0,
        },
        "score": {
            "features": "projection",
            "cosine": False,
            "shift_weight": 1.0,
            "samples": 10,
            "shifts": Rotation.count,  # every one
        },
    },
}


def apply_preset(config: RunConfig, name: str) -> RunConfig:
    """A copy of ``config`` with the preset's settings applied (a section's by their flat
    names, :func:`~dia.config.replace_settings`), built and checked once."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r}; expected one of {sorted(PRESETS)}")
    changes: dict = {"preset": name}
    for key, values in PRESETS[name].items():
        if isinstance(values, dict):  # a section: DataConfig, DetectorConfig, ...
            values = replace_settings(getattr(config, key), **values)
        changes[key] = values
    return dataclasses.replace(config, **changes)
