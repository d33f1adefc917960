"""Training checkpoints: a detector's or a diffusion model's training, saved as it goes,
continues where it stopped.

A checkpoint is a folder saved as every component of dia is (:mod:`dia.saved`):
``model.safetensors`` (weights, optimiser moments, random generator states, the current epoch's
order) and ``config.json`` (step, training seconds, loss history, optimiser settings): no
pickle, and written atomically, so a crash while saving leaves the previous checkpoint whole.
Checkpoints of format version 1 (``state.safetensors`` and ``state.json``) are read too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from . import distributed
from .io import read_json, saved_dir
from .saved import (
    CONFIG_NAME,
    DIGEST_KEY,
    VERSION_KEY,
    WEIGHTS_NAME,
    load_component,
    save_component,
)

FORMAT = "dia-training-checkpoint"
# 2: written by dia.saved; 1: its own two files, OLD_STATE_FILE and OLD_META_FILE.
FORMAT_VERSION = 2
STATE_FILE = WEIGHTS_NAME
META_FILE = CONFIG_NAME
OLD_STATE_FILE = "state.safetensors"
OLD_META_FILE = "state.json"
# The fields of a checkpoint's JSON that say how it was written, not what it holds.
OWN_KEYS = ("format", "version", VERSION_KEY, DIGEST_KEY)
# Training seconds between checkpoints: a run loses at most this much when the machine fails.
# A checkpoint of the cpu preset's network (width 32, with Adam's moments) is about 35 MB.
EVERY_S = 300.0


@dataclasses.dataclass
class Checkpointing:
    """Where and how often a training (the detector's or the diffusion model's) saves its
    state.

    ``every_s``: training seconds between checkpoints (None: only when interrupted).
    ``resume``: continue from the checkpoint in ``folder`` instead of starting afresh.
    ``meta``: extra JSON stored with every checkpoint (say, which command to finish).
    With checkpointing on, an interrupt (Ctrl-C, SIGTERM) ends training at the next step
    boundary with a checkpoint saved, then raises :class:`TrainingInterrupted`.
    """

    folder: Path
    every_s: float | None = EVERY_S
    resume: bool = False
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)


class TrainingInterrupted(KeyboardInterrupt):
    """Training was interrupted; its state is in checkpoint folder ``folder`` (step ``step``).
    ``training``: whose, as a message names it (``detector``, ``diffusion model``)."""

    def __init__(self, folder: Path, step: int, training: str = "detector") -> None:
        super().__init__(f"training interrupted at step {step}; checkpoint saved in {folder}")
        self.folder, self.step, self.training = folder, step, training


def save(folder: Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write a checkpoint folder atomically: ``tensors`` (flat) and ``meta`` (JSON), with
    :func:`~dia.saved.save_component`."""
    meta = {k: v for k, v in meta.items() if k not in OWN_KEYS}
    return save_component(folder, FORMAT, FORMAT_VERSION, meta, tensors)


def exists(folder: Path) -> bool:
    """Whether ``folder`` holds a checkpoint (of any version)."""
    folder = saved_dir(folder)
    return (folder / META_FILE).is_file() or (folder / OLD_META_FILE).is_file()


def read_meta(folder: Path) -> dict:
    """The JSON of the checkpoint in ``folder`` (less the fields that say how it was
    written), checked against :data:`META`; errors name the file and the key."""
    folder = saved_dir(folder)
    file = folder / META_FILE
    if not file.is_file() and (folder / OLD_META_FILE).is_file():
        file = folder / OLD_META_FILE
    meta = read_json(file)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder} does not hold a dia training checkpoint")
    version = meta.get(VERSION_KEY, meta.get("version", 0))
    if _count(version) and version > FORMAT_VERSION:
        raise ValueError(f"{folder} was saved by a newer dia (version {version})")
    missing = [key for key in REQUIRED if key not in meta]
    if missing:
        raise ValueError(f"{file} lacks {missing}: the checkpoint is damaged")
    for key, (check, expected) in META.items():
        if key in meta and not check(meta[key]):
            raise ValueError(f"{file}: {key}={meta[key]!r}; expected {expected}")
    return {k: v for k, v in meta.items() if k not in OWN_KEYS}


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _seconds(value) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and value >= 0


def _flag(value) -> bool:
    return isinstance(value, bool)


def _losses(value) -> bool:
    """A history: lists of finite numbers (or of [step, number] pairs) and counts."""
    if not isinstance(value, dict):
        return False
    for entry in value.values():
        items = entry if isinstance(entry, list) else [entry]
        flat = [x for item in items for x in (item if isinstance(item, list) else [item])]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in flat):
            return False
    return True


