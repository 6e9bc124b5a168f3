"""Physical units <-> model units for the node's inputs and outputs (see config.py).

Both maps are packed into one float64 array so the cpu backend's fused kernel
(:func:`edgeliquid.runtime.kernels.control_step`) runs map -> policy -> map in one call. Its last
slot counts the input samples the clip changed (:attr:`ChannelMaps.clipped`), on both paths.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..runtime.kernels import STATUS_BAD_INPUT, STATUS_BAD_OUTPUT, STATUS_OK
from .config import InputChannel, OutputChannel


class ChannelMaps:
    """Both maps packed for :func:`edgeliquid.runtime.kernels.control_step` (the node's fast path).

    ``last`` and ``u`` live inside ``chan`` so the kernel updates the rate limiter itself;
    the last slot of ``chan`` is the running count of clipped input samples.
    """

    def __init__(self, inputs: list[InputChannel], outputs: list[OutputChannel], dtype=np.float32):
        n, m = len(inputs), len(outputs)
        blocks = [
            [c.clip[0] for c in inputs],
            [c.clip[1] for c in inputs],
            [c.offset for c in inputs],
            [c.scale for c in inputs],
            [c.scale for c in outputs],
            [c.offset for c in outputs],
            [c.clip[0] for c in outputs],
            [c.clip[1] for c in outputs],
            [c.max_rate for c in outputs],
            [c.failsafe for c in outputs],
            [c.failsafe for c in outputs],
            [0.0],  # clipped input samples so far
        ]
        self.chan = np.array([v for b in blocks for v in b], np.float64)
        self.failsafe = np.array([c.failsafe for c in outputs])
        self.n, self.m = n, m
        self.last = self.chan[4 * n + 5 * m : 4 * n + 6 * m]
        self.u = self.chan[4 * n + 6 * m : 4 * n + 7 * m]
        self.xbuf = np.zeros(n, dtype)
        # (index, low, high) of inputs that declare a plausible range; empty: nothing to check.
        self._ranges = tuple((i, c.range[0], c.range[1]) for i, c in enumerate(inputs) if c.range is not None)

    @property
    def ranges(self) -> tuple[tuple[int, float, float], ...]:
        """(index, low, high) of every input that declares a plausible ``range``."""
        return self._ranges

    def in_range(self, values) -> bool:
        """True when every raw value lies inside its input's declared ``range``.

        ``values`` holds one float per input (``pkt.values``). Inputs without a range accept
        anything (non-finite values are the node's NaN check's job); NaN is outside any range.
        Costs one test when no input declares a range.
        """
        if not self._ranges:
            return True
        try:
            for i, lo, hi in self._ranges:
                if not lo <= values[i] <= hi:
                    return False
        except IndexError:  # fewer values than inputs: not a valid sample
            return False
        return True

    @property
    def clipped(self) -> int:
        """How many input samples the config's ``clip`` changed so far (both compute paths)."""
        return int(self.chan[-1])

    def apply_numpy(self, policy, raw, elapsed: float, dt_s: float) -> int:
        """What :func:`~edgeliquid.runtime.kernels.control_step` does, for non-numba backends."""
        n, m, c = self.n, self.m, self.chan
        raw = np.asarray(raw, np.float64)
        if not np.all(np.isfinite(raw)):
            return STATUS_BAD_INPUT
        clipped = np.clip(raw, c[:n], c[n : 2 * n])
        c[-1] += np.count_nonzero(clipped != raw)
        x = (clipped - c[2 * n : 3 * n]) * c[3 * n : 4 * n]
        self.xbuf[:] = x
        try:
            y = np.asarray(policy.step(x, elapsed), np.float64)
        except InputError:
            return STATUS_BAD_OUTPUT
        if not np.all(np.isfinite(y)):
            return STATUS_BAD_OUTPUT
        o = 4 * n
        u = np.clip(
            y * c[o : o + m] + c[o + m : o + 2 * m], c[o + 2 * m : o + 3 * m], c[o + 3 * m : o + 4 * m]
        )
        step_max = c[o + 4 * m : o + 5 * m] * max(dt_s, 0.0)
        u = np.clip(u, self.last - step_max, self.last + step_max)
        self.last[:] = u
        self.u[:] = u
        return STATUS_OK

    def command_failsafe(self) -> np.ndarray:
        self.last[:] = self.failsafe
        self.u[:] = self.failsafe
        return self.u
