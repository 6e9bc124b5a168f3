"""Wire protocol v1: pure codec between bytes and packets (no I/O here).

Frame grammar (see docs/protocol.md)::

    frame   := [0x00] COBS(packet) 0x00          ; a leading 0x00 is allowed, empty frames ignored
    packet  := header payload crc
    header  := version:u8=1 type:u8 flags:u8 count:u8 seq:u16 t_us:u32 ref_seq:u16   (LE, 12 bytes)
    payload := count * f32 (LE), count in 0..64
    crc     := u16 LE, CRC-16/CCITT-FALSE over header+payload (poly 0x1021, init 0xFFFF)

Types: 1 HELLO, 2 SENSOR, 3 ACTUATE, 4 STATUS. Flags bits 0-3 must be 0; bits 4-7 ignored.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from cobs import cobs

VERSION = 1
HELLO, SENSOR, ACTUATE, STATUS = 1, 2, 3, 4
TYPES = (HELLO, SENSOR, ACTUATE, STATUS)
MODE_RUN, MODE_HOLD, MODE_SAFE = 0, 1, 2
MAX_COUNT = 64
HEADER = struct.Struct("<BBBBHIH")
HEADER_SIZE = HEADER.size  # 12
MAX_PACKET = HEADER_SIZE + 4 * MAX_COUNT + 2
MAX_FRAME = MAX_PACKET + MAX_PACKET // 254 + 2  # COBS overhead + delimiter

#: Error kinds a receiver counts separately.
ERROR_KINDS = ("crc", "cobs", "version", "flags", "length", "type", "nonfinite")


class Packet(NamedTuple):
    """One decoded packet. ``values`` are the float32 payload as Python floats.

    A named tuple rather than a frozen dataclass: one is built per received frame, and
    tuple construction costs a fifth of a frozen dataclass's ``__init__``.
    """

    type: int
    seq: int
    t_us: int
    ref_seq: int = 0
    values: tuple[float, ...] = ()
    flags: int = 0


class DecodeError(ValueError):
    """A frame that must be dropped; ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (binascii's C implementation)."""
    return binascii.crc_hqx(data, 0xFFFF)


def encode_packet(ptype: int, seq: int, t_us: int, values=(), ref_seq: int = 0, flags: int = 0) -> bytes:
    """Packet bytes (header, payload, CRC), without framing."""
    n = len(values)
    if n > MAX_COUNT:
        raise ValueError(f"payload of {n} values exceeds {MAX_COUNT}")
    body = HEADER.pack(VERSION, ptype, flags, n, seq & 0xFFFF, t_us & 0xFFFFFFFF, ref_seq & 0xFFFF)
    body += struct.pack(f"<{n}f", *values)
    return body + struct.pack("<H", crc16(body))


def encode_frame(ptype: int, seq: int, t_us: int, values=(), ref_seq: int = 0, flags: int = 0) -> bytes:
    """A complete frame for the wire: COBS(packet) + 0x00."""
    return cobs.encode(encode_packet(ptype, seq, t_us, values, ref_seq, flags)) + b"\x00"


def decode_packet(packet: bytes) -> Packet:
    """Check and unpack packet bytes; raises :class:`DecodeError` with its kind."""
    if len(packet) < HEADER_SIZE + 2:
        raise DecodeError("length", f"packet of {len(packet)} bytes is shorter than 14")
    if crc16(packet[:-2]) != int.from_bytes(packet[-2:], "little"):
        raise DecodeError("crc", "CRC mismatch")
    version, ptype, flags, count, seq, t_us, ref_seq = HEADER.unpack_from(packet)
    if version != VERSION:
        raise DecodeError("version", f"version {version}, expected {VERSION}")
    if flags & 0x0F:
        raise DecodeError("flags", f"reserved flag bits set: {flags:#04x}")
    if ptype not in TYPES:
        raise DecodeError("type", f"unknown type {ptype}")
    if count > MAX_COUNT or len(packet) != HEADER_SIZE + 4 * count + 2:
        raise DecodeError("length", f"count {count} but {len(packet)} bytes")
    values = struct.unpack_from(f"<{count}f", packet, HEADER_SIZE)
    return Packet(ptype, seq, t_us, ref_seq, values, flags)


def decode_frame(frame: bytes) -> Packet:
    """Decode one COBS-encoded frame (without its 0x00 delimiter)."""
    if len(frame) > MAX_FRAME:
        raise DecodeError("length", f"frame of {len(frame)} bytes exceeds {MAX_FRAME}")
    try:
        packet = cobs.decode(frame)
    except cobs.DecodeError as exc:
        raise DecodeError("cobs", f"COBS: {exc}") from None
    return decode_packet(packet)


class Packetizer:
    """Buffers incoming bytes and yields complete frames (delimiter stripped).

    An oversize run of bytes without a delimiter is discarded (counted as a
    ``length`` error) so a noisy line cannot grow the buffer without bound;
    the receiver resynchronises at the next 0x00.
    """

    def __init__(self):
        self._buf = bytearray()
        self.overflows = 0
        self._discarding = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        start = 0
        while True:
            end = data.find(b"\x00", start)
            if end < 0:
                self._buf += data[start:]
                if len(self._buf) > MAX_FRAME:
                    self._buf.clear()
                    if not self._discarding:
                        self.overflows += 1
                    self._discarding = True
                return
            chunk = bytes(self._buf) + data[start:end]
            self._buf.clear()
            start = end + 1
            if self._discarding:
                self._discarding = False
                continue
            if len(chunk) > MAX_FRAME:
                self.overflows += 1
                continue
            if chunk:  # empty frames (e.g. a leading 0x00) are ignored
                yield chunk


def seq_delta(prev: int, seq: int) -> int:
    """Signed u16 difference seq - prev in -32768..32767 (wrap aware)."""
    return ((seq - prev + 0x8000) & 0xFFFF) - 0x8000


@dataclass
class RxCounters:
    """What a receiver counts, separately per kind."""

    frames: int = 0
    errors: dict[str, int] = field(default_factory=lambda: {k: 0 for k in ERROR_KINDS})
    lost: int = 0
    duplicates: int = 0
    reordered: int = 0
    _last_seq: int | None = None

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def track_seq(self, seq: int) -> bool:
        """Update loss/duplicate counters; False if the frame is stale (duplicate/old)."""
        if self._last_seq is None:
            self._last_seq = seq
            return True
        d = seq_delta(self._last_seq, seq)
        if d == 0:
            self.duplicates += 1
            return False
        if d < 0:
            self.reordered += 1
            return False
        self.lost += d - 1
        self._last_seq = seq
        return True

    def reset_seq(self) -> None:
        self._last_seq = None

    @property
    def total_errors(self) -> int:
        return sum(self.errors.values())
