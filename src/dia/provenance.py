"""What a result was made with: the code's commit and the machine it ran on."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from .device import cpu_has_fast_bf16, cpu_memory


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_commit() -> str:
    """The git commit of the installed code, '+dirty' when the package's files differ from it,
    or 'unknown' outside a checkout."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return "unknown"
    changed = _git("status", "--porcelain", "--", str(Path(__file__).parent))
    return commit + ("+dirty" if changed else "")


def cpu_model() -> str | None:
    """The CPU's model name as Linux reports it (None elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as lines:
            for line in lines:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> dict:
    """What the numbers were measured on; ``amx``: whether bf16 runs on AMX tiles (the
    ``auto`` precision's choice on a CPU); ``cpu_memory``: how CPU memory is taken
    (:func:`dia.device.set_cpu_memory`)."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "amx": cpu_has_fast_bf16(),
        "cores": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_memory": cpu_memory(),
    }
