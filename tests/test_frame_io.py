"""The compiled wait + read + frame + write call (framecodec.*_frame_io, node/syscalls.py) on a
real pty pair: what it writes is what the per-frame call encodes on the same state, a timeout
writes nothing, a packet for Python is handed back with the bytes it read, a lost peer is R_IO."""

import os
import time
from pathlib import Path

import numpy as np
import pytest

import edgeliquid
from edgeliquid.node import framecodec as F
from edgeliquid.node import protocol as P
from edgeliquid.node import syscalls
from edgeliquid.node.channels import ChannelMaps
from edgeliquid.node.config import load_config
from edgeliquid.node.fastpath import fast_arrays

pytestmark = pytest.mark.skipif(not syscalls.AVAILABLE, reason="compiled system calls: 64-bit Linux only")

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "configs" / "cartpole_demo.yaml"


@pytest.fixture(scope="module", params=["cartpole_ncp", "cartpole_cfc"])
def compiled(request):
    cfg = load_config(CFG)
    policy = edgeliquid.load(ROOT / "edgeliquid" / "data" / f"{request.param}.onnx")
    return cfg, policy


def _args(cfg, policy):
    maps = ChannelMaps(cfg.inputs, cfg.outputs, policy.dtype)
    fs = F.FrameState(len(cfg.inputs), cfg.rate_hz, cfg.model_dt, maps.ranges, policy.max_elapsed)
    return fs, [fs.buf, fs.st, fs.fv, maps.chan, maps.xbuf, *fast_arrays(policy)]


def _copy(args):
    return [a.copy() for a in args]


@pytest.fixture
def pty():
    master, slave = os.openpty()
    os.set_blocking(slave, False)
    os.set_blocking(master, False)
    import tty

    tty.setraw(master)
    tty.setraw(slave)
    yield master, slave
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


def _read_all(fd, timeout=1.0):
    end, out = time.monotonic() + timeout, b""
    while time.monotonic() < end and not out.endswith(b"\x00"):
        try:
            out += os.read(fd, 4096)
        except BlockingIOError:
            time.sleep(0.001)
    return out


