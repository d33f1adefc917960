"""Choosing the device and the numeric precision, at call time (never at import)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform

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


CPU_MEMORY = ("keep", "system")
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
# Freed memory above this much at the heap's top is handed back to the system: 1 GiB, so that
# a step's activations stay in the process between steps.
_TRIM_BYTES = 1 << 30
_cpu_memory: tuple[str, str] | None = None  # (the mode asked for, the mode in force), once set


def set_cpu_memory(mode: str = "keep") -> str:
    """How the process takes memory for CPU tensors from the system; returns the mode in force.

    glibc's malloc maps every block above 32 MiB from the system on its own and unmaps it when
    freed, so a training step whose activations are that large (images of 64 px and up) takes
    each of their pages afresh, a page fault every 4 KiB, in every step. ``keep`` (Linux with
    glibc) serves every block from the heap and keeps freed memory for the next step: training
    steps 1.4 to 1.7 times as fast at 64 px on a 2-core CPU, for a third to a half more peak
    memory (``bench/results/cpu-memory.md``). ``system`` leaves malloc as it is; it is also what
    ``keep`` falls back to without glibc. It changes the whole process for good, so it is set
    once, before training (another mode later is refused): the ``dia`` command does so at its
    start, with ``DIA_CPU_MEMORY`` (:func:`set_cpu_memory_from_env`).
    """
    global _cpu_memory
    if mode not in CPU_MEMORY:
        raise ValueError(f"cpu memory mode {mode!r}; expected one of {', '.join(CPU_MEMORY)}")
    if _cpu_memory is not None:  # malloc's settings are not taken back
        asked, in_force = _cpu_memory
        if mode != asked:
            raise ValueError(
                f"cpu memory mode {mode!r}: this process already runs with {asked!r}, which "
                "cannot be changed; set it once, before training"
            )
        return in_force
    in_force = mode
    if mode == "keep":
        libc = _glibc()
        if libc is not None and libc.mallopt(_M_MMAP_MAX, 0):
            libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES)
        else:
            in_force = "system"
    _cpu_memory = (mode, in_force)
    return in_force


def set_cpu_memory_from_env() -> str:
    """:func:`set_cpu_memory` with the mode the ``DIA_CPU_MEMORY`` environment variable names
    (``keep`` when it is unset); returns the mode in force."""
    mode = os.environ.get("DIA_CPU_MEMORY", "keep")
    if mode not in CPU_MEMORY:
        raise ValueError(f"DIA_CPU_MEMORY={mode!r}; expected one of {', '.join(CPU_MEMORY)}")
    return set_cpu_memory(mode)


def cpu_memory() -> str:
    """The mode :func:`set_cpu_memory` put in force in this process (``system`` before)."""
    return "system" if _cpu_memory is None else _cpu_memory[1]


def _glibc():
    """The C library through ctypes when it is glibc (whose mallopt we know), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None
