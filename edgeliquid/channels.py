"""Physical units <-> model units for the node's inputs and outputs (see config.py)."""

from __future__ import annotations

import numpy as np

from .config import InputChannel, OutputChannel


class InputMap:
    """raw sensor values -> model inputs: ``(clip(raw) - offset) * scale``, into a fixed buffer."""

    def __init__(self, chans: list[InputChannel]):
        self.lo = np.array([c.clip[0] for c in chans])
        self.hi = np.array([c.clip[1] for c in chans])
        self.offset = np.array([c.offset for c in chans])
        self.scale = np.array([c.scale for c in chans])
        self.out = np.zeros(len(chans), np.float32)
        self._tmp = np.zeros(len(chans))

    def __call__(self, raw) -> np.ndarray:
        t = self._tmp
        t[:] = raw
        np.clip(t, self.lo, self.hi, out=t)
        t -= self.offset
        t *= self.scale
        self.out[:] = t
        return self.out


class OutputMap:
    """model outputs -> commands: ``clip(y * scale + offset)``, then a rate limit per second."""

    def __init__(self, chans: list[OutputChannel]):
        self.lo = np.array([c.clip[0] for c in chans])
        self.hi = np.array([c.clip[1] for c in chans])
        self.offset = np.array([c.offset for c in chans])
        self.scale = np.array([c.scale for c in chans])
        self.max_rate = np.array([c.max_rate for c in chans])
        self.failsafe = np.array([c.failsafe for c in chans])
        self.last = self.failsafe.copy()
        self.out = np.zeros(len(chans))
        self._step = np.zeros(len(chans))

    def __call__(self, y, dt_s: float) -> np.ndarray:
        u = self.out
        u[:] = y
        u *= self.scale
        u += self.offset
        np.clip(u, self.lo, self.hi, out=u)
        np.multiply(self.max_rate, max(dt_s, 0.0), out=self._step)
        np.clip(u, self.last - self._step, self.last + self._step, out=u)
        self.last[:] = u
        return u

    def command_failsafe(self) -> np.ndarray:
        """The fail-safe command; also resets the rate limiter to start from it."""
        self.last[:] = self.failsafe
        self.out[:] = self.failsafe
        return self.out
