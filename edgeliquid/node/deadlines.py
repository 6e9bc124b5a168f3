"""What a deadline miss is: one definition for the node's stats, the demo and ``profile``.

A control loop promises the actuators a fresh command every nominal period. A *deadline
miss* is an interval between two consecutive policy commands longer than
``LATE_FACTOR`` nominal periods (whatever the cause: an overrun, a late wake-up, a sensor
stall); the *ticks missed* in it are the nominal periods that passed without a command,
``round(gap / period) - 1``. The node counts them live from its write times and
``profile`` counts them from a recording's write timestamps, with these functions.
"""

from __future__ import annotations

import numpy as np

LATE_FACTOR = 1.5


def ticks_missed(gap_ns: int, period_ns: int) -> int:
    """Nominal periods without a command in one interval (0 when it is not a miss)."""
    if gap_ns <= LATE_FACTOR * period_ns:
        return 0
    return max(1, int(gap_ns / period_ns + 0.5) - 1)


def count(write_ns: np.ndarray, period_ns: float) -> dict[str, object]:
    """Misses in a series of command write times (ns): count, ticks missed, where."""
    gaps = np.diff(np.asarray(write_ns, np.int64))
    late = gaps > LATE_FACTOR * period_ns
    ticks = np.maximum(1, np.floor(gaps[late] / period_ns + 0.5).astype(np.int64) - 1)
    return {
        "misses": int(late.sum()),
        "ticks_missed": int(ticks.sum()),
        "late_index": np.flatnonzero(late) + 1,  # index of the command that came late
    }
