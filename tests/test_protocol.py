"""Protocol v1 codec: round trips, every malformed case rejected and counted, fuzzing."""

import struct

import pytest
from cobs import cobs
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeliquid.node import protocol as P
from edgeliquid.node.textproto import LineSplitter, decode_line, encode_line


def test_round_trip_and_wraps():
    f = P.encode_frame(P.SENSOR, 0x1_0001, 2**32 + 5, [1.5, -2.25], ref_seq=0x1_0002)
    pkt = P.decode_frame(f[:-1])
    assert (pkt.type, pkt.seq, pkt.t_us, pkt.ref_seq, pkt.values) == (P.SENSOR, 1, 5, 2, (1.5, -2.25))


def test_crc_is_ccitt_false():
    assert P.crc16(b"123456789") == 0x29B1


def _frames(data: bytes, splitter=None):
    p = splitter or P.Packetizer()
    return list(p.feed(data))


GOOD = P.encode_frame(P.SENSOR, 7, 100, [1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    "kind, bad",
    [
        ("crc", lambda: _flip(GOOD, 3)),
        ("version", lambda: _reframe(lambda b: bytes([2]) + b[1:])),
        ("flags", lambda: _reframe(lambda b: b[:2] + bytes([0x01]) + b[3:])),
        ("length", lambda: _reframe(lambda b: b[:3] + bytes([9]) + b[4:])),
        ("length", lambda: _reframe(lambda b: b[:-6])),
        ("type", lambda: _reframe(lambda b: b[:1] + bytes([9]) + b[2:])),
        ("length", lambda: cobs.encode(b"\x01\x02") + b"\x00"),
    ],
)
def test_malformed_frames_rejected_by_kind_next_frame_survives(kind, bad):
    frames = _frames(bad() + GOOD)
    with pytest.raises(P.DecodeError) as exc:
        P.decode_frame(frames[0])
    assert exc.value.kind == kind
    assert P.decode_frame(frames[-1]).seq == 7


def test_reserved_high_flag_bits_are_ignored():
    f = P.encode_frame(P.SENSOR, 1, 1, [0.0], flags=0xF0)
    assert P.decode_frame(f[:-1]).flags == 0xF0


def test_injected_zero_splits_frame_and_resyncs():
    mid = len(GOOD) // 2
    frames = _frames(GOOD[:mid] + b"\x00" + GOOD[mid:] + GOOD)
    kinds = []
    for fr in frames[:-1]:
        with pytest.raises(P.DecodeError) as e:
            P.decode_frame(fr)
        kinds.append(e.value.kind)
    assert P.decode_frame(frames[-1]).seq == 7


def test_oversize_garbage_is_discarded_bounded():
    p = P.Packetizer()
    frames = _frames(b"\x01" * 5000 + b"\x00" + GOOD, p)
    assert p.overflows == 1
    assert len(frames) == 1 and P.decode_frame(frames[0]).seq == 7


def test_leading_zero_and_empty_frames_ignored():
    assert len(_frames(b"\x00\x00" + GOOD + b"\x00")) == 1


def test_payload_over_64_refused():
    with pytest.raises(ValueError):
        P.encode_frame(P.SENSOR, 0, 0, [0.0] * 65)


def test_seq_tracking_wrap_loss_duplicates():
    c = P.RxCounters()
    for s in (65534, 65535, 0, 3, 3, 2, 4):
        c.track_seq(s)
    assert (c.lost, c.duplicates, c.reordered) == (2, 1, 1)
    c2 = P.RxCounters()
    c2.track_seq(10)
    c2.track_seq(10 + 300)  # a burst of > 255 lost frames
    assert c2.lost == 299


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_decoder_never_raises_anything_else(data):
    for fr in _frames(data):
        try:
            P.decode_frame(fr)
        except P.DecodeError as e:
            assert e.kind in P.ERROR_KINDS


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 3),
    st.integers(0, 2**16 - 1),
    st.integers(0, 2**32 - 1),
    st.lists(st.floats(width=32, allow_nan=False), max_size=64),
)
def test_fuzz_round_trip(t, seq, t_us, values):
    f = P.encode_frame(P.TYPES[t], seq, t_us, values)
    assert f.count(0) == 1
    pkt = P.decode_frame(f[:-1])
    assert pkt.values == tuple(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def test_text_mode_lines():
    sp = LineSplitter()
    lines = list(sp.feed(b"S 123 1.5 2\nH 4 1 100\nS 5 nan 1\nX\n"))
    assert decode_line(lines[0], 1).values == (1.5, 2.0)
    assert decode_line(lines[1], 2).type == P.HELLO
    with pytest.raises(P.DecodeError, match="non-finite"):
        decode_line(lines[2], 3)
    with pytest.raises(P.DecodeError):
        decode_line(lines[3], 4)
    assert encode_line(P.ACTUATE, 1, [0.5], ref_seq=9) == b"A 9 0.5\n"


def _flip(frame: bytes, i: int) -> bytes:
    pkt = bytearray(cobs.decode(frame[:-1]))
    pkt[i] ^= 0x40
    return cobs.encode(bytes(pkt)) + b"\x00"


def _reframe(edit) -> bytes:
    """Edit the packet body and re-sign it, so only the edited field is wrong."""
    pkt = cobs.decode(GOOD[:-1])[:-2]
    body = edit(pkt)
    return cobs.encode(body + struct.pack("<H", P.crc16(body))) + b"\x00"
