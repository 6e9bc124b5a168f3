"""The onboard node's loop: port I/O, timing, reconnects, recording and statistics.

port -> bytes -> frame -> packet -> inputs -> policy.step -> command -> frame -> port.

Every mode and fail-safe decision (SAFE / RUN / HOLD, what to send, when to reset the state)
comes from the :class:`~.supervisor.Supervisor`: the loop reports each event with the time it
read and carries out the returned :class:`~.supervisor.Decision`. Any I/O error closes the
port (fail-safe first, if it can still be written), then the node reopens it with exponential
back-off and handshakes again. SIGHUP loads the model file again off the loop
(:class:`~.reload.Reloader`) and swaps it in between cycles; any failure keeps the running policy.

Model checks live in :mod:`.deploy`, bounded loads in :mod:`.reload`, counters in :mod:`.stats`;
their names stay importable from here.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import select
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import serial

from ..errors import EdgeliquidError, StabilityError
from ..runtime import kernels
from ..runtime.policy import compiled_entry
from . import deadlines, realtime
from . import framecodec as F
from . import protocol as P
from .channels import ChannelMaps
from .config import NodeConfig
from .deploy import check_normalization, normalization_problem, size_problem, stability_kwargs, stability_note
from .fastpath import fast_arrays, fused_kernel, warm_fused
from .reload import (
    LOAD_TIMEOUT_S,
    ChildValidation,
    Reloader,
    _validate_child,
    check_deployment,
    child_memory_bytes,
    load_policy_interruptible,
    read_model_bytes,
)
from .stats import LAT_RING, NodeStats
from .supervisor import (
    MODE_NAMES,
    R_BAD_SENSOR,
    R_HELLO_MISMATCH,
    R_NONE,
    R_POLICY,
    R_RECONNECT,
    R_SHUTDOWN,
    R_STARTING,
    R_TIMEOUT,
    REASONS,
    SEND_FAILSAFE,
    SEND_HOLD,
    SEND_NONE,
    SEND_POLICY,
    Decision,
    Supervisor,
    decision,
)
from .textproto import LineSplitter, decode_line, encode_line

__all__ = [  # what other modules import from here (the names moved out are re-exported)
    "LAT_RING",
    "LOAD_TIMEOUT_S",
    "MODE_NAMES",
    "REASONS",
    "R_BAD_SENSOR",
    "R_HELLO_MISMATCH",
    "R_NONE",
    "R_POLICY",
    "R_RECONNECT",
    "R_SHUTDOWN",
    "R_STARTING",
    "R_TIMEOUT",
    "ChildValidation",
    "Node",
    "NodeStats",
    "Reloader",
    "_validate_child",
    "check_deployment",
    "check_normalization",
    "child_memory_bytes",
    "fast_arrays",
    "hello_sizes",
    "load_policy_interruptible",
    "make_recorder",
    "normalization_problem",
    "open_port",
    "read_model_bytes",
    "size_problem",
    "warm_fused",
]

log = logging.getLogger("edgeliquid.node.loop")


def make_recorder(cfg: NodeConfig, policy):
    """The flight recorder for ``cfg.telemetry`` (model sha256 and config in its metadata)."""
    import dataclasses
    import hashlib

    from .recorder import FlightRecorder
    from .recorder_process import ProcessRecorder

    t = cfg.telemetry
    sha = hashlib.sha256(Path(cfg.model).read_bytes()).hexdigest()
    conf = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
    meta = {
        "model": str(Path(cfg.model).resolve()),
        "model_sha256": sha,
        "backend": policy.backend,
        "dtype": policy.dtype.name,
        "config": json.dumps(conf, default=str),
        "rate_hz": cfg.rate_hz,
        "mode": cfg.mode,
    }
    # process (the default): encoding and disk writes off the loop's GIL; thread: one process
    cls = ProcessRecorder if t.get("writer", "process") == "process" else FlightRecorder
    return cls(
        t["path"],
        policy.n_inputs,
        policy.n_outputs,
        len(cfg.outputs),
        meta,
        rotate_mb=t["rotate_mb"],
        rotate_s=t["rotate_s"],
        keep=t["keep"],
        flush_s=t.get("flush_s", 1.0),
        encoding=t.get("encoding", "protobuf"),
    )


def open_port(cfg: NodeConfig) -> serial.SerialBase:
    """Open the configured port by name or URL (pty paths, socket://, loop://, spy://...)."""
    kwargs = {"baudrate": cfg.baudrate, "timeout": 0, "write_timeout": 1.0}
    if cfg.exclusive and "://" not in cfg.port:
        kwargs["exclusive"] = True
    port = serial.serial_for_url(cfg.port, **kwargs)
    no_delay(getattr(port, "_socket", None))
    return port


def no_delay(sock) -> None:
    """TCP_NODELAY on a socket:// link: a frame goes out when written, not after Nagle's wait
    for the peer's (delayed, ~40 ms) ACK, which a control loop of small frames would hit."""
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def hello_sizes(values) -> tuple[int, int] | None:
    """A HELLO's ``(n_sensors, n_actuators)``, or None unless both are exact integers in
    0..MAX_COUNT (a HELLO is any float32 a device sends: NaN, Inf, 4.9 and -1 are mismatches)."""
    if len(values) < 2:
        return None
    out = []
    for v in values[:2]:
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v == int(v) and 0 <= v <= P.MAX_COUNT):
            return None
        out.append(int(v))
    return out[0], out[1]


