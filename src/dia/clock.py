"""A training's clock: its seconds (time spent in callbacks left out), the share of it done,
its time limit, and when a checkpoint or a callback is next due; in a process group, rank 0's
clock decides for every process. The detector's and the diffusion model's trainings both run
on it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from . import distributed
from .progress import expected_steps


def next_multiple(seconds: float, every: float | None) -> float | None:
    """The first multiple of ``every`` after ``seconds``: when a callback or checkpoint is next
    due (None when ``every`` is None; 0 means after every step)."""
    if every is None:
        return None
    if every < 0:
        raise ValueError(f"callback or checkpoint interval {every}; expected seconds >= 0")
    return seconds if every == 0 else (math.floor(seconds / every) + 1) * every


def time_limit(max_seconds: float | None, deadline: float | None) -> tuple[float | None, bool]:
    """Training seconds allowed: ``max_seconds``, cut to what ``deadline`` (a
    ``time.perf_counter()`` value) leaves; and whether that deadline has passed already. Rank
    0's for every process."""
    spent = False
    if deadline is not None:
        left = deadline - time.perf_counter()
        spent = left <= 0
        max_seconds = left if max_seconds is None else min(max_seconds, left)
    return distributed.broadcast_object((max_seconds, spent))


@dataclass(frozen=True)
class Turn:
    """What the clock says before a step, the same on every process: the share of training
    ``done``, whether it is ``over`` (take no more steps), whether to ``save`` a checkpoint
    first, and whether to ``stop`` after saving (an interrupt came)."""

    done: float
    over: bool
    save: bool
    stop: bool


@dataclass
class TrainingClock:
    """Steps and training seconds of a training of at most ``total_steps`` steps and, when
    given, ``max_seconds`` seconds; it runs from its creation, carrying on from ``step`` and
    ``train_s`` (a resumed training's). ``save_every_s`` and ``callback_every_s``: how often
    a checkpoint and a callback are due (None: never)."""

    total_steps: int
    max_seconds: float | None = None
    save_every_s: float | None = None
    callback_every_s: float | None = None
    step: int = 0
    train_s: float = 0.0
    next_save: float | None = field(init=False)
    next_callback: float | None = field(init=False)

    def __post_init__(self) -> None:
        self._t0 = time.perf_counter() - self.train_s
        self._paused_s = 0.0
        self.next_save = next_multiple(self.train_s, self.save_every_s)
        self.next_callback = next_multiple(self.train_s, self.callback_every_s)

    def fraction(self) -> float:
        """The share of the training done: of its steps, or of its seconds where those run out
        first (1 or more: it is over)."""
        done = self.step / max(self.total_steps, 1)
        if self.max_seconds:
            done = max(done, self.train_s / self.max_seconds)
        return done

    def turn(self, stop_requested: bool = False) -> Turn:
        """Before a step: rank 0's share done, checkpoint due and interrupt (``stop_requested``)
        on every process. Each process's clock differs, and all must take the same steps (DDP
        waits for every process at each one): rank 0's sets every learning rate, the end and
        the checkpoints."""
        done, stop, due = distributed.agree(self.fraction(), stop_requested, self.save_due())
        over = self.step >= self.total_steps or done >= 1.0
        return Turn(done, over, bool(due or stop) and not over, bool(stop) and not over)

    def save_due(self) -> bool:
        return self.next_save is not None and self.train_s >= self.next_save

    def saved(self) -> None:
        """A checkpoint was saved now: the next is due one interval on."""
        self.next_save = next_multiple(self.train_s, self.save_every_s)

    def tick(self) -> None:
        """A step is done."""
        self.step += 1
        self.train_s = time.perf_counter() - self._t0 - self._paused_s

    def callback_due(self) -> bool:
        return self.next_callback is not None and self.train_s >= self.next_callback

    def called_back(self, seconds: float) -> None:
        """A callback took ``seconds``: they are not training time, and the next callback is
        due one interval on."""
        self._paused_s += seconds
        self.next_callback += self.callback_every_s

    def expected_steps(self) -> int:
        """The steps the whole training will take, as far as can be told now."""
        return expected_steps(self.step, self.train_s, self.max_seconds, self.total_steps)