# The commands whose training a checkpoint can hold, for dia resume to finish.
COMMANDS = ("run", "train", "train-diffusion")
# What a checkpoint's JSON holds, each key's check and what it expects; REQUIRED must be there.
META = {
    "command": (lambda v: v in COMMANDS, " or ".join(map(repr, COMMANDS))),
    "every_s": (lambda v: v is None or (_seconds(v) and v > 0), "null or seconds above 0"),
    "timings": (  # seconds, and flags such as diffusion_reused
        lambda v: isinstance(v, dict) and all(_seconds(x) or _flag(x) for x in v.values()),
        "an object of seconds and flags",
    ),
    "images": (lambda v: _count(v) and v > 0, "a positive integer"),
    "seed": (_count, "a non-negative integer"),
    "world_size": (lambda v: _count(v) and v > 0, "a positive integer"),
    "step": (_count, "a non-negative integer"),
    "next_index": (_count, "a non-negative integer"),
    "train_s": (_seconds, "non-negative seconds"),
    "max_seconds": (lambda v: v is None or (_seconds(v) and v > 0), "null or seconds above 0"),
    "average_updates": (_count, "a non-negative integer"),
    "optimizer_groups": (lambda v: isinstance(v, list) and v, "a list of parameter groups"),
    "history": (_losses, "an object of loss lists"),
}
REQUIRED = ("step", "next_index", "train_s", "optimizer_groups", "history")


def load(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and the JSON of the checkpoint in ``folder``; errors name the file."""
    folder = saved_dir(folder)
    meta = read_meta(folder)
    if (folder / META_FILE).is_file():
        return load_component(folder, FORMAT, range(2, FORMAT_VERSION + 1)).tensors, meta
    try:  # format version 1
        tensors = load_file(str(folder / OLD_STATE_FILE))
    except (SafetensorError, FileNotFoundError, OSError) as err:
        raise ValueError(f"cannot read {folder / OLD_STATE_FILE}: {err}") from err
    return tensors, meta


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """An optimiser's state as flat tensors ``optim.<param>.<name>`` plus its JSON groups."""
    state = optimizer.state_dict()
    tensors = {
        f"optim.{index}.{name}": value
        for index, slots in state["state"].items()
        for name, value in slots.items()
    }
    return tensors, state["param_groups"]


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list
) -> None:
    """Restore what :func:`optimizer_state` saved into an optimiser over the same parameters."""
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            index, name = key[len("optim.") :].split(".", 1)
            slots.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": groups})


def refuse_other_training(meta: dict, mine: dict) -> None:
    """Refuse a checkpoint whose JSON ``meta`` is of another training than the one described
    by ``mine`` (its config, images, seed, processes): its steps would not continue this one.
    Settings added to the config since it was saved count as they are now."""
    mine = json.loads(json.dumps(mine))  # tuples as the saved JSON holds them: lists
    saved = meta.get("config")
    if isinstance(saved, dict) and isinstance(mine.get("config"), dict):
        meta = {**meta, "config": _merged(mine["config"], saved)}
    differ = [k for k, v in mine.items() if meta.get(k) != v]
    if differ:
        detail = ", ".join(f"{k}: saved {meta.get(k)!r}, now {mine[k]!r}" for k in differ)
        raise ValueError(f"the checkpoint is of another training ({detail})")


def _merged(now: dict, saved: dict) -> dict:
    """``saved`` over ``now``, group by group: what ``saved`` lacks counts as it is now."""
    out = dict(now)
    for key, value in saved.items():
        both = isinstance(value, dict) and isinstance(now.get(key), dict)
        out[key] = _merged(now[key], value) if both else value
    return out


def generator_states(
    order: torch.Generator, gen: torch.Generator, device: torch.device
) -> dict[str, torch.Tensor] | None:
    """The random generators of every process, gathered on rank 0 (None elsewhere) as
    ``rng.order`` (the epochs' order, the same everywhere) and ``rng.<rank>.gen`` (the
    process's own draws), ``.torch`` and ``.cuda`` (torch's global generators)."""
    own = {"gen": gen.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        own["cuda"] = torch.cuda.get_rng_state(device)
    every_rank = distributed.gather_object(own)
    if every_rank is None:
        return None
    tensors = {"rng.order": order.get_state()}
    for rank, states in enumerate(every_rank):
        tensors.update(with_prefix(f"rng.{rank}.", states))
    return tensors


def restore_generators(
    tensors: dict[str, torch.Tensor],
    order: torch.Generator,
    gen: torch.Generator,
    device: torch.device,
) -> None:
    """Put back what :func:`generator_states` saved: each process its own generators."""
    order.set_state(tensors["rng.order"])
    mine = under_prefix(f"rng.{distributed.rank()}.", tensors)
    gen.set_state(mine["gen"])
    torch.set_rng_state(mine["torch"])
    if device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"], device)


def with_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with ``prefix`` before every key."""
    return {prefix + k: v for k, v in tensors.items()}


def under_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` whose keys start with ``prefix``, the prefix removed."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def stops_of(checkpoint: Checkpointing | None):
    """Ctrl-C and SIGTERM as requests to stop between steps where there is a checkpoint to
    save (:class:`StopRequests`); otherwise requests that never come."""
    if checkpoint is None:
        return contextlib.nullcontext(StopRequests())
    return StopRequests().installed()


class StopRequests:
    """Turns Ctrl-C and SIGTERM into a request that training checks between steps.

    Inside :meth:`installed`, the first signal only sets :attr:`requested`; a second one
    interrupts at once, as usual. Outside the main thread (where Python allows no handlers)
    nothing is installed and signals act as they always do.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequests]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                # None: a handler set outside Python, which cannot be put back; the default
                # is the nearest.
                signal.signal(s, signal.SIG_DFL if handler is None else handler)
