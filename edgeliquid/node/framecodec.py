"""The node's binary hot path as one compiled call per frame (protocol v1, cpu backend).

One numba call scans the bytes read from the port, splits frames at 0x00 (as
:class:`~.protocol.Packetizer`), COBS-decodes, checks CRC / version / flags / type / size (as
:func:`~.protocol.decode_frame`), tracks the sequence (as :class:`~.protocol.RxCounters`), checks
the sample (size, finite, ``inputs[].range``), runs the cell's fused ``control_step`` (input map,
policy step, output map, rate limit) and encodes the ACTUATE frame (CRC + COBS) into a
preallocated buffer. Python keeps the syscalls and whatever is rare, told by the returned code:
a HELLO, a sample the supervisor must judge (not RUN, invalid, stale, beyond the stability
bound), a decode error (its kind), an oversize run, a policy failure.

:mod:`.protocol` stays the readable spec; ``tests/test_framecodec.py`` checks this codec
against it byte for byte. Everything lives in three arrays shared with the loop:

* ``buf`` (uint8): read buffer, the frame being received, packet scratch, the outgoing frame;
* ``st`` (int64): receiver state, sequence counters, the node's tx seq and clocks, the last
  decoded packet's header;
* ``fv`` (float64): timing constants, input ranges, decoded values, the pending sample
  (fixed mode) and the last good inputs (HOLD reuses them).

Floats are read and written in the host's byte order: little-endian, as the wire.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..runtime import cfc_kernels, kernels
from ..runtime.kernels import _OPTS
from . import protocol as P
from .syscalls import AVAILABLE, monotonic_ns, poll_in, sleep_until, sys_read, sys_write

# -- buf layout (offsets 16-aligned: float32 payloads are read through views)
RX_SIZE = 4096
ACC_OFF = RX_SIZE
ACC_CAP = P.MAX_FRAME  # a longer run without a delimiter is discarded (Packetizer)
PK_OFF = ACC_OFF + 288
TX_OFF = PK_OFF + 288
BUF_SIZE = TX_OFF + 288

# -- st slots
(
    ST_ACC,  # bytes of the frame being received
    ST_DISCARD,  # 1 while discarding an oversize run
    ST_LAST_SEQ,  # -1: none yet
    ST_LOST,
    ST_DUP,
    ST_REORD,
    ST_FRAMES,
    ST_TX_SEQ,
    ST_LAST_T_US,  # -1: none yet (event mode's elapsed)
    ST_LAST_CMD_NS,  # the last policy command (rate limiter's dt)
    ST_POS,  # where the scan stopped in the read buffer
    ST_KIND,  # R_ERROR: index in protocol.ERROR_KINDS; R_POLICY: the kernel status
    ST_TYPE,  # the last decoded packet (R_PACKET) or the sample just stepped (ST_SEQ, ST_T_US)
    ST_SEQ,
    ST_T_US,
    ST_REF,
    ST_FLAGS,
    ST_COUNT,
    ST_PEND,  # fixed mode: 1 while a SENSOR waits for the tick
    ST_PEND_SEQ,
    ST_PEND_T_US,
    ST_PEND_FLAGS,
    ST_PEND_COUNT,
    ST_PEND_NS,  # when it was read
    ST_N_IN,
    ST_READ,  # the io call: bytes it read into buf[:RX_SIZE]
    ST_READY_NS,  # ... when the read returned
    ST_DONE_NS,  # ... when the ACTUATE was encoded
    ST_WROTE,  # ... what write() returned for it (-1: failed)
    ST_WRITTEN_NS,  # ... when write() returned
    ST_SENT,  # ACTUATE frames the io call wrote (R_SENT returns)
    ST_TICKED,  # the tick call: when it took the tick (0: it returned before the tick)
    ST_SIZE,
) = range(33)

# -- fv slots
FV_DEFAULT_DT, FV_MODEL_DT, FV_MAX_ELAPSED, FV_NOMINAL, FV_ELAPSED = range(5)
FV_LO = 8
FV_HI = FV_LO + P.MAX_COUNT
FV_VALS = FV_HI + P.MAX_COUNT
FV_PEND = FV_VALS + P.MAX_COUNT
FV_RAW = FV_PEND + P.MAX_COUNT
FV_SIZE = FV_RAW + P.MAX_COUNT

# -- operations
OP_EVENT, OP_FIXED, OP_TICK, OP_DECODE = range(4)
# -- return codes (low byte; an ACTUATE's frame length in the bits above)
R_DONE = 0  # the read bytes are consumed (OP_TICK: nothing pending)
R_STEP_END = 1  # an ACTUATE is in buf[TX_OFF:], the read bytes are consumed
R_STEP_MORE = 2  # an ACTUATE is in buf[TX_OFF:], more bytes to scan from st[ST_POS]
R_ERROR = 3  # a frame dropped, kind in st[ST_KIND]
R_PACKET = 4  # a packet for Python (header in st, values in fv[FV_VALS:])
R_OVERFLOW = 5  # an oversize run without a delimiter (a "length" error)
R_POLICY = 6  # the policy step failed (status in st[ST_KIND]); nothing sent
R_TICK_SLOW = 7  # OP_TICK: the pending sample needs the supervisor (header in ST_PEND_*)
R_SENT = 9  # the io call wrote the ACTUATE (R_STEP_END's case; write's result in st[ST_WROTE])
R_IO = 10  # the io call's wait or read failed (or read end of file): Python's path diagnoses it
_R_READY = 8  # internal: a usable sample is in fv[FV_RAW:], step it

_K_CRC, _K_COBS, _K_VERSION, _K_FLAGS, _K_LENGTH, _K_TYPE = (
    P.ERROR_KINDS.index(k) for k in ("crc", "cobs", "version", "flags", "length", "type")
)


def _crc_table() -> np.ndarray:
    t = np.zeros(256, np.int64)
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) if c & 0x8000 else (c << 1)
        t[i] = c & 0xFFFF
    return t


_CRC = _crc_table()


@njit(inline="always", **_OPTS)
def _crc16(buf, start, length):
    c = 0xFFFF
    for i in range(start, start + length):
        c = ((c << 8) & 0xFFFF) ^ _CRC[((c >> 8) ^ np.int64(buf[i])) & 0xFF]
    return c


@njit(inline="always", **_OPTS)
def _cobs_decode(buf, src, n, dst):
    """COBS-decode buf[src:src+n] into buf[dst:]; the decoded length, or -1 (as cobs.decode)."""
    o = 0
    if n == 0:
        return 0
    i = 0
    while True:
        code = np.int64(buf[src + i])
        if code == 0:
            return -1
        i += 1
        end = i + code - 1
        if end > n:
            return -1
        for j in range(i, end):
            b = buf[src + j]
            if b == 0:
                return -1
            buf[dst + o] = b
            o += 1
        i = end
        if i < n:
            if code < 0xFF:
                buf[dst + o] = 0
                o += 1
        else:
            return o


@njit(inline="always", **_OPTS)
def _u16(buf, i):
    return np.int64(buf[i]) | (np.int64(buf[i + 1]) << 8)


@njit(inline="always", **_OPTS)
def _decode(buf, n, st, fv):
    """Decode the frame in buf[ACC_OFF:ACC_OFF+n] (as protocol.decode_frame): -1 and the packet
    in st / fv[FV_VALS:], or the error kind."""
    if n > P.MAX_FRAME:
        return _K_LENGTH
    size = _cobs_decode(buf, ACC_OFF, n, PK_OFF)
    if size < 0:
        return _K_COBS
    p = PK_OFF
    if size < P.HEADER_SIZE + 2:
        return _K_LENGTH
    if _crc16(buf, p, size - 2) != _u16(buf, p + size - 2):
        return _K_CRC
    if buf[p] != P.VERSION:
        return _K_VERSION
    flags = np.int64(buf[p + 2])
    if flags & 0x0F:
        return _K_FLAGS
    ptype = np.int64(buf[p + 1])
    if ptype < P.HELLO or ptype > P.STATUS:
        return _K_TYPE
    count = np.int64(buf[p + 3])
    if count > P.MAX_COUNT or size != P.HEADER_SIZE + 4 * count + 2:
        return _K_LENGTH
    st[ST_TYPE] = ptype
    st[ST_FLAGS] = flags
    st[ST_COUNT] = count
    st[ST_SEQ] = _u16(buf, p + 4)
    st[ST_T_US] = _u16(buf, p + 6) | (_u16(buf, p + 8) << 16)
    st[ST_REF] = _u16(buf, p + 10)
    vals = buf[p + 12 : p + 12 + 4 * count].view(np.float32)
    for k in range(count):
        fv[FV_VALS + k] = vals[k]
    return -1


@njit(inline="always", **_OPTS)
def _seq_delta(prev, seq):
    return ((seq - prev + 0x8000) & 0xFFFF) - 0x8000


@njit(inline="always", **_OPTS)
def _track(st, seq):
    """RxCounters.track_seq: update the counters; False for a stale frame."""
    last = st[ST_LAST_SEQ]
    if last >= 0:
        d = _seq_delta(last, seq)
        if d == 0:
            st[ST_DUP] += 1
            return False
        if d < 0:
            st[ST_REORD] += 1
            return False
        st[ST_LOST] += d - 1
    st[ST_LAST_SEQ] = seq
    return True


@njit(inline="always", **_OPTS)
def _usable(fv, v0, count, n_in):
    """The node's sample checks (Node._valid): size, finite, inside every declared range."""
    if count != n_in:
        return False
    for i in range(n_in):
        v = fv[v0 + i]
        if not np.isfinite(v):
            return False
        if not (fv[FV_LO + i] <= v <= fv[FV_HI + i]):
            return False
    return True


