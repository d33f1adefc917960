"""Choosing the device and the numeric precision, at call time (never at import)."""

from __future__ import annotations

import contextlib

import torch

from . import distributed


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU; anything else is passed to torch.

    In a process group on CUDA, ``auto`` and ``cuda`` are the GPU of the process's local rank.
    """
    if name in ("auto", "cuda") and distributed.active() and torch.cuda.is_available():
        return torch.device("cuda", distributed.local_rank())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device={name!r} is not a device torch knows") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} asked for CUDA, but torch sees no CUDA device")
    return device


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX tiles, where bf16 convolutions beat fp32 (on AVX2 they are slower)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map ``auto`` to ``bf16`` where it is faster (CUDA with bf16, AMX CPUs), else ``fp32``."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision={precision!r}; expected 'auto', 'fp32' or 'bf16'")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """An autocast context for ``bf16``, a no-op for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(width: int) -> torch.memory_format:
    """channels_last for networks whose first stage has ``width`` >= 8 channels, else plain.

    channels_last pays off with bf16 on CPU and on CUDA, and on a 2-core AVX2 CPU it made fp32
    training slightly faster too (``bench/results/speed.md``). Below 8 channels the
    CPU's channels_last backward pass crashed (torch 2.13, ResNet-18 at width 4), and such tiny
    networks gain nothing from it.
    """
    return torch.channels_last if width >= 8 else torch.contiguous_format
