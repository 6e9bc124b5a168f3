"""Text mode of protocol v1 for hobby boards (``protocol: text``).

Device -> node: ``S <t_us> <v1> <v2> ...\\n`` (sensor values), or
``H <n_sensors> <n_actuators> <rate_hz>\\n`` (hello). Node -> device:
``A <seq> <u1> ...\\n`` where seq answers the device's line count, ``H ...``
and ``T <mode> <reason>\\n`` (status). Lines are ASCII, space separated.
Malformed lines raise :class:`~edgeliquid.node.protocol.DecodeError` like bad frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from .protocol import ACTUATE, HELLO, MAX_COUNT, SENSOR, STATUS, DecodeError, Packet

MAX_LINE = 16 + MAX_COUNT * 24


class LineSplitter:
    """Buffers bytes, yields complete lines (like :class:`protocol.Packetizer`)."""

    def __init__(self):
        self._buf = bytearray()
        self.overflows = 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buf += data
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                if len(self._buf) > MAX_LINE:
                    self._buf.clear()
                    self.overflows += 1
                return
            line = bytes(self._buf[:i]).strip()
            del self._buf[: i + 1]
            if line:
                yield line


def decode_line(line: bytes, seq: int) -> Packet:
    """Parse one device line; ``seq`` is the receiver's line counter (text has none)."""
    try:
        parts = line.decode("ascii").split()
    except UnicodeDecodeError:
        raise DecodeError("cobs", "non-ASCII bytes in text line") from None
    if not parts:
        raise DecodeError("length", "empty line")
    kind = parts[0]
    try:
        if kind == "S":
            t_us = int(parts[1]) & 0xFFFFFFFF
            values = tuple(float(v) for v in parts[2:])
            if len(values) > MAX_COUNT:
                raise DecodeError("length", f"{len(values)} values exceed {MAX_COUNT}")
            if not all(math.isfinite(v) for v in values):
                raise DecodeError("nonfinite", "non-finite sensor value")
            return Packet(SENSOR, seq & 0xFFFF, t_us, 0, values)
        if kind == "H":
            return Packet(HELLO, seq & 0xFFFF, 0, 0, tuple(float(v) for v in parts[1:4]))
    except DecodeError:
        raise
    except (IndexError, ValueError):
        raise DecodeError("length", f"malformed line {line[:40]!r}") from None
    raise DecodeError("type", f"unknown line type {kind!r}")


def encode_line(ptype: int, seq: int, values=(), ref_seq: int = 0, t_us: int = 0) -> bytes:
    """One text line; SENSOR lines carry ``t_us``, ACTUATE lines ``ref_seq``."""
    if ptype == ACTUATE:
        return ("A %d " % ref_seq + " ".join("%.9g" % v for v in values) + "\n").encode()
    if ptype == HELLO:
        return ("H " + " ".join("%.9g" % v for v in values) + "\n").encode()
    if ptype == STATUS:
        return ("T " + " ".join("%d" % v for v in values) + "\n").encode()
    if ptype == SENSOR:
        return ("S %d " % (t_us & 0xFFFFFFFF) + " ".join("%.9g" % v for v in values) + "\n").encode()
    raise ValueError(f"no text form for type {ptype}")
