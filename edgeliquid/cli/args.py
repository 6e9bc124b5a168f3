"""Argument types and the help formatter shared by every ``edgeliquid`` subcommand.

Each numeric option is checked once, at the parser, with one of these ``type=`` helpers:
a bad value is an argparse error (exit 2, one line naming the option) before any work
starts, instead of a traceback, a hang or a silently meaningless run later.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

RATE_HZ_MIN, RATE_HZ_MAX = 1.0, 100_000.0  # the node config accepts loop.rate_hz up to 100 kHz
# edgeliquid.model.cell.SOLVER_NAMES and checks.MAX_UNFOLDS, spelled out so that parsing imports
# no numpy (tests/test_convert.py checks they agree)
SOLVER_CHOICES = ("fused_semi_implicit_euler", "explicit_euler", "rk4")
UNFOLDS_MAX = 1000


def _number(text: str, kind: type, what: str) -> float | int:
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return v


def float_range(
    lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False
) -> Callable[[str], float]:
    """A ``type=`` for a finite float in [lo, hi] (``lo_open``/``hi_open``: exclusive bounds)."""
    what = "a number" + _bounds(lo, hi, lo_open, hi_open)

    def parse(text: str) -> float:
        v = _number(text, float, what)
        too_low = lo is not None and (v < lo or (lo_open and v == lo))
        too_high = hi is not None and (v > hi or (hi_open and v == hi))
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    parse.__name__ = what  # argparse names the type in some messages
    return parse


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """A ``type=`` for an integer in [lo, hi]."""
    what = "an integer" + _bounds(lo, hi, False, False)

    def parse(text: str) -> int:
        v = _number(text, int, what)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    parse.__name__ = what
    return parse


def _bounds(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi:g}"
    return ""


positive_float = float_range(0.0, lo_open=True)
nonneg_float = float_range(0.0)
positive_int = int_range(1)
nonneg_int = int_range(0)
fraction_below_one = float_range(0.0, 1.0, hi_open=True)
rate_hz = float_range(RATE_HZ_MIN, RATE_HZ_MAX)
seconds = positive_float


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help when it has a real default.

    A default of None or False says nothing (the help text says in words what happens then),
    and a help text that already states its default is left alone: one default, once.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" in text
            or "default:" in text
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        return text + " (default: %(default)s)"


def push(text: str) -> tuple[float, float | None]:
    """A ``type=`` for ``FORCE[@TIME]``: a push of FORCE newtons (non-zero, |FORCE| <= 1000) at
    TIME seconds into the run (>= 0; None when not given)."""
    force_s, _, at_s = text.partition("@")
    what = "FORCE[@T] (newtons, 0 < |FORCE| <= 1000; T: seconds into the run, >= 0)"
    try:
        force = float(force_s)
        at = float(at_s) if at_s else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not (math.isfinite(force) and 0 < abs(force) <= 1000) or (at is not None and not 0 <= at < math.inf):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return force, at