@njit(inline="always", **_OPTS)
def _encode(buf, ptype, flags, seq, t_us, ref, vals, v0, count):
    """COBS(packet) + 0x00 into buf[TX_OFF:] (as protocol.encode_frame); its length."""
    p = PK_OFF
    buf[p] = P.VERSION
    buf[p + 1] = ptype
    buf[p + 2] = flags
    buf[p + 3] = count
    buf[p + 4] = seq & 0xFF
    buf[p + 5] = (seq >> 8) & 0xFF
    for k in range(4):
        buf[p + 6 + k] = (t_us >> (8 * k)) & 0xFF
    buf[p + 10] = ref & 0xFF
    buf[p + 11] = (ref >> 8) & 0xFF
    f = buf[p + 12 : p + 12 + 4 * count].view(np.float32)
    for k in range(count):
        f[k] = vals[v0 + k]
    size = P.HEADER_SIZE + 4 * count
    c = _crc16(buf, p, size)
    buf[p + size] = c & 0xFF
    buf[p + size + 1] = c >> 8
    size += 2
    code_pos = TX_OFF
    o = TX_OFF + 1
    code = 1
    final_zero = True  # cobs.encode: a block closed at 254 bytes at the very end gets no code
    for i in range(size):
        b = buf[p + i]
        if b == 0:
            buf[code_pos] = code
            code_pos, o, code, final_zero = o, o + 1, 1, True
        else:
            buf[o] = b
            o += 1
            code += 1
            if code == 0xFF:
                buf[code_pos] = code
                code_pos, o, code, final_zero = o, o + 1, 1, False
    if code > 1 or final_zero:
        buf[code_pos] = code
    else:
        o = code_pos
    buf[o] = 0
    return o + 1 - TX_OFF


