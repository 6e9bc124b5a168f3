"""The compiled frame codec (node/framecodec.py) against protocol.py, the readable spec: the same
frames, packets, error kinds, overflow counts, sequence counters and bytes on the wire."""

import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgeliquid
from edgeliquid.node import framecodec as F
from edgeliquid.node import protocol as P
from edgeliquid.node.channels import ChannelMaps
from edgeliquid.node.config import load_config
from edgeliquid.node.fastpath import fast_arrays, fused_kernel

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "configs" / "cartpole_demo.yaml"


@pytest.fixture(scope="module", params=["cartpole_ncp", "cartpole_cfc"])
def compiled(request):
    cfg = load_config(CFG)
    policy = edgeliquid.load(ROOT / "edgeliquid" / "data" / f"{request.param}.onnx")
    return cfg, policy, F.frame_kernel(policy)


def _state(cfg, policy):
    maps = ChannelMaps(cfg.inputs, cfg.outputs, policy.dtype)
    fs = F.FrameState(len(cfg.inputs), cfg.rate_hz, cfg.model_dt, maps.ranges, policy.max_elapsed)
    return fs, maps


def _bits(values):
    return tuple(struct.pack("<d", v) for v in values)  # NaN payloads compared too


def _packet(ptype, values, flags=0, version=1, count=None, seq=7, t_us=99, ref=3, crc_ok=True):
    """Packet bytes with any header (a bad version/type/count still gets a good CRC)."""
    n = len(values) if count is None else count
    body = P.HEADER.pack(version, ptype, flags, n, seq, t_us, ref) + struct.pack(f"<{len(values)}f", *values)
    crc = P.crc16(body) ^ (0 if crc_ok else 1)
    return body + struct.pack("<H", crc)


F32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
PIECE = st.one_of(
    st.builds(
        lambda t, v, s, tu: P.encode_frame(t, s, tu, v),
        st.sampled_from(P.TYPES),
        st.lists(F32, max_size=8),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFFFFFF),
    ),
    st.builds(  # header errors behind a good CRC: version, flags, type, count/size
        lambda t, v, f, ver, c: __import__("cobs.cobs").cobs.encode(_packet(t, v, f, ver, c)) + b"\x00",
        st.integers(0, 7),
        st.lists(F32, max_size=4),
        st.integers(0, 255),
        st.sampled_from([1, 1, 1, 0, 2]),
        st.one_of(st.none(), st.integers(0, 255)),
    ),
    st.builds(
        lambda v: __import__("cobs.cobs").cobs.encode(_packet(2, v, crc_ok=False)) + b"\x00",
        st.lists(F32, max_size=4),
    ),
    st.binary(max_size=30),  # garbage (COBS errors, short packets, stray delimiters)
    st.just(b"\x00"),
    st.integers(P.MAX_FRAME - 2, P.MAX_FRAME + 40).map(lambda n: b"\x05" * n),  # around the limit
    st.integers(P.MAX_FRAME + 1, 700).map(lambda n: b"\x07" * n + b"\x00"),  # oversize runs
)


def _spec(feeds):
    """What Packetizer + decode_frame make of the feeds: events, and overflows after each feed."""
    pz, events, overflows = P.Packetizer(), [], []
    for data in feeds:
        for chunk in pz.feed(data):
            try:
                p = P.decode_frame(chunk)
                events.append(("ok", p.type, p.seq, p.t_us, p.ref_seq, p.flags, _bits(p.values)))
            except P.DecodeError as exc:
                events.append(("err", exc.kind))
        overflows.append(pz.overflows)
    return events, overflows