def test_a_run_cycle_writes_what_the_frame_call_encodes(compiled, pty):
    """RUN, one SENSOR at a time: R_SENT, the whole frame written, byte for byte what
    ltc/cfc_frame_step encodes on a copy of the same state at the same clock."""
    cfg, policy = compiled
    io, step = F.frame_io_kernel(policy), F.frame_kernel(policy)
    master, slave = pty
    fs, args = _args(cfg, policy)
    rng = np.random.default_rng(2)
    t_us = 1_000_000
    for i in range(30):
        t_us += int(rng.integers(500, 1500))
        fr = P.encode_frame(P.SENSOR, i + 1, t_us, rng.normal(0, 0.1, 4).astype(np.float32).tolist())
        ref = _copy(args)
        os.write(master, fr)
        before = time.monotonic_ns()
        r = io(slave, 1_000_000_000, F.OP_EVENT, P.MODE_RUN, *args)
        after = time.monotonic_ns()
        assert r & 0xFF == F.R_SENT, r & 0xFF
        st = fs.st
        assert st[F.ST_READ] == len(fr)
        assert before <= st[F.ST_READY_NS] <= st[F.ST_DONE_NS] <= st[F.ST_WRITTEN_NS] <= after
        assert st[F.ST_WROTE] == r >> 8 and st[F.ST_SENT] == i + 1
        # the per-frame call on the copy, at the clock the io call read
        ref[0][: len(fr)] = np.frombuffer(fr, np.uint8)
        want = step(F.OP_EVENT, 0, len(fr), int(st[F.ST_READY_NS]), P.MODE_RUN, *ref)
        assert want & 0xFF == F.R_STEP_END and want >> 8 == r >> 8
        wire = _read_all(master)
        assert wire == bytes(ref[0][F.TX_OFF : F.TX_OFF + (want >> 8)])
        pkt = P.decode_frame(wire[:-1])
        assert (pkt.type, pkt.seq, pkt.ref_seq) == (P.ACTUATE, i + 1, i + 1)
        # the state (but the io call's own slots), maps, policy: the same bits
        np.testing.assert_array_equal(args[1][: F.ST_READ], ref[1][: F.ST_READ])
        for a, b in zip(args[2:], ref[2:], strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_timeout_reads_and_writes_nothing(compiled, pty):
    cfg, policy = compiled
    io = F.frame_io_kernel(policy)
    master, slave = pty
    fs, args = _args(cfg, policy)
    st0 = fs.st.copy()
    t0 = time.monotonic()
    assert io(slave, 30_000_000, F.OP_EVENT, P.MODE_RUN, *args) == F.R_DONE
    assert time.monotonic() - t0 >= 0.029  # it waited (ppoll's timeout), released nothing early
    np.testing.assert_array_equal(fs.st, st0)
    assert io(slave, 0, F.OP_EVENT, P.MODE_RUN, *args) == F.R_DONE  # no wait: returns at once
    with pytest.raises(BlockingIOError):
        os.read(master, 64)


def test_what_python_must_judge_is_handed_back(compiled, pty):
    """HELLO (and a SENSOR outside RUN): the packet code, the bytes read, nothing written."""
    cfg, policy = compiled
    io = F.frame_io_kernel(policy)
    master, slave = pty
    fs, args = _args(cfg, policy)
    hello = P.encode_frame(P.HELLO, 1, 0, [4.0, 1.0, 100.0])
    os.write(master, hello)
    assert io(slave, 1_000_000_000, F.OP_EVENT, P.MODE_RUN, *args) == F.R_PACKET
    assert fs.st[F.ST_READ] == len(hello) and fs.st[F.ST_TYPE] == P.HELLO
    sensor = P.encode_frame(P.SENSOR, 2, 10, [0.0] * 4)
    os.write(master, sensor)
    assert io(slave, 1_000_000_000, F.OP_EVENT, P.MODE_SAFE, *args) == F.R_PACKET
    assert fs.st[F.ST_SEQ] == 2 and fs.st[F.ST_LAST_SEQ] == -1  # decoded, nothing committed
    with pytest.raises(BlockingIOError):
        os.read(master, 64)


def test_a_lost_peer_is_r_io_not_a_hang(compiled, pty):
    cfg, policy = compiled
    io = F.frame_io_kernel(policy)
    master, slave = pty
    _, args = _args(cfg, policy)
    os.close(master)
    t0 = time.monotonic()
    assert io(slave, 2_000_000_000, F.OP_EVENT, P.MODE_RUN, *args) == F.R_IO
    assert time.monotonic() - t0 < 1.0  # the hang-up wakes the wait


def test_the_tick_call_sleeps_to_the_tick_and_steps_the_newest_frame(compiled, pty):
    """Fixed mode: frames before the tick are read and kept (the newest fresh one), the tick is
    taken on time, and what it writes is the per-frame calls' OP_FIXED + OP_TICK on a copy."""
    cfg, policy = compiled
    tick, step = F.frame_tick_kernel(policy), F.frame_kernel(policy)
    master, slave = pty
    fs, args = _args(cfg, policy)
    tick(-1, 0, 0, P.MODE_SAFE, *_copy(args))  # compiled (or loaded) before the clock matters
    rng = np.random.default_rng(3)
    for i in range(10):
        frames = [
            P.encode_frame(P.SENSOR, 2 * i + k + 1, 1000 * (2 * i + k), rng.normal(0, 0.1, 4).tolist())
            for k in range(2)
        ]
        ref = _copy(args)
        os.write(master, b"".join(frames))
        t_tick = time.monotonic_ns() + 3_000_000
        r = tick(slave, t_tick, 200_000, P.MODE_RUN, *args)
        st = fs.st
        assert r & 0xFF == F.R_SENT, r & 0xFF
        # at the tick, not before; the bound only catches a wrong clock (a loaded CI VM is late)
        assert t_tick <= st[F.ST_TICKED] < t_tick + 500_000_000
        assert st[F.ST_PEND_NS] == st[F.ST_READY_NS] < t_tick  # read before the tick
        data = b"".join(frames)
        ref[0][: len(data)] = np.frombuffer(data, np.uint8)
        assert step(F.OP_FIXED, 0, len(data), int(st[F.ST_PEND_NS]), P.MODE_RUN, *ref) == F.R_DONE
        want = step(F.OP_TICK, 0, 0, int(st[F.ST_TICKED]), P.MODE_RUN, *ref)
        assert want & 0xFF == F.R_STEP_END and want >> 8 == r >> 8
        wire = _read_all(master)
        assert wire == bytes(ref[0][F.TX_OFF : F.TX_OFF + (want >> 8)])
        assert P.decode_frame(wire[:-1]).ref_seq == 2 * i + 2  # the newer of the two
        np.testing.assert_array_equal(args[1][: F.ST_READ], ref[1][: F.ST_READ])
        for a, b in zip(args[2:], ref[2:], strict=True):
            np.testing.assert_array_equal(a, b)


def test_the_tick_call_returns_before_a_far_tick_and_for_python(compiled, pty):
    cfg, policy = compiled
    tick = F.frame_tick_kernel(policy)
    master, slave = pty
    fs, args = _args(cfg, policy)
    tick(-1, 0, 0, P.MODE_SAFE, *_copy(args))
    # nothing pending, the tick near: taken, R_DONE (a tick without a fresh sample)
    t_tick = time.monotonic_ns() + 1_000_000
    assert tick(slave, t_tick, 0, P.MODE_RUN, *args) == F.R_DONE
    assert fs.st[F.ST_TICKED] >= t_tick
    # a tick beyond the longest sleep: back after MAX_SLEEP_NS, the tick not taken
    t0 = time.monotonic_ns()
    assert tick(slave, t0 + 10**9, 0, P.MODE_RUN, *args) == F.R_DONE
    took = time.monotonic_ns() - t0
    assert fs.st[F.ST_TICKED] == 0 and F.MAX_SLEEP_NS <= took < 10**9 // 2
    # a HELLO before the tick: handed to Python at once, the tick not taken
    os.write(master, P.encode_frame(P.HELLO, 1, 0, [4.0, 1.0, 100.0]))
    assert tick(slave, time.monotonic_ns() + 10**9, 0, P.MODE_RUN, *args) == F.R_PACKET
    assert fs.st[F.ST_TICKED] == 0 and fs.st[F.ST_TYPE] == P.HELLO
    with pytest.raises(BlockingIOError):
        os.read(master, 64)