@njit(inline="always", **_OPTS)
def _scan(op, pos, n, now, mode, buf, st, fv):
    """Frames in buf[pos:n] until one needs Python or a step (see the R_* codes)."""
    n_in = st[ST_N_IN]
    if op == OP_TICK:
        if st[ST_PEND] == 0:
            return R_DONE
        st[ST_PEND] = 0
        count = st[ST_PEND_COUNT]
        e = fv[FV_NOMINAL]
        if mode != P.MODE_RUN or not _usable(fv, FV_PEND, count, n_in) or e > fv[FV_MAX_ELAPSED]:
            return R_TICK_SLOW
        for i in range(n_in):
            fv[FV_RAW + i] = fv[FV_PEND + i]
        fv[FV_ELAPSED] = e
        st[ST_SEQ] = st[ST_PEND_SEQ]
        st[ST_T_US] = st[ST_PEND_T_US]
        st[ST_POS] = n
        return _R_READY
    while pos < n:
        b = buf[pos]
        pos += 1
        if b != 0:
            if st[ST_DISCARD]:
                continue
            size = st[ST_ACC]
            if size >= ACC_CAP:
                st[ST_ACC] = 0
                st[ST_DISCARD] = 1
                st[ST_POS] = pos
                return R_OVERFLOW
            buf[ACC_OFF + size] = b
            st[ST_ACC] = size + 1
            continue
        size = st[ST_ACC]
        st[ST_ACC] = 0
        if st[ST_DISCARD]:
            st[ST_DISCARD] = 0
            continue
        if size == 0:  # empty frames (a leading 0x00) are ignored
            continue
        st[ST_FRAMES] += 1
        kind = _decode(buf, size, st, fv)
        st[ST_POS] = pos
        if kind >= 0:
            st[ST_KIND] = kind
            return R_ERROR
        ptype = st[ST_TYPE]
        if op == OP_DECODE or ptype == P.HELLO:
            return R_PACKET
        if ptype != P.SENSOR:  # ACTUATE / STATUS from the device: not for the node
            continue
        seq = st[ST_SEQ]
        count = st[ST_COUNT]
        if op == OP_FIXED:  # the newest fresh sample waits for the tick
            if _track(st, seq):
                st[ST_PEND] = 1
                st[ST_PEND_SEQ] = seq
                st[ST_PEND_T_US] = st[ST_T_US]
                st[ST_PEND_FLAGS] = st[ST_FLAGS]
                st[ST_PEND_COUNT] = count
                st[ST_PEND_NS] = now
                for k in range(count):
                    fv[FV_PEND + k] = fv[FV_VALS + k]
            continue
        # event mode: step here only a plain RUN cycle; anything else is the supervisor's
        last = st[ST_LAST_SEQ]
        if mode != P.MODE_RUN or not _usable(fv, FV_VALS, count, n_in):
            return R_PACKET
        if last >= 0 and _seq_delta(last, seq) <= 0:
            return R_PACKET
        t_us = st[ST_T_US]
        dt_s = fv[FV_DEFAULT_DT]
        if st[ST_LAST_T_US] >= 0:
            d = (t_us - st[ST_LAST_T_US]) & 0xFFFFFFFF
            if 0 < d < 0x80000000:
                dt_s = d / 1e6
        e = dt_s / fv[FV_MODEL_DT]
        if e > fv[FV_MAX_ELAPSED]:
            return R_PACKET
        _track(st, seq)
        st[ST_LAST_T_US] = t_us
        for i in range(n_in):
            fv[FV_RAW + i] = fv[FV_VALS + i]
        fv[FV_ELAPSED] = e
        return _R_READY
    st[ST_POS] = n
    return R_DONE