def _compiled(kernel, policy, fs, maps, feeds):
    events, overflows, n_over = [], [], 0
    fp, ip, work = fast_arrays(policy)
    for data in feeds:
        n = len(data)
        fs.buf[:n] = np.frombuffer(data, np.uint8)
        pos = 0
        while True:
            r = kernel(F.OP_DECODE, pos, n, 0, 0, fs.buf, fs.st, fs.fv, maps.chan, maps.xbuf, fp, ip, work)
            code = r & 0xFF
            if code == F.R_DONE:
                break
            if code == F.R_PACKET:
                p = fs.packet()
                events.append(("ok", p.type, p.seq, p.t_us, p.ref_seq, p.flags, _bits(p.values)))
            elif code == F.R_ERROR:
                events.append(("err", P.ERROR_KINDS[fs.st[F.ST_KIND]]))
            else:
                assert code == F.R_OVERFLOW
                n_over += 1
            pos = int(fs.st[F.ST_POS])
        overflows.append(n_over)
    return events, overflows


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(PIECE, max_size=12), cuts=st.lists(st.integers(0, 4000), max_size=6))
def test_decoding_matches_the_spec_frame_for_frame(compiled, pieces, cuts):
    cfg, policy, kernel = compiled
    stream = b"".join(pieces)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    feeds = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
    fs, maps = _state(cfg, policy)
    got = _compiled(kernel, policy, fs, maps, feeds)
    want = _spec(feeds)
    assert got == want
    assert fs.st[F.ST_FRAMES] == sum(1 for _ in got[0])


def test_every_error_kind_is_reached(compiled):
    cfg, policy, kernel = compiled
    cobs = __import__("cobs.cobs").cobs
    feeds = [
        cobs.encode(_packet(2, [1.0], crc_ok=False)) + b"\x00",  # crc
        b"\x05\x01\x00",  # cobs: not enough bytes for the length code
        cobs.encode(_packet(2, [1.0], version=2)) + b"\x00",
        cobs.encode(_packet(2, [1.0], flags=0x01)) + b"\x00",
        cobs.encode(_packet(2, [1.0], count=2)) + b"\x00",  # length
        cobs.encode(_packet(9, [1.0])) + b"\x00",  # type
        b"\x03\x01\x02\x00",  # length: shorter than 14
    ]
    fs, maps = _state(cfg, policy)
    events, _ = _compiled(kernel, policy, fs, maps, feeds)
    kinds = [e[1] for e in events]
    assert (
        kinds
        == ["crc", "cobs", "version", "flags", "length", "type", "length"]
        == [e[1] for e in _spec(feeds)[0]]
    )
    # "nonfinite" is the node's sample check (a decoded SENSOR with NaN): not a decode error.
    assert set(kinds) | {"nonfinite"} == set(P.ERROR_KINDS)


@settings(max_examples=300, deadline=None)
@given(
    ptype=st.integers(0, 255),
    flags=st.integers(0, 255),
    seq=st.integers(0, 0xFFFF),
    t_us=st.integers(0, 0xFFFFFFFF),
    ref=st.integers(0, 0xFFFF),
    values=st.lists(st.floats(width=32, allow_nan=False), max_size=P.MAX_COUNT),
)
def test_encoding_matches_the_spec_byte_for_byte(ptype, flags, seq, t_us, ref, values):
    buf = np.zeros(F.BUF_SIZE, np.uint8)
    vals = np.array(values + [0.0], np.float64)
    size = F.encode_frame_into(buf, ptype, flags, seq, t_us, ref, vals, len(values))
    want = P.encode_frame(ptype, seq, t_us, values, ref, flags)
    assert bytes(buf[F.TX_OFF : F.TX_OFF + size]) == want


def test_cobs_block_boundaries_byte_for_byte():
    # 254-byte COBS blocks end exactly at the packet's end or one byte before / after.
    buf = np.zeros(F.BUF_SIZE, np.uint8)
    for count in range(57, 65):
        for fill in (1.0, 0.0, float(np.float32(1.0000001))):
            values = [fill] * count
            vals = np.array(values, np.float64)
            size = F.encode_frame_into(buf, 2, 0, 0x0101, 0x01010101, 0x0101, vals, count)
            assert bytes(buf[F.TX_OFF : F.TX_OFF + size]) == P.encode_frame(
                2, 0x0101, 0x01010101, values, 0x0101
            )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seqs=st.lists(st.integers(0, 0xFFFF), max_size=40))