class Node:
    """The loop. ``run()`` until ``stop()`` (or SIGINT/SIGTERM via :meth:`install_signals`).

    ``mode`` and ``reason`` are the supervisor's (``self.sup``); the node keeps no decision
    state of its own.
    """

    def __init__(self, cfg: NodeConfig, policy=None):
        from ..runtime.policy import load

        self.cfg = cfg
        if policy is None:
            policy = load(cfg.model, backend=cfg.backend, **stability_kwargs(cfg))
        self.policy = policy
        problem = size_problem(cfg, self.policy.n_inputs, self.policy.n_outputs)
        if problem:
            raise EdgeliquidError(problem)
        unstable = stability_note(cfg, self.policy.model)  # a policy built elsewhere: same check
        if unstable and not cfg.allow_unstable:
            raise StabilityError(unstable)
        self.maps = ChannelMaps(cfg.inputs, cfg.outputs, self.policy.dtype)
        check_normalization(cfg, self.policy.metadata)
        # The compiled per-frame call's state; the receiver counters, tx seq and clocks below
        # live in it, so that the compiled path and the Python path share one copy.
        self.frames = F.FrameState(len(cfg.inputs), cfg.rate_hz, cfg.model_dt, self.maps.ranges)
        self._st = self.frames.st
        self._fd: int | None = None
        self.rare_frames = 0  # frames the compiled call handed to Python (HELLO, not a RUN cycle)
        self._event_mode = cfg.mode == "event"
        self._op = F.OP_EVENT if self._event_mode else F.OP_FIXED
        self._spin_ns = int(cfg.spin_us * 1000)
        self._bind_policy()
        warm_fused(self.policy, self.maps.chan)
        self.reloader = Reloader(cfg, self.maps.chan)
        self.sup = Supervisor.from_config(cfg)
        # RUN's per-cycle decisions (shared instances): an identity test skips the general path.
        self._run_step = decision(P.MODE_RUN, R_NONE, SEND_POLICY)
        self._run_idle = decision(P.MODE_RUN, R_NONE, SEND_NONE)
        self.rx = F.SharedRx(self._st)
        self.stats = NodeStats()
        self.port: serial.SerialBase | None = None
        self._text = cfg.protocol == "text"
        self._splitter = LineSplitter() if self._text else P.Packetizer()
        self._tx_seq = 0
        self._rx_lines = 0
        self._stop = False
        self._reload = False
        self._last_raw = self.frames.last_raw  # the last good inputs (HOLD reuses them)
        self._last_t_us: int | None = None
        self._last_cmd_ns = time.monotonic_ns()
        self._last_write_ns = 0  # the previous policy command's write time (deadline misses)
        self._cycle_ns = 0  # the current cycle's start (fixed mode: the tick)
        self._pending: P.Packet | None = None
        self._pending_ns = 0
        self._period_ns = int(1e9 / cfg.rate_hz)
        self._hold_elapsed = (1.0 / cfg.rate_hz) / cfg.model_dt  # a HOLD cycle: one nominal period
        self._timeout_ns = int(cfg.sensor_timeout_ms * 1e6)
        self._spin_s = cfg.spin_us / 1e6
        self._held = realtime.Held()
        self._sleeper = realtime.AbsSleep()
        self.ready = threading.Event()  # set once the port is open and the handshake sent
        self.events: list[tuple[float, str]] = []
        self._t_decoded = 0
        self._rec_elapsed, self._rec_t_us = 0.0, 0
        self._reset_pending = False
        self.recorder = None
        if cfg.telemetry:
            self.recorder = make_recorder(cfg, self.policy)
        self._note_stability()

    # Shared with the compiled call (framecodec.FrameState.st).
    _tx_seq = F._slot(F.ST_TX_SEQ)
    _last_t_us = F._slot(F.ST_LAST_T_US, -1)
    _last_cmd_ns = F._slot(F.ST_LAST_CMD_NS)

    @property
    def fused(self) -> bool:
        """True when frames go through the one compiled call per frame (framecodec): binary
        protocol, cpu policy, a port with a file descriptor."""
        return self._kcall is not None and self._fd is not None

    @property
    def compiled_io(self) -> bool:
        """True when the fused path also waits, reads and writes inside the compiled call
        (framecodec.*_frame_io, fixed mode: *_frame_tick; 64-bit Linux): no Python between
        "frame readable" (or the tick) and "command written"."""
        return self.fused and (self._kio is not None or self._ktick is not None)

    @property
    def mode(self) -> int:
        """P.MODE_RUN, P.MODE_HOLD or P.MODE_SAFE (the supervisor's)."""
        return self.sup.mode

    @property
    def reason(self) -> int:
        """The last STATUS reason, one of the R_* values (the supervisor's)."""
        return self.sup.reason

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        self._stop = True

    def request_reload(self) -> None:
        """Load the model file again, off the loop (see :class:`Reloader`); safe in a handler."""
        self._reload = True

    def install_signals(self) -> None:
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def _event(self, text: str, level=logging.WARNING, kind: str = "node") -> None:
        self.events.append((time.time(), text))
        del self.events[:-1000]
        log.log(level, text)
        if self.recorder is not None:
            self.recorder.event(kind, text)

    # ------------------------------------------------------------------ output
    def _write(self, data: bytes) -> None:
        fd = getattr(self.port, "fd", None)
        if fd is not None:
            # pyserial opens device paths O_NONBLOCK; a direct write skips its per-call
            # Timeout/select bookkeeping (~20 µs). A partial write falls back to pyserial.
            try:
                n = os.write(fd, data)
            except BlockingIOError:
                n = 0
            if n == len(data):
                return
            data = data[n:]
        self.port.write(data)

    def _encode(self, ptype: int, values, ref_seq: int = 0) -> bytes:
        """The next outgoing frame (or text line), with this node's seq and clock."""
        self._tx_seq = (self._tx_seq + 1) & 0xFFFF
        if self._text:
            return encode_line(ptype, self._tx_seq, values, ref_seq)
        t_us = (time.monotonic_ns() // 1000) & 0xFFFFFFFF
        return P.encode_frame(ptype, self._tx_seq, t_us, values, ref_seq)

    def _send(self, ptype: int, values, ref_seq: int = 0) -> None:
        self._write(self._encode(ptype, values, ref_seq))

    def _send_status(self) -> None:
        self._send(P.STATUS, [float(self.sup.mode), float(self.sup.reason)])

    def _send_failsafe(self) -> None:
        self._send(P.ACTUATE, self.maps.command_failsafe().tolist())

    # ------------------------------------------------------------------ decisions
    def _act(
        self, d: Decision, ref_seq: int = 0, t_ready: int = 0, why: str = "", failsafe_first: bool = True
    ) -> None:
        """Carry out a supervisor decision, except SEND_POLICY (the caller steps the policy on
        its sample right after). Bookkeeping before any write, so that a failing port still
        counts the fault. Writes: a fail-safe goes before STATUS (entering SAFE, opening the
        port, stopping) unless ``failsafe_first`` is False (the periodic repeat: STATUS first);
        a HOLD command goes after STATUS."""
        if d.reset:
            self._reset_policy(why)
        if d.changed:
            self._transition(d)
        send = d.send
        if send == SEND_FAILSAFE and (failsafe_first or d.changed):
            self._send_failsafe()
            if d.status:
                self._send_status()
            return
        if d.status:
            self._send_status()
        if send == SEND_FAILSAFE:
            self._send_failsafe()
        elif send == SEND_HOLD:
            self._infer_and_send(self._last_raw, self._hold_elapsed, ref_seq, t_ready)

    def _transition(self, d: Decision) -> None:
        """Log and count a change of mode or reason."""
        mode = d.mode
        if d.fault:
            self.stats.failsafe_events += 1
        elif d.reason == R_SHUTDOWN and mode == P.MODE_SAFE:
            self.stats.shutdowns += 1
        self._event(
            f"mode {MODE_NAMES[self.sup.prev_mode]} -> {MODE_NAMES[mode]} ({REASONS[d.reason]})",
            logging.INFO if mode == P.MODE_RUN else logging.WARNING,
            kind="failsafe" if mode == P.MODE_SAFE else ("arm" if mode == P.MODE_RUN else "hold"),
        )

    # ------------------------------------------------------------------ input
    def _handle(self, pkt: P.Packet, t_ready: int) -> None:
        if pkt.type == P.HELLO:
            self._on_hello(pkt)
        elif pkt.type == P.SENSOR:
            if not self._text and not self.rx.track_seq(pkt.seq):
                return
            if self._event_mode:
                self._on_sample(pkt, t_ready)
            else:
                self._pending, self._pending_ns = pkt, t_ready

    def _on_hello(self, pkt: P.Packet) -> None:
        vals = pkt.values
        n_in, n_out = len(self.cfg.inputs), len(self.cfg.outputs)
        self._send(P.HELLO, [float(n_in), float(n_out), float(self.cfg.rate_hz)])
        self.rx.reset_seq()
        now = time.monotonic_ns()
        if hello_sizes(vals) != (n_in, n_out):
            self.stats.hello_mismatch += 1
            # Any float can arrive here (NaN, Inf, 4.9, -1, 1e38): format, never convert.
            got = [f"{v:.9g}" for v in vals[:2]] + ["?", "?"]
            self._event(
                f"HELLO size mismatch: device has {got[0]} sensors / {got[1]} actuators, "
                f"config expects {n_in} / {n_out}; refusing to arm",
                logging.ERROR,
            )
            self._act(self.sup.on_hello_mismatch(now))
        else:
            self._act(self.sup.on_hello_ok(now))
            self._event(f"HELLO from device: {n_in} sensors / {n_out} actuators", logging.INFO)

    def _valid(self, pkt: P.Packet) -> bool:
        if len(pkt.values) != len(self.cfg.inputs):
            self.stats.wrong_size += 1
            self.rx.count_error("length")
            return False
        # One C-level sum instead of a per-value check: NaN/Inf anywhere makes it
        # non-finite (so would an overflow of float32-sized values, also rejected).
        if not math.isfinite(sum(pkt.values)):
            self.rx.count_error("nonfinite")
            return False
        if not self.maps.in_range(pkt.values):  # implausible physical value: invalid like NaN
            self.stats.out_of_range += 1
            return False
        return True

    def _elapsed_from(self, pkt: P.Packet) -> float:
        """Model time since the previous sample, from the device's own timestamps."""
        if self._last_t_us is None:
            dt_s = 1.0 / self.cfg.rate_hz
        else:
            d = (pkt.t_us - self._last_t_us) & 0xFFFFFFFF
            dt_s = d / 1e6 if 0 < d < 0x80000000 else 1.0 / self.cfg.rate_hz
        self._last_t_us = pkt.t_us
        return dt_s / self.cfg.model_dt

    def _on_sample(self, pkt: P.Packet, t_ready: int, elapsed: float | None = None) -> None:
        """One control cycle driven by a (possibly invalid) SENSOR packet."""
        now = time.monotonic_ns()
        if elapsed is None:  # event mode: the cycle starts when the frame is ready
            self._cycle_ns = t_ready
        if not self._valid(pkt):
            d = self.sup.on_invalid_sample(now)
            if d.status or d.send:
                self._act(d, pkt.seq, t_ready)
            return
        e = self._elapsed_from(pkt) if elapsed is None else elapsed
        d = self.sup.on_valid_sample(now)
        if d is not self._run_step:  # not the plain RUN step: arming, leaving HOLD, or nothing
            if d.status or d.reset:
                self._act(d, pkt.seq, t_ready, "recovery (on_recovery: reset_state)")
            if d.send != SEND_POLICY:
                return
        self._last_raw[:] = pkt.values
        self._infer_and_send(self._last_raw, e, pkt.seq, t_ready, pkt.t_us)

    def _compute(self, raw: np.ndarray, elapsed: float, dt_s: float) -> int:
        """Inputs -> command in ``self.maps.u``; a kernel status (see kernels.STATUS_*)."""
        if self._fast is not None:
            fp, ip, work = self._fast
            m = self.maps
            return self._fused(raw, elapsed, dt_s, m.chan, m.xbuf, fp, ip, work)
        return self.maps.apply_numpy(self.policy, raw, elapsed, dt_s)

    def _finish(self, status: int, ref_seq: int, t_ready: int, now: int) -> None:
        """Send the computed command, or the fail-safe when the policy failed."""
        if status != kernels.STATUS_OK:
            self.stats.policy_errors += 1
            self._event(
                "policy produced a non-finite output; fail-safe command sent, state reset", logging.ERROR
            )
            self._act(self.sup.on_policy_nonfinite(now), ref_seq, t_ready, "policy error")
            return
        self._last_cmd_ns = now
        t_inferred = time.monotonic_ns()
        data = self._encode(P.ACTUATE, self.maps.u.tolist(), ref_seq)
        t_encoded = time.monotonic_ns()
        self._write(data)
        self._commanded(ref_seq, t_ready, t_inferred, t_encoded)

    def _commanded(
        self, ref_seq: int, t_ready: int, t_inferred: int, t_encoded: int, t_written: int = 0
    ) -> None:
        """A policy command was written (at ``t_written``, default now): counters, latency,
        deadline misses, the recorder."""
        t_written = t_written or time.monotonic_ns()
        st = self.stats
        st.steps += 1
        st.add_latency(t_written - t_ready, t_written - max(self._cycle_ns, t_ready))
        if self._last_write_ns:
            missed = deadlines.ticks_missed(t_written - self._last_write_ns, self._period_ns)
            if missed:
                st.deadline_misses += 1
                st.ticks_missed += missed
                if len(st.miss_log) < 100:
                    st.miss_log.append((t_written / 1e9, missed))
        self._last_write_ns = t_written
        if self.recorder is not None:
            self.recorder.record_step(
                ref_seq,
                self._rec_t_us,
                self._rec_elapsed,
                self.sup.mode,
                self._reset_pending,
                self.maps.xbuf,
                self._yview,
                self.maps.u,
                (t_ready, max(self._t_decoded, t_ready), t_inferred, t_encoded, t_written),
            )
        self._reset_pending = False

    def _infer_and_send(
        self, raw: np.ndarray, elapsed: float, ref_seq: int, t_ready: int, t_us: int = 0
    ) -> None:
        now = time.monotonic_ns()
        if elapsed > self._max_elapsed:  # inf unless an explicit solver: one float compare
            self._unstable_step(elapsed)
        self._rec_elapsed, self._rec_t_us = elapsed, t_us
        status = self._compute(raw, elapsed, (now - self._last_cmd_ns) / 1e9)
        self._finish(status, ref_seq, t_ready, now)

    def _reset_policy(self, why: str) -> None:
        self.policy.reset()
        self._reset_pending = True
        if self.recorder is not None:
            self.recorder.event("reset", why)

    def _unstable_step(self, elapsed: float) -> None:
        """A cycle beyond the solver's stability bound: counted; an event the first time per
        policy (then only the count, in the stats line). The node never stops on it."""
        self.stats.unstable_steps += 1
        if not self._unstable_seen:
            self._unstable_seen = True
            self._event(
                f"elapsed {elapsed:.4g} model time units exceeds the {self.policy.config.solver} "
                f"stability bound {self._max_elapsed:.4g} (Theorem 1); the state may diverge "
                "(further cycles counted in the stats line: unstable=N)",
                kind="unstable",
            )

    def _note_stability(self) -> None:
        """An allowed unstable model (allow_unstable: true) is recorded when it is bound."""
        note = stability_note(self.cfg, self.policy.model)
        if note:
            self._event(note, kind="unstable")

    def _bind_policy(self) -> None:
        """Cache the cpu kernel's arrays for the fused fast path (None: numpy path)."""
        self._max_elapsed = self.policy.max_elapsed
        self._unstable_seen = False
        self._yview = self.policy._y
        self._fast = fast_arrays(self.policy)
        self._fused = fused_kernel(self.policy) if self._fast is not None else None
        self.frames.fv[F.FV_MAX_ELAPSED] = self._max_elapsed
        self._kcall = self._kio = self._ktick = None
        if self._fast is not None and not self._text_protocol():
            fs, m = self.frames, self.maps
            self._kargs = (fs.buf, fs.st, fs.fv, m.chan, m.xbuf, *self._fast)
            # Warm on a copy of the state with nothing pending: the call returns at once.
            warm = (F.OP_TICK, 0, 0, 0, P.MODE_SAFE, fs.buf, fs.st.copy(), *self._kargs[2:])
            self._kcall = compiled_entry(F.frame_kernel(self.policy), warm)
            # Warm on no descriptor (-1: ppoll ignores it), no wait, nothing pending: no effect.
            if self._event_mode and F.frame_io_kernel(self.policy) is not None:
                io = F.frame_io_kernel(self.policy)
                self._kio = compiled_entry(io, (-1, 0, self._spin_ns > 0, self._op, P.MODE_SAFE, *warm[5:]))
            elif not self._event_mode and F.frame_tick_kernel(self.policy) is not None:
                tick = F.frame_tick_kernel(self.policy)
                self._ktick = compiled_entry(tick, (-1, 0, 0, P.MODE_SAFE, *warm[5:]))

    def _text_protocol(self) -> bool:
        return self.cfg.protocol == "text"

    # ------------------------------------------------------------------ loop
    def _read_some(self, wait_s: float) -> bytes:
        port = self.port
        fd = getattr(port, "fd", None)
        if fd is not None:
            # Wait with select(); pyserial's timeout setter reconfigures the tty (tcsetattr).
            if not select.select([fd], [], [], max(0.0, wait_s))[0]:
                return b""
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return b""
            if not data:  # readable but empty: the device went away
                raise serial.SerialException("device reports readiness to read but returned no data")
            return data
        port.timeout = max(0.0, wait_s)
        first = port.read(1)
        if not first:
            return b""
        n = port.in_waiting
        return first + port.read(n) if n else first

    def _poll(self, wait_s: float) -> None:
        """Read what the port has (waiting up to ``wait_s``) and handle every frame in it."""
        if self._kcall is not None and self._fd is not None:
            self._poll_fused(wait_s)
            return
        data = self._read_some(wait_s)
        if not data:
            return
        t_ready = time.monotonic_ns()
        for chunk in self._splitter.feed(data):
            self.rx.frames += 1
            try:
                if self._text:
                    self._rx_lines += 1
                    pkt = decode_line(chunk, self._rx_lines)
                else:
                    pkt = P.decode_frame(chunk)
            except P.DecodeError as exc:
                self.rx.count_error(exc.kind)
                if exc.kind == "nonfinite" and self._event_mode:  # a cycle without good inputs
                    d = self.sup.on_invalid_sample(t_ready)
                    if d.status or d.send:
                        self._act(d, 0, t_ready)
                continue
            self._t_decoded = time.monotonic_ns()
            self._handle(pkt, t_ready)
        overflow = getattr(self._splitter, "overflows", 0)
        if overflow:
            self.rx.errors["length"] += overflow
            self._splitter.overflows = 0

    def _poll_fused(self, wait_s: float) -> None:
        """The binary hot path: wait, read into the preallocated buffer, one compiled call per
        frame (framecodec), write the ACTUATE it encoded. Where the platform allows, the wait,
        the read and the write are in the compiled call too (``frame_io``): no Python between
        "readable" and "written". Python handles only the rare returns (HELLO, a cycle the
        supervisor must judge, errors, policy failure)."""
        args, op = self._kargs, self._op
        if self._kio is not None:
            wait_ns = int(wait_s * 1e9) if wait_s > 0 else 0
            r = self._kio(self._fd, wait_ns, self._spin_ns > 0, op, self.sup.mode, *args)
            code = r & 0xFF
            if code == F.R_SENT:
                self._sent_io(r >> 8)
                return
            if code == F.R_DONE:
                return
            if code != F.R_IO:
                st = self._st
                self._rest(r, int(st[F.ST_READ]), int(st[F.ST_READY_NS]))
                return
            wait_s = 0.0  # R_IO: the Python path below diagnoses it (EINTR, EAGAIN, a lost port)
        fd = self._fd
        if not select.select(self._rlist, (), (), wait_s if wait_s > 0 else 0.0)[0]:
            return
        try:
            n = os.readv(fd, self._rvec)
        except BlockingIOError:
            return
        if not n:  # readable but empty: the device went away
            raise serial.SerialException("device reports readiness to read but returned no data")
        t_ready = time.monotonic_ns()
        self._rest(self._kcall(op, 0, n, t_ready, self.sup.mode, *args), n, t_ready)

    def _rest(self, r: int, n: int, t_ready: int) -> None:
        """Handle the compiled call's return ``r`` and scan the rest of the ``n`` bytes read."""
        call, args, op = self._kcall, self._kargs, self._op
        while True:
            code = r & 0xFF
            if code == F.R_STEP_END:
                self._sent_fused(r >> 8, t_ready, t_ready)
                return
            if code == F.R_DONE:
                return
            self._rare(code, r, t_ready, t_ready)
            r = call(op, int(self._st[F.ST_POS]), n, t_ready, self.sup.mode, *args)

    def _rare(self, code: int, r: int, t_ready: int, now: int) -> None:
        """A return of the compiled call other than "done" / "sent, nothing left"."""
        st = self._st
        if code == F.R_STEP_MORE:
            self._sent_fused(r >> 8, t_ready, now)
        elif code == F.R_ERROR:
            self.rx.count_error(P.ERROR_KINDS[int(st[F.ST_KIND])])
        elif code == F.R_OVERFLOW:
            self.rx.errors["length"] += 1
        elif code == F.R_PACKET:
            self.rare_frames += 1
            self._t_decoded = time.monotonic_ns()
            self._handle(self.frames.packet(), t_ready)
        elif code == F.R_POLICY:
            self.sup.on_valid_sample(now)  # RUN: the plain step decision, bookkeeping only
            if self._event_mode:
                self._cycle_ns = t_ready
            self._finish(int(st[F.ST_KIND]), int(st[F.ST_SEQ]), t_ready, now)

    def _sent_io(self, size: int, now: int | None = None) -> None:
        """The io (or tick) call stepped a RUN cycle and wrote its ACTUATE (all of it, or
        st[ST_WROTE] bytes: the rest through pyserial, which waits or raises for a lost port).
        ``now``: the cycle's time (default: when the frame was read)."""
        st = self._st
        k, t_ready = int(st[F.ST_WROTE]), int(st[F.ST_READY_NS])
        if k != size:
            self.port.write(bytes(self.frames.tx(size)[max(k, 0) :]))
            t_written = time.monotonic_ns()
        else:
            t_written = int(st[F.ST_WRITTEN_NS])
        self._after_write(t_ready, int(st[F.ST_DONE_NS]), t_written, t_ready if now is None else now)

    def _sent_fused(self, size: int, t_ready: int, now: int) -> None:
        """The compiled call stepped a RUN cycle and encoded its ACTUATE: write it, count it."""
        t_done = time.monotonic_ns()
        view = self.frames.tx(size)
        try:
            k = os.write(self._fd, view)
        except BlockingIOError:
            k = 0
        if k != size:  # a partial write: the rest through pyserial (it waits)
            self.port.write(bytes(view[k:]))
        # The command is out: take the time now. What follows is bookkeeping, kept out of the
        # frame-readable -> written window: Python between the compiled call and the write runs
        # cold here (the recorder's few reads there cost +5-6 µs p50 at 1 kHz on this VM).
        self._after_write(t_ready, t_done, time.monotonic_ns(), now)

    def _after_write(self, t_ready: int, t_done: int, t_written: int, now: int) -> None:
        """A compiled RUN cycle's ACTUATE is out: the supervisor's bookkeeping, stats, recorder."""
        self.sup.on_valid_sample(now)  # RUN: the plain step decision, bookkeeping only
        if self._event_mode:
            self._cycle_ns = t_ready
        if self.recorder is None:
            self._commanded(0, t_ready, t_done, t_done, t_written)
            return
        st = self._st
        self._t_decoded = t_ready
        self._rec_elapsed, self._rec_t_us = float(self.frames.fv[F.FV_ELAPSED]), int(st[F.ST_T_US])
        self._commanded(int(st[F.ST_SEQ]), t_ready, t_done, t_done, t_written)

    def _check_timeout(self, now: int) -> None:
        """The supervisor's timer (every loop iteration): sensor timeout -> HOLD/SAFE, and the
        STATUS (+ fail-safe in SAFE) repeat while not RUN. Fires with no frame at all."""
        d = self.sup.on_tick(now)
        if d is not self._run_idle and (d.status or d.send):
            self._act(d, 0, now, failsafe_first=False)

    def _connect(self, deadline_ns: int | None = None, fail_fast: bool = False) -> bool:
        """Open the port and handshake, retrying with back-off until stopped or ``deadline_ns``
        (False then). ``fail_fast``: the first failure raises EdgeliquidError instead."""
        delay = self.cfg.reconnect_min_s
        while not self._stop and (deadline_ns is None or time.monotonic_ns() < deadline_ns):
            try:
                self.port = open_port(self.cfg)
                self._splitter = LineSplitter() if self._text else P.Packetizer()
                self.frames.reset_receiver()
                self._fd = None if self._text else getattr(self.port, "fd", None)
                if self._fd is not None:
                    self._rlist, self._rvec = [self._fd], [self.frames.rx_view]
                self.rx.reset_seq()
                self._last_t_us = None
                # Announce ourselves and put the actuators in a defined state.
                self._send(
                    P.HELLO,
                    [float(len(self.cfg.inputs)), float(len(self.cfg.outputs)), float(self.cfg.rate_hz)],
                )
                self._act(self.sup.on_port_connected(time.monotonic_ns()))
                return True
            except (serial.SerialException, OSError) as exc:
                self._close()
                if fail_fast:
                    why = " ".join(str(exc).split())[:200]
                    raise EdgeliquidError(f"{self.cfg.source}: serial.port {self.cfg.port}: {why}") from None
                log.warning("cannot open %s (%s); retrying in %.2fs", self.cfg.port, exc, delay)
                self._sleep(delay, deadline_ns)
                delay = min(delay * 2, self.cfg.reconnect_max_s)
        return False

    def _sleep(self, seconds: float, deadline_ns: int | None) -> None:
        """Sleep in short slices so that stop() and the run's deadline are seen promptly."""
        end = time.monotonic_ns() + int(seconds * 1e9)
        if deadline_ns is not None:
            end = min(end, deadline_ns)
        while not self._stop and time.monotonic_ns() < end:
            time.sleep(min(0.05, max(0.0, (end - time.monotonic_ns()) / 1e9)))

    def _close(self) -> None:
        self._fd = None
        if self.port is not None:
            try:
                self.port.close()
            except Exception:  # closing a vanished device can raise anything
                pass
            self.port = None

    def _lost_port(self, exc: Exception) -> None:
        """A serial error: SAFE (fail-safe if the port still takes it), close, reconnect later."""
        self.stats.reconnects += 1
        self._event(f"serial error ({exc}); fail-safe, reconnecting", logging.ERROR, kind="reconnect")
        try:
            self._act(self.sup.on_port_lost(time.monotonic_ns()))
        except (serial.SerialException, OSError):
            pass
        self._close()

    def _reload_done(self, out) -> None:
        """Swap in a finished reload between cycles, or log why the old policy stays."""
        now = time.monotonic_ns()
        if isinstance(out, str):
            self.stats.reloads_rejected += 1
            self._event(
                f"model reload rejected, keeping the old model: {out}", logging.ERROR, kind="reload_rejected"
            )
            self._act(self.sup.on_reload_failed(now))
            return
        new, report = out
        self.policy = new
        self._bind_policy()
        self.stats.reloads += 1
        self._act(self.sup.on_reload_done(now), why="new model")  # a new model starts from zero
        self._event(
            f"model reloaded from {self.cfg.model} (step {report['step_s'] * 1e6:.0f} µs)",
            logging.INFO,
            kind="reload",
        )
        self._note_stability()

    def stats_line(self) -> str:
        lat = self.stats.latency_us()
        errs = " ".join(f"{k}={v}" for k, v in self.rx.errors.items() if v)
        return (
            f"steps={self.stats.steps} latency_us p50={lat['p50']:.0f} p99={lat['p99']:.0f} "
            f"max={lat['max']:.0f} misses={self.stats.deadline_misses} lost={self.rx.lost} "
            f"dup={self.rx.duplicates} errors[{errs or 'none'}] clipped={self.maps.clipped} "
            f"out_of_range={self.stats.out_of_range} mode={MODE_NAMES[self.sup.mode]}"
            + (f" unstable={self.stats.unstable_steps}" if self.stats.unstable_steps else "")
            + (
                ""
                if self._event_mode
                else f" ticks_late={self.stats.ticks_late} ticks_no_sample={self.stats.ticks_no_sample}"
            )
        )

    def run(self, duration_s: float | None = None, fail_fast: bool = False) -> NodeStats:
        """Run the loop until stopped (or for ``duration_s``, connection retries included);
        always ends in SAFE. ``fail_fast``: raise EdgeliquidError if the port cannot be opened
        at start instead of retrying."""
        t_end = None if duration_s is None else time.monotonic_ns() + int(duration_s * 1e9)
        # The reload worker exists before the loop takes realtime priority: it (and the
        # validation child it starts) keeps the default scheduling and CPU set.
        self.reloader.start_thread()
        if self.recorder is not None:
            self.recorder.start()
        self._held = realtime.apply(**self.cfg.realtime_settings())
        if self.cfg.cpu is not None:
            realtime.keep_off_cpu(self.cfg.cpu, self._helper_tasks())
        try:
            self._connect(t_end, fail_fast)
        except BaseException:
            self._held.release()
            self.reloader.close()
            if self.recorder is not None:
                self.recorder.close()
            raise
        self.ready.set()
        next_tick = time.monotonic_ns() + self._period_ns
        next_stats = time.monotonic_ns() + int(self.cfg.stats_every_s * 1e9)
        try:
            while not self._stop and (t_end is None or time.monotonic_ns() < t_end):
                if self._reload:
                    self._reload = False
                    self.reloader.request()
                reloaded = self.reloader.result()
                if reloaded is not None:
                    self._reload_done(reloaded)
                try:
                    now = time.monotonic_ns()
                    if not self._event_mode and self._ktick is not None and self.fused:
                        next_tick = self._tick_io(next_tick)
                    elif not self._event_mode:
                        # Take what the port has, then sleep (absolute, GIL released) until
                        # spin_us before the tick and poll without sleeping from there: on a VM
                        # an idle vCPU can take milliseconds to wake (halt + reschedule). Frames
                        # that arrive during the sleep are read before the tick uses them.
                        wait = realtime.tick_wait_s(next_tick, now, self._spin_s)
                        self._poll(0.0)
                        if wait > 0:
                            self._sleeper.until(now + int(wait * 1e9))
                            self._poll(0.0)
                        now = time.monotonic_ns()
                        if now >= next_tick:
                            self._tick(now)
                            # Overran: late ticks are skipped, never a burst; counted as the
                            # wake-up probe counts the floor (command gaps: _commanded).
                            next_tick, late = realtime.next_tick_after(now, next_tick, self._period_ns)
                            self.stats.ticks_late += late
                    else:
                        # spin_us: poll without sleeping (in the compiled call where it waits)
                        wait = min(self._timeout_ns / 4e9, 0.05)
                        self._poll(wait if self._kio is not None or not self._spin_s else 0)
                    now = time.monotonic_ns()
                    self._check_timeout(now)
                    if now >= next_stats:
                        if self.cfg.gc_freeze:
                            gc.collect(0)
                        log.info("%s", self.stats_line())
                        next_stats = now + int(self.cfg.stats_every_s * 1e9)
                except (serial.SerialException, OSError) as exc:
                    self._lost_port(exc)
                    self._connect(t_end)
        finally:
            self._shutdown()
            self.reloader.close()
            self._held.release()
        if self.recorder is not None:
            self.recorder.close()
        log.info("final: %s", self.stats_line())
        return self.stats

    def _helper_tasks(self) -> list[int]:
        """The recorder's writer (process or thread) and the reloader thread, as task ids."""
        tasks = [self.reloader.native_id]
        if self.recorder is not None:
            tasks.append(self.recorder.task_id)
        return [t for t in tasks if t]

    def _tick_io(self, next_tick: int) -> int:
        """Fixed mode, compiled (framecodec.*_frame_tick): read, sleep, spin, tick and write in
        one call; Python handles the rare returns and counts the tick. The next deadline."""
        st = self._st
        r = self._ktick(self._fd, next_tick, self._spin_ns, self.sup.mode, *self._kargs)
        code, ticked = r & 0xFF, int(st[F.ST_TICKED])
        if not ticked:  # returned before the tick
            if code == F.R_IO:
                self._poll_fused(0.0)  # Python's path diagnoses it
            elif code != F.R_DONE:
                self._rest(r, int(st[F.ST_READ]), int(st[F.ST_READY_NS]))
            return next_tick
        self._cycle_ns = ticked
        if code == F.R_SENT:
            self._sent_io(r >> 8, ticked)
        else:
            self._tick_result(code, r, ticked)
        # Overran: late ticks are skipped, never a burst (as Node.run's Python wait).
        next_tick, late = realtime.next_tick_after(ticked, next_tick, self._period_ns)
        self.stats.ticks_late += late
        return next_tick

    def _tick_result(self, code: int, r: int, now: int) -> None:
        """The compiled tick's return other than a written ACTUATE."""
        if code == F.R_DONE:  # nothing fresh since the last tick
            self.stats.ticks_no_sample += self.sup.mode == P.MODE_RUN
            return
        t_ready = int(self._st[F.ST_PEND_NS])
        if code == F.R_STEP_END:
            self._sent_fused(r >> 8, t_ready, now)
        elif code == F.R_TICK_SLOW:
            self.rare_frames += 1
            elapsed = (self._period_ns / 1e9) / self.cfg.model_dt
            self._on_sample(self.frames.pending(), t_ready, elapsed=elapsed)
        else:
            self._rare(code, r, t_ready, now)

    def _tick(self, now: int) -> None:
        """Fixed mode: one cycle on the newest frame since the last tick."""
        self._cycle_ns = now
        if self.fused:
            r = self._kcall(F.OP_TICK, 0, 0, now, self.sup.mode, *self._kargs)
            self._tick_result(r & 0xFF, r, now)
        pkt, self._pending = self._pending, None
        if pkt is not None:
            self._on_sample(pkt, self._pending_ns, elapsed=(self._period_ns / 1e9) / self.cfg.model_dt)
        elif not self.fused:
            self.stats.ticks_no_sample += self.sup.mode == P.MODE_RUN

    def _shutdown(self) -> None:
        """Stop: SAFE with the fail-safe command and STATUS (latched), then close the port."""
        d = self.sup.on_stop(time.monotonic_ns())
        if self.port is None:
            return
        try:
            self._act(d)
            self.port.flush()
        except (serial.SerialException, OSError):
            pass
        self._close()
