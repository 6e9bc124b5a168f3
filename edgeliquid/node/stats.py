"""What the node loop counts: steps, deadline misses, fault counters and latency rings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: Latency samples kept (a ring: percentiles are over the newest ones).
LAT_RING = 1 << 16


def _percentiles_us(ring: np.ndarray, n: int) -> dict[str, float]:
    n = min(n, LAT_RING)
    if n == 0:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan}
    a = ring[:n] / 1000.0
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


@dataclass
class NodeStats:
    """What the loop counts. Fault counters only count faults (see each comment)."""

    steps: int = 0
    deadline_misses: int = 0  # command-to-command intervals > deadlines.LATE_FACTOR periods
    ticks_missed: int = 0  # nominal periods without a command in those intervals
    # Fixed mode only: why a tick sent no command. Late: the loop woke (or ran) past the next
    # tick and skipped it, counted exactly as `realtime.probe_wakeups` counts the machine's
    # floor; no sample: a tick in RUN found no fresh SENSOR frame since the last one (the
    # device's timing, e.g. sample jitter, not the node's).
    ticks_late: int = 0
    ticks_no_sample: int = 0
    failsafe_events: int = 0  # transitions to SAFE caused by a fault (not the orderly shutdown)
    shutdowns: int = 0  # transitions to SAFE at shutdown
    reconnects: int = 0
    policy_errors: int = 0
    reloads: int = 0
    reloads_rejected: int = 0
    hello_mismatch: int = 0
    wrong_size: int = 0
    out_of_range: int = 0  # SENSOR samples outside the config's inputs[].range
    unstable_steps: int = 0  # cycles whose elapsed exceeds the explicit solver's stability bound
    miss_log: list = field(default_factory=list, repr=False)  # (monotonic s, ticks missed), first 100
    latency_ns: np.ndarray = field(default_factory=lambda: np.zeros(LAT_RING, np.int64), repr=False)
    n_lat: int = 0
    compute_ns: np.ndarray = field(default_factory=lambda: np.zeros(LAT_RING, np.int64), repr=False)
    n_compute: int = 0

    def add_latency(self, ns: int, compute_ns: int | None = None) -> None:
        """One command: frame ready -> written, and cycle start -> written (default: the same)."""
        self.latency_ns[self.n_lat % LAT_RING] = ns
        self.n_lat += 1
        self.compute_ns[self.n_compute % LAT_RING] = ns if compute_ns is None else compute_ns
        self.n_compute += 1

    def latency_us(self) -> dict[str, float]:
        """Sensor-to-command: frame ready -> command written (fixed mode: includes the wait
        for the tick)."""
        return _percentiles_us(self.latency_ns, self.n_lat)

    def compute_latency_us(self) -> dict[str, float]:
        """Cycle start (fixed mode: the tick; event mode: the frame ready) -> command written."""
        return _percentiles_us(self.compute_ns, self.n_compute)