@njit(inline="always", **_OPTS)
def _sent(status, n, now, buf, st, fv, chan, m):
    """After the policy step: the ACTUATE frame, or R_POLICY."""
    if status != kernels.STATUS_OK:
        st[ST_KIND] = status
        return R_POLICY
    st[ST_LAST_CMD_NS] = now
    seq = (st[ST_TX_SEQ] + 1) & 0xFFFF
    st[ST_TX_SEQ] = seq
    t_us = (now // 1000) & 0xFFFFFFFF
    size = _encode(buf, P.ACTUATE, 0, seq, t_us, st[ST_SEQ], chan, chan.shape[0] - 1 - m, m)
    more = R_STEP_MORE if st[ST_POS] < n else R_STEP_END
    return more | (size << 8)


@njit(**_OPTS)
def ltc_frame_step(op, pos, n, now, mode, buf, st, fv, chan, xbuf, fp, ip, work):
    """One call per frame for an LTC policy (see the module docstring); returns an R_* code."""
    r = _scan(op, pos, n, now, mode, buf, st, fv)
    if r != _R_READY:
        return r
    n_in = st[ST_N_IN]
    dt_s = (now - st[ST_LAST_CMD_NS]) / 1e9
    raw = fv[FV_RAW : FV_RAW + n_in]
    status = kernels.control_step(raw, fv[FV_ELAPSED], dt_s, chan, xbuf, fp, ip, work)
    return _sent(status, n, now, buf, st, fv, chan, (chan.shape[0] - 1 - 4 * n_in) // 7)


@njit(**_OPTS)
def cfc_frame_step(op, pos, n, now, mode, buf, st, fv, chan, xbuf, fp, ip, work):
    """As :func:`ltc_frame_step`, for a CfC policy."""
    r = _scan(op, pos, n, now, mode, buf, st, fv)
    if r != _R_READY:
        return r
    n_in = st[ST_N_IN]
    dt_s = (now - st[ST_LAST_CMD_NS]) / 1e9
    raw = fv[FV_RAW : FV_RAW + n_in]
    status = cfc_kernels.control_step(raw, fv[FV_ELAPSED], dt_s, chan, xbuf, fp, ip, work)
    return _sent(status, n, now, buf, st, fv, chan, (chan.shape[0] - 1 - 4 * n_in) // 7)


@njit(inline="always", **_OPTS)
def _wait_read(fd, wait_ns, spin, buf, st):
    """ppoll + read into buf[:RX_SIZE]: bytes read (st[ST_READ], st[ST_READY_NS]), 0 when the
    wait timed out, -1 when the wait or the read failed or read end of file. ``spin``: poll
    without sleeping for ``wait_ns`` (a dedicated core: the code and data stay warm)."""
    if spin:
        end = monotonic_ns() + wait_ns
        p = poll_in(fd, 0)
        while p == 0 and monotonic_ns() < end:
            p = poll_in(fd, 0)
    else:
        p = poll_in(fd, wait_ns)
    if p <= 0:
        return p
    n = sys_read(fd, buf, 0, RX_SIZE)
    st[ST_READY_NS] = monotonic_ns()
    st[ST_READ] = n
    return n if n > 0 else -1


@njit(inline="always", **_OPTS)
def _write_step(fd, r, buf, st):
    """R_STEP_END: write the ACTUATE now, return R_SENT (other codes: unchanged)."""
    if r & 0xFF != R_STEP_END:
        return r
    st[ST_DONE_NS] = monotonic_ns()
    st[ST_WROTE] = sys_write(fd, buf, TX_OFF, r >> 8)
    st[ST_WRITTEN_NS] = monotonic_ns()
    st[ST_SENT] += 1
    return R_SENT | (r & ~0xFF)


@njit(**_OPTS)
def ltc_frame_io(fd, wait_ns, spin, op, mode, buf, st, fv, chan, xbuf, fp, ip, work):
    """Wait up to ``wait_ns`` for ``fd`` (``spin``: polling, without sleeping), read,
    :func:`ltc_frame_step` on what was read, and write the ACTUATE when that was the last frame
    (R_SENT): "frame readable -> command written" without the interpreter. Other returns as
    :func:`ltc_frame_step` (the bytes read in st[ST_READ], when in st[ST_READY_NS]), R_DONE on
    a timeout, R_IO on a failed wait or read. Releases the GIL (nogil) while it waits, as
    ``select`` does."""
    n = _wait_read(fd, wait_ns, spin, buf, st)
    if n <= 0:
        return R_DONE if n == 0 else R_IO
    r = ltc_frame_step(op, 0, n, st[ST_READY_NS], mode, buf, st, fv, chan, xbuf, fp, ip, work)
    return _write_step(fd, r, buf, st)


@njit(**_OPTS)
def cfc_frame_io(fd, wait_ns, spin, op, mode, buf, st, fv, chan, xbuf, fp, ip, work):
    """As :func:`ltc_frame_io`, for a CfC policy."""
    n = _wait_read(fd, wait_ns, spin, buf, st)
    if n <= 0:
        return R_DONE if n == 0 else R_IO
    r = cfc_frame_step(op, 0, n, st[ST_READY_NS], mode, buf, st, fv, chan, xbuf, fp, ip, work)
    return _write_step(fd, r, buf, st)


#: The tick call sleeps at most this long, so that the loop sees signals, stop and timeouts.
MAX_SLEEP_NS = 50_000_000


@njit(inline="always", **_OPTS)
def _take(fd, step_fn, mode, buf, st, fv, chan, xbuf, fp, ip, work):
    """Fixed mode: one read of what the port has (no wait) and the newest fresh SENSOR in it
    kept pending; R_DONE, or the first return Python must handle (R_IO: a failed read). One
    read, not until the port is empty: a device that never stops sending cannot hold the tick
    (or the loop's timeouts) back."""
    n = _wait_read(fd, 0, False, buf, st)
    if n == 0:
        return R_DONE
    if n < 0:
        return R_IO
    return step_fn(OP_FIXED, 0, n, st[ST_READY_NS], mode, buf, st, fv, chan, xbuf, fp, ip, work)


@njit(inline="always", **_OPTS)
def _tick(fd, tick_ns, spin_ns, step_fn, mode, buf, st, fv, chan, xbuf, fp, ip, work):
    st[ST_TICKED] = 0
    r = _take(fd, step_fn, mode, buf, st, fv, chan, xbuf, fp, ip, work)
    if r != R_DONE:
        return r
    now = monotonic_ns()
    wake = tick_ns - spin_ns
    if now < wake:
        sleep_until(min(wake, now + MAX_SLEEP_NS))
        now = monotonic_ns()
        if now < wake:  # the sleep was capped or a signal woke it: back to the loop
            return _take(fd, step_fn, mode, buf, st, fv, chan, xbuf, fp, ip, work)
    while now < tick_ns:  # spin_ns: poll the port while the tick comes
        r = _take(fd, step_fn, mode, buf, st, fv, chan, xbuf, fp, ip, work)
        if r != R_DONE:
            return r
        now = monotonic_ns()
    # what arrived during the sleep (or the spin's last poll) is this tick's
    r = _take(fd, step_fn, mode, buf, st, fv, chan, xbuf, fp, ip, work)
    if r != R_DONE:
        return r
    st[ST_TICKED] = now
    r = step_fn(OP_TICK, 0, 0, now, mode, buf, st, fv, chan, xbuf, fp, ip, work)
    st[ST_READY_NS] = st[ST_PEND_NS]
    return _write_step(fd, r, buf, st)


@njit(**_OPTS)
def ltc_frame_tick(fd, tick_ns, spin_ns, mode, buf, st, fv, chan, xbuf, fp, ip, work):
    """Fixed mode in one compiled call: read what the port has, sleep (clock_nanosleep, absolute,
    GIL released) until ``spin_ns`` before ``tick_ns`` (at most MAX_SLEEP_NS), read again, spin
    to the tick polling the port, and step the newest fresh SENSOR on it (OP_TICK), writing
    the ACTUATE (R_SENT). st[ST_TICKED]: when the tick was taken, 0 if the call returned before
    it (a capped sleep, a signal, a frame Python must handle: then the code as
    :func:`ltc_frame_step`, or R_IO). A tick with nothing fresh returns R_DONE, ST_TICKED set."""
    return _tick(fd, tick_ns, spin_ns, ltc_frame_step, mode, buf, st, fv, chan, xbuf, fp, ip, work)


@njit(**_OPTS)
def cfc_frame_tick(fd, tick_ns, spin_ns, mode, buf, st, fv, chan, xbuf, fp, ip, work):
    """As :func:`ltc_frame_tick`, for a CfC policy."""
    return _tick(fd, tick_ns, spin_ns, cfc_frame_step, mode, buf, st, fv, chan, xbuf, fp, ip, work)


@njit(**_OPTS)
def encode_frame_into(buf, ptype, flags, seq, t_us, ref, vals, count):
    """:func:`~.protocol.encode_frame` into buf[TX_OFF:]; its length (for tests and tools)."""
    return _encode(buf, ptype, flags, seq & 0xFFFF, t_us & 0xFFFFFFFF, ref & 0xFFFF, vals, 0, count)


def frame_kernel(policy):
    """The one-call-per-frame kernel for this policy's cell."""
    return cfc_frame_step if policy.cell == "cfc" else ltc_frame_step


def frame_io_kernel(policy):
    """The wait + read + frame + write kernel for this policy's cell (None where the compiled
    system calls do not fit the platform: :data:`.syscalls.AVAILABLE`)."""
    if not AVAILABLE:
        return None
    return cfc_frame_io if policy.cell == "cfc" else ltc_frame_io


def frame_tick_kernel(policy):
    """Fixed mode's sleep + read + tick + write kernel for this policy's cell (None: as
    :func:`frame_io_kernel`)."""
    if not AVAILABLE:
        return None
    return cfc_frame_tick if policy.cell == "cfc" else ltc_frame_tick


class FrameState:
    """The arrays the compiled call shares with the loop (see the module docstring)."""

    def __init__(self, n_in: int, rate_hz: float, model_dt: float, ranges=(), max_elapsed=np.inf):
        self.buf = np.zeros(BUF_SIZE, np.uint8)
        self.st = np.zeros(ST_SIZE, np.int64)
        self.fv = np.zeros(FV_SIZE, np.float64)
        st, fv = self.st, self.fv
        st[ST_LAST_SEQ] = st[ST_LAST_T_US] = -1
        st[ST_N_IN] = n_in
        fv[FV_DEFAULT_DT] = 1.0 / rate_hz
        fv[FV_MODEL_DT] = model_dt
        fv[FV_NOMINAL] = (1.0 / rate_hz) / model_dt
        fv[FV_MAX_ELAPSED] = max_elapsed
        fv[FV_LO : FV_LO + n_in] = -np.inf
        fv[FV_HI : FV_HI + n_in] = np.inf
        for i, lo, hi in ranges:
            fv[FV_LO + i], fv[FV_HI + i] = lo, hi
        self.last_raw = fv[FV_RAW : FV_RAW + n_in]  # the last good inputs (HOLD)
        self.rx_view = memoryview(self.buf)[:RX_SIZE]
        self._tx = memoryview(self.buf)[TX_OFF:]
        self._tx_views: dict[int, memoryview] = {}

    def tx(self, size: int) -> memoryview:
        """The outgoing frame of ``size`` bytes (a cached view: no allocation once seen)."""
        v = self._tx_views.get(size)
        if v is None:
            v = self._tx_views[size] = self._tx[:size]
        return v

    def reset_receiver(self) -> None:
        """A new port: no partial frame, no discarding (Packetizer), no pending sample kept."""
        self.st[ST_ACC] = self.st[ST_DISCARD] = 0

    def values(self, start: int, count: int) -> tuple[float, ...]:
        return tuple(self.fv[start : start + count].tolist())

    def packet(self) -> P.Packet:
        """The packet of the last R_PACKET return."""
        st = self.st
        return P.Packet(
            int(st[ST_TYPE]),
            int(st[ST_SEQ]),
            int(st[ST_T_US]),
            int(st[ST_REF]),
            self.values(FV_VALS, int(st[ST_COUNT])),
            int(st[ST_FLAGS]),
        )

    def pending(self) -> P.Packet:
        """The pending SENSOR of the last R_TICK_SLOW return."""
        st = self.st
        return P.Packet(
            P.SENSOR,
            int(st[ST_PEND_SEQ]),
            int(st[ST_PEND_T_US]),
            0,
            self.values(FV_PEND, int(st[ST_PEND_COUNT])),
            int(st[ST_PEND_FLAGS]),
        )


def _slot(i: int, none_at: int | None = None):
    """A property over ``self._st[i]`` (``none_at``: that value reads as None)."""

    def get(self):
        v = int(self._st[i])
        return None if none_at is not None and v == none_at else v

    def put(self, value):
        self._st[i] = none_at if value is None else value

    return property(get, put)


class SharedRx(P.RxCounters):
    """:class:`~.protocol.RxCounters` whose frame and sequence counters live in ``st``, where the
    compiled call updates them; the error counts stay in the dict (Python counts those)."""

    def __init__(self, st: np.ndarray):
        self._st = st
        super().__init__()

    frames = _slot(ST_FRAMES)
    lost = _slot(ST_LOST)
    duplicates = _slot(ST_DUP)
    reordered = _slot(ST_REORD)
    _last_seq = _slot(ST_LAST_SEQ, -1)
