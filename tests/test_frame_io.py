"""The compiled wait + read + frame + write call (framecodec.*_frame_io, node/syscalls.py) on a
real pty pair: what it writes is what the per-frame call encodes on the same state, a timeout
writes nothing, a packet for Python is handed back with the bytes it read, a lost peer is R_IO."""

import os
import time

import numpy as np
import pytest
from test_framecodec import CFG, ROOT, _state

import edgeliquid
from edgeliquid.node import framecodec as F
from edgeliquid.node import protocol as P
from edgeliquid.node import syscalls
from edgeliquid.node.config import load_config
from edgeliquid.node.fastpath import fast_arrays

pytestmark = pytest.mark.skipif(not syscalls.AVAILABLE, reason="compiled system calls: 64-bit Linux only")


@pytest.fixture(scope="module", params=["cartpole_ncp", "cartpole_cfc"])
def policy_cfg(request):
    return load_config(CFG), edgeliquid.load(ROOT / "edgeliquid" / "data" / f"{request.param}.onnx")


def _args(cfg, policy):
    fs, maps = _state(cfg, policy)
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


def _sent_as_reference(master, args, ref, want) -> P.Packet:
    """The wire carries the reference call's frame, and the state (but the io call's own
    slots), maps and policy hold the same bits: the packet sent."""
    wire = _read_all(master)
    assert wire == bytes(ref[0][F.TX_OFF : F.TX_OFF + (want >> 8)])
    np.testing.assert_array_equal(args[1][: F.ST_READ], ref[1][: F.ST_READ])
    for a, b in zip(args[2:], ref[2:], strict=True):
        np.testing.assert_array_equal(a, b)
    return P.decode_frame(wire[:-1])


def test_a_run_cycle_writes_what_the_frame_call_encodes(policy_cfg, pty):
    """RUN, one SENSOR at a time: R_SENT, the whole frame written, byte for byte what
    ltc/cfc_frame_step encodes on a copy of the same state at the same clock."""
    cfg, policy = policy_cfg
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
        r = io(slave, 1_000_000_000, False, F.OP_EVENT, P.MODE_RUN, *args)
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
        pkt = _sent_as_reference(master, args, ref, want)
        assert (pkt.type, pkt.seq, pkt.ref_seq) == (P.ACTUATE, i + 1, i + 1)


def test_a_timeout_reads_and_writes_nothing(policy_cfg, pty):
    cfg, policy = policy_cfg
    io = F.frame_io_kernel(policy)
    master, slave = pty
    fs, args = _args(cfg, policy)
    st0 = fs.st.copy()
    t0 = time.monotonic()
    assert io(slave, 30_000_000, False, F.OP_EVENT, P.MODE_RUN, *args) == F.R_DONE
    assert time.monotonic() - t0 >= 0.029  # it waited (ppoll's timeout), released nothing early
    np.testing.assert_array_equal(fs.st, st0)
    assert io(slave, 0, False, F.OP_EVENT, P.MODE_RUN, *args) == F.R_DONE  # no wait: returns at once
    with pytest.raises(BlockingIOError):
        os.read(master, 64)


def test_what_python_must_judge_is_handed_back(policy_cfg, pty):
    """HELLO (and a SENSOR outside RUN): the packet code, the bytes read, nothing written."""
    cfg, policy = policy_cfg
    io = F.frame_io_kernel(policy)
    master, slave = pty
    fs, args = _args(cfg, policy)
    hello = P.encode_frame(P.HELLO, 1, 0, [4.0, 1.0, 100.0])
    os.write(master, hello)
    assert io(slave, 1_000_000_000, False, F.OP_EVENT, P.MODE_RUN, *args) == F.R_PACKET
    assert fs.st[F.ST_READ] == len(hello) and fs.st[F.ST_TYPE] == P.HELLO
    sensor = P.encode_frame(P.SENSOR, 2, 10, [0.0] * 4)
    os.write(master, sensor)
    assert io(slave, 1_000_000_000, False, F.OP_EVENT, P.MODE_SAFE, *args) == F.R_PACKET
    assert fs.st[F.ST_SEQ] == 2 and fs.st[F.ST_LAST_SEQ] == -1  # decoded, nothing committed
    with pytest.raises(BlockingIOError):
        os.read(master, 64)


def test_a_lost_peer_is_r_io_not_a_hang(policy_cfg, pty):
    cfg, policy = policy_cfg
    io = F.frame_io_kernel(policy)
    master, slave = pty
    _, args = _args(cfg, policy)
    os.close(master)
    t0 = time.monotonic()
    assert io(slave, 2_000_000_000, False, F.OP_EVENT, P.MODE_RUN, *args) == F.R_IO
    assert time.monotonic() - t0 < 1.0  # the hang-up wakes the wait


def test_the_tick_call_sleeps_to_the_tick_and_steps_the_newest_frame(policy_cfg, pty):
    """Fixed mode: frames before the tick are read and kept (the newest fresh one), the tick is
    taken on time, and what it writes is the per-frame calls' OP_FIXED + OP_TICK on a copy."""
    cfg, policy = policy_cfg
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
        assert _sent_as_reference(master, args, ref, want).ref_seq == 2 * i + 2  # the newer of the two


def test_the_tick_call_returns_before_a_far_tick_and_for_python(policy_cfg, pty):
    cfg, policy = policy_cfg
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


def test_spin_polls_without_sleeping_and_still_steps(policy_cfg, pty):
    """spin (event mode with spin_us): the wait burns CPU instead of sleeping, for as long as
    asked; a frame that is there is stepped and written as without spin."""
    cfg, policy = policy_cfg
    io = F.frame_io_kernel(policy)
    master, slave = pty
    fs, args = _args(cfg, policy)
    io(-1, 0, True, F.OP_EVENT, P.MODE_SAFE, *_copy(args))  # compiled before the clocks matter
    wall, cpu = time.monotonic(), time.thread_time()
    assert io(slave, 30_000_000, True, F.OP_EVENT, P.MODE_RUN, *args) == F.R_DONE
    wall, cpu = time.monotonic() - wall, time.thread_time() - cpu
    # polled, did not sleep (sleeping: cpu ~ 0; a loaded 2-core machine still gives it > 20 %)
    assert wall >= 0.029 and cpu > 0.2 * wall
    os.write(master, P.encode_frame(P.SENSOR, 1, 1000, [0.0] * 4))
    r = io(slave, 30_000_000, True, F.OP_EVENT, P.MODE_RUN, *args)
    assert r & 0xFF == F.R_SENT and fs.st[F.ST_WROTE] == r >> 8
    assert P.decode_frame(_read_all(master)[:-1]).ref_seq == 1