def test_sequence_counters_match_rxcounters(compiled, seqs):
    cfg, policy, kernel = compiled
    fs, maps = _state(cfg, policy)
    fp, ip, work = fast_arrays(policy)
    rx, shared = P.RxCounters(), F.SharedRx(fs.st)
    for s in seqs:
        rx.track_seq(s)
        fr = P.encode_frame(P.SENSOR, s, 0, [0.0] * 4)
        fs.buf[: len(fr)] = np.frombuffer(fr, np.uint8)
        assert (
            kernel(F.OP_FIXED, 0, len(fr), 0, 0, fs.buf, fs.st, fs.fv, maps.chan, maps.xbuf, fp, ip, work)
            == 0
        )
    assert (shared.lost, shared.duplicates, shared.reordered) == (rx.lost, rx.duplicates, rx.reordered)
    assert shared.frames == len(seqs)


def test_a_run_cycle_sends_what_the_spec_encodes(compiled):
    """Event mode, RUN: one call decodes the SENSOR, steps the policy (= the fused control
    kernel) and encodes the ACTUATE, byte for byte protocol.encode_frame's."""
    cfg, policy, kernel = compiled
    fs, maps = _state(cfg, policy)
    ref_maps = ChannelMaps(cfg.inputs, cfg.outputs, policy.dtype)
    fp, ip, work = fast_arrays(policy)
    control = fused_kernel(policy)
    rng = np.random.default_rng(1)
    t_us, now, last_t, prev_now = 5_000_000, 10**12, 0, 0
    for i in range(50):
        values = rng.normal(0, 0.1, 4).astype(np.float32).tolist()
        t_us += int(rng.integers(500, 1500))
        now += 1_000_000
        fr = P.encode_frame(P.SENSOR, i + 1, t_us, values)
        fs.buf[: len(fr)] = np.frombuffer(fr, np.uint8)
        work_before = work.copy()
        r = kernel(
            F.OP_EVENT, 0, len(fr), now, P.MODE_RUN, fs.buf, fs.st, fs.fv, maps.chan, maps.xbuf, fp, ip, work
        )
        assert r & 0xFF == F.R_STEP_END
        # the same cycle by the fused control kernel on a copy of the state
        w = work_before.copy()
        elapsed = (1.0 / cfg.rate_hz if i == 0 else (t_us - last_t) / 1e6) / cfg.model_dt
        dt_s = (now - prev_now) / 1e9
        assert (
            control(np.array(values, np.float64), elapsed, dt_s, ref_maps.chan, ref_maps.xbuf, fp, ip, w) == 0
        )
        np.testing.assert_array_equal(w, work)
        want = P.encode_frame(P.ACTUATE, i + 1, (now // 1000) & 0xFFFFFFFF, ref_maps.u.tolist(), i + 1)
        assert bytes(fs.tx(r >> 8)) == want
        last_t, prev_now = t_us, now
    # not RUN, invalid, stale: handed to Python untouched
    fr = P.encode_frame(P.SENSOR, 60, t_us + 1000, [math.nan, 0.0, 0.0, 0.0])
    fs.buf[: len(fr)] = np.frombuffer(fr, np.uint8)
    args = (fs.buf, fs.st, fs.fv, maps.chan, maps.xbuf, fp, ip, work)
    assert kernel(F.OP_EVENT, 0, len(fr), now, P.MODE_RUN, *args) == F.R_PACKET
    assert fs.st[F.ST_LAST_SEQ] == 50  # nothing committed
    fr = P.encode_frame(P.SENSOR, 50, t_us + 1000, [0.0] * 4)
    fs.buf[: len(fr)] = np.frombuffer(fr, np.uint8)
    assert kernel(F.OP_EVENT, 0, len(fr), now, P.MODE_RUN, *args) == F.R_PACKET
    assert kernel(F.OP_EVENT, 0, len(fr), now, P.MODE_SAFE, *args) == F.R_PACKET
