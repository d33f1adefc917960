"""Named settings: ``quick`` (minutes on a laptop CPU) and ``paper`` (the authors' recipe)."""

from __future__ import annotations

import dataclasses

from .config import RunConfig

PRESETS: dict[str, dict[str, dict]] = {
    # The dataclass defaults: a few minutes on a 2-core CPU at 32 px.
    "quick": {},
    # The authors' settings (METHOD.md section 3): ResNet-18 at full width, 32 images a step,
    # LARS at lr 0.1 with 10 warm-up epochs, up to 1000 epochs, no time limit. Meant for a GPU:
    # on a 2-core CPU at 28-32 px it runs at roughly 20 images/s, about two days for
    # PneumoniaMNIST.
    "paper": {
        "diffusion": {"epochs": 100, "max_seconds": None},
        "detector": {
            "width": 64,
            "batch_size": 32,
            "epochs": 1000,
            "max_seconds": None,
            "optimizer": "lars",
            "lr": 0.1,
            "warmup_epochs": 10,
            "dissolve_cache_steps": 0,
        },
    },
}


def apply_preset(config: RunConfig, name: str) -> RunConfig:
    """A copy of ``config`` with the preset's settings applied."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r}; expected one of {sorted(PRESETS)}")
    for section, values in PRESETS[name].items():
        sub = dataclasses.replace(getattr(config, section), **values)
        config = dataclasses.replace(config, **{section: sub})
    return dataclasses.replace(config, preset=name)
