"""Trained diffusion models kept between runs, so that a data set's dissolver is trained once.

A model is filed under a key made of everything its training depends on: the training
images' values, the diffusion settings, the channel count and the seed. A later run that would
train the same model loads it instead. The folder is ``$DIA_CACHE`` or ``~/.cache/dia``;
``DIA_CACHE=off`` keeps nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch

from ..config import DiffusionConfig, to_dict
from ..io import write_json
from .model import CONFIG_NAME, FORMAT_VERSION, DiffusionModel

CACHE_ENV = "DIA_CACHE"
HISTORY_NAME = "history.json"
# Images hashed at a time: a large training set is never copied whole.
_CHUNK = 256


# Values of $DIA_CACHE that turn keeping off.
OFF = ("0", "off", "no", "none", "false")


def cache_root() -> Path | None:
    """The cache folder: ``$DIA_CACHE``, or ``~/.cache/dia``; None when ``$DIA_CACHE`` says
    off (0, off, no, none, false)."""
    value = os.environ.get(CACHE_ENV, "")
    if value.strip().lower() in OFF:
        return None
    return Path(value or Path.home() / ".cache" / "dia")


def model_key(images: torch.Tensor, config: DiffusionConfig, channels: int, seed: int) -> str:
    """32 hex digits naming the model that training on ``images`` (N, C, H, W) with these
    settings makes: equal images (as float32 values) and training settings (those of how it
    dissolves left out), equal keys."""
    digest = hashlib.blake2b(digest_size=16)
    training = {k: v for k, v in to_dict(config).items() if k not in config.DISSOLVING_ONLY}
    settings = {
        "config": training,
        "channels": channels,
        "seed": seed,
        "format_version": FORMAT_VERSION,
        "shape": list(images.shape),
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for start in range(0, images.shape[0], _CHUNK):
        chunk = images[start : start + _CHUNK].detach().float().cpu().contiguous() + 0.0
        digest.update(memoryview(chunk.numpy()))  # + 0.0: -0.0 hashed as 0.0
    return digest.hexdigest()


def model_dir(key: str) -> Path | None:
    """Where the model of ``key`` is (or would be) kept; None when keeping is off."""
    root = cache_root()
    return None if root is None else root / "diffusion" / key


def load_cached(key: str, device: str | torch.device = "cpu") -> tuple[DiffusionModel, dict] | None:
    """The kept model of ``key`` and its training history, or None when there is none or it
    cannot be read (a warning says why; the run trains a new one)."""
    folder = model_dir(key)
    if folder is None or not (folder / CONFIG_NAME).is_file():
        return None
    try:
        model = DiffusionModel.from_pretrained(folder, device=device)
        history_file = folder / HISTORY_NAME
        history = json.loads(history_file.read_text()) if history_file.is_file() else {}
    except (OSError, ValueError) as err:  # JSONDecodeError is a ValueError
        warnings.warn(f"ignoring the kept diffusion model {folder}: {err}", stacklevel=2)
        return None
    return model, history


def store(model: DiffusionModel, history: dict, key: str) -> Path | None:
    """Keep ``model`` and its training ``history`` under ``key``; returns the folder, or None
    when it cannot be written (a warning says why: the run goes on without keeping it) or
    keeping is off."""
    folder = model_dir(key)
    if folder is None:
        return None
    try:
        model.save_pretrained(folder)
        write_json(folder / HISTORY_NAME, history)
    except OSError as err:
        warnings.warn(f"could not keep the diffusion model in {folder}: {err}", stacklevel=2)
        return None
    return folder
