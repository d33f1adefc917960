"""Progress bars whose remaining time is right when a time limit ends training early."""

from __future__ import annotations

import math


def expected_steps(done: int, seconds: float, max_seconds: float | None, total: int) -> int:
    """The steps a training will take: ``total``, or fewer when a time limit of
    ``max_seconds`` will stop it first at the pace so far (``done`` steps in ``seconds``).

    A progress bar given this as its total shows the time left under the limit, where the
    full count of steps would show hours for a run the limit ends in minutes.
    """
    if max_seconds is None or done < 1 or seconds <= 0:
        return total
    projected = math.ceil(done + (max_seconds - seconds) * done / seconds)
    return max(done, min(total, projected))
