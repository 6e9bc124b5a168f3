"""A progress line on stderr: tasks done/total, units (steps) done, rate, ETA."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts finished tasks and their units; redraws at most ``every_s`` (a tty: in place).

    ``total_weight`` (e.g. bytes to read) makes the ETA follow the work rather than the
    task count; without it the ETA assumes tasks of equal size.
    """

    def __init__(
        self,
        label: str,
        total_tasks: int,
        unit: str = "steps",
        total_weight: float | None = None,
        stream: TextIO | None = None,
        enabled: bool = True,
        every_s: float = 0.2,
    ):
        self.label, self.total, self.unit = label, total_tasks, unit
        self.total_weight = total_weight
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s if self.tty else max(every_s, 5.0)
        self.done = self.failed = 0
        self.units = 0
        self.weight = 0.0
        self.t0 = time.monotonic()
        self._drawn = 0.0

    def update(self, units: int = 0, weight: float = 0.0, failed: bool = False) -> None:
        """One task finished (``failed``: after its retry) with ``units`` done."""
        self.done += 1
        self.failed += int(failed)
        self.units += int(units)
        self.weight += weight
        now = time.monotonic()
        if self.enabled and (now - self._drawn >= self.every_s or self.done == self.total):
            self._drawn = now
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        el = max((now or time.monotonic()) - self.t0, 1e-9)
        frac = (
            self.weight / self.total_weight
            if self.total_weight
            else (self.done / self.total if self.total else 1.0)
        )
        eta = el * (1 - frac) / frac if frac > 0 else float("nan")
        fail = f", {self.failed} failed" if self.failed else ""
        return (
            f"{self.label}: {self.done}/{self.total} tasks{fail}, {self.units:,} {self.unit}, "
            f"{self.units / el:,.0f} {self.unit}/s, elapsed {el:.1f} s, ETA {eta:.1f} s"
        )

    def _draw(self, now: float) -> None:
        end = "" if self.tty and self.done < self.total else "\n"
        self.stream.write(("\r" if self.tty else "") + self.line(now) + "  " + end)
        self.stream.flush()
