"""The onboard node: a real-time sense -> infer -> actuate loop over a serial port.

port -> bytes -> frame -> packet -> inputs -> policy.step -> command -> frame -> port.

Modes: SAFE (fail-safe command, not armed) -> RUN after ``arm_after`` consecutive
valid SENSOR frames of the configured size; RUN -> HOLD when sensors go missing
or bad (the last good inputs are reused for ``hold_cycles`` cycles) -> SAFE.
Any I/O error closes the port (fail-safe first, if it can still be written),
then the node reopens it with exponential back-off and handshakes again.
Policy errors (a non-finite output) send the fail-safe command and reset the state.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import select
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import serial

from . import kernels, realtime
from . import protocol as P
from .channels import ChannelMaps
from .config import NodeConfig
from .errors import EdgeliquidError
from .textproto import LineSplitter, decode_line, encode_line

log = logging.getLogger("edgeliquid.node")

MODE_NAMES = {P.MODE_RUN: "RUN", P.MODE_HOLD: "HOLD", P.MODE_SAFE: "SAFE"}
# STATUS reasons
R_NONE, R_STARTING, R_TIMEOUT, R_BAD_SENSOR, R_POLICY, R_HELLO_MISMATCH, R_SHUTDOWN, R_RECONNECT = range(8)
REASONS = (
    "none",
    "starting",
    "sensor timeout",
    "bad sensor data",
    "policy output non-finite",
    "hello size mismatch",
    "shutdown",
    "reconnect",
)
LAT_RING = 1 << 16


@dataclass
class NodeStats:
    steps: int = 0
    deadline_misses: int = 0
    failsafe_events: int = 0
    reconnects: int = 0
    policy_errors: int = 0
    reloads: int = 0
    hello_mismatch: int = 0
    wrong_size: int = 0
    miss_log: list = field(default_factory=list)  # (monotonic s, ticks missed), first 100
    latency_ns: np.ndarray = field(default_factory=lambda: np.zeros(LAT_RING, np.int64))
    n_lat: int = 0

    def add_latency(self, ns: int) -> None:
        self.latency_ns[self.n_lat % LAT_RING] = ns
        self.n_lat += 1

    def latency_us(self) -> dict[str, float]:
        n = min(self.n_lat, LAT_RING)
        if n == 0:
            return {"p50": math.nan, "p99": math.nan, "max": math.nan}
        a = self.latency_ns[:n] / 1000.0
        return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def check_normalization(cfg: NodeConfig, metadata: dict[str, str]) -> bool:
    """Warn when the config's input scale/offset differ from the model's recorded normalisation.

    A policy fed differently normalised inputs than it was trained on misbehaves without
    any error; this is the one check that can catch it before the robot moves.
    """
    import json

    raw = metadata.get("input_normalization")
    if not raw:
        return True
    try:
        norm = json.loads(raw)
        off, scale = np.asarray(norm["offset"], float), np.asarray(norm["scale"], float)
    except (ValueError, KeyError, TypeError):
        log.warning("model metadata input_normalization is not valid JSON {offset, scale}: %r", raw)
        return False
    got_off = np.array([c.offset for c in cfg.inputs])
    got_scale = np.array([c.scale for c in cfg.inputs])
    if off.shape != got_off.shape or not (np.allclose(off, got_off) and np.allclose(scale, got_scale)):
        log.warning(
            "%s: inputs offset/scale %s / %s differ from the model's training normalisation %s / %s",
            cfg.source,
            got_off.tolist(),
            got_scale.tolist(),
            off.tolist(),
            scale.tolist(),
        )
        return False
    return True


def make_recorder(cfg: NodeConfig, policy):
    """The flight recorder for ``cfg.telemetry`` (model sha256 and config in its metadata)."""
    import dataclasses
    import hashlib
    import json

    from .recorder import FlightRecorder

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
    return FlightRecorder(
        t["path"],
        policy.n_inputs,
        policy.n_outputs,
        len(cfg.outputs),
        meta,
        rotate_mb=t["rotate_mb"],
        rotate_s=t["rotate_s"],
        keep=t["keep"],
    )


def open_port(cfg: NodeConfig) -> serial.SerialBase:
    """Open the configured port by name or URL (pty paths, socket://, loop://, spy://...)."""
    kwargs = {"baudrate": cfg.baudrate, "timeout": 0, "write_timeout": 1.0}
    if cfg.exclusive and "://" not in cfg.port:
        kwargs["exclusive"] = True
    return serial.serial_for_url(cfg.port, **kwargs)


class Node:
    """The loop. ``run()`` until ``stop()`` (or SIGINT/SIGTERM via :meth:`install_signals`)."""

    def __init__(self, cfg: NodeConfig, policy=None):
        from .runtime import load

        self.cfg = cfg
        self.policy = policy if policy is not None else load(cfg.model, backend=cfg.backend)
        n_in, n_out = len(cfg.inputs), len(cfg.outputs)
        if (self.policy.n_inputs, self.policy.n_outputs) != (n_in, n_out):
            raise EdgeliquidError(
                f"{cfg.source}: config has {n_in} inputs / {n_out} outputs but model {cfg.model} "
                f"has {self.policy.n_inputs} / {self.policy.n_outputs}"
            )
        self.maps = ChannelMaps(cfg.inputs, cfg.outputs, self.policy.dtype)
        check_normalization(cfg, self.policy.metadata)
        self._bind_policy()
        self.rx = P.RxCounters()
        self.stats = NodeStats()
        self.mode = P.MODE_SAFE
        self.reason = R_STARTING
        self.port: serial.SerialBase | None = None
        self._text = cfg.protocol == "text"
        self._splitter = LineSplitter() if self._text else P.Packetizer()
        self._tx_seq = 0
        self._rx_lines = 0
        self._stop = False
        self._reload = False
        self._hello_ok = True
        self._valid_streak = 0
        self._bad_streak = 0
        self._last_raw = np.zeros(n_in)
        self._have_last = False
        self._last_t_us: int | None = None
        self._last_valid_ns = time.monotonic_ns()
        self._last_cmd_ns = time.monotonic_ns()
        self._last_status_ns = 0
        self._pending: P.Packet | None = None
        self._pending_ns = 0
        self._period_ns = int(1e9 / cfg.rate_hz)
        self._timeout_ns = int(cfg.sensor_timeout_ms * 1e6)
        self._spin_s = cfg.spin_us / 1e6
        self._held = realtime.Held()
        self.ready = threading.Event()  # set once the port is open and the handshake sent
        self.events: list[tuple[float, str]] = []
        self._t_decoded = 0
        self._rec_elapsed, self._rec_t_us = 0.0, 0
        self._reset_pending = False
        self.recorder = None
        if cfg.telemetry:
            self.recorder = make_recorder(cfg, self.policy)

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        self._stop = True

    def request_reload(self) -> None:
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

    def _set_mode(self, mode: int, reason: int) -> None:
        if mode != self.mode or reason != self.reason:
            if mode == P.MODE_SAFE and self.mode != P.MODE_SAFE:
                self.stats.failsafe_events += 1
            self._event(
                f"mode {MODE_NAMES[self.mode]} -> {MODE_NAMES[mode]} ({REASONS[reason]})",
                logging.INFO if mode == P.MODE_RUN else logging.WARNING,
                kind="failsafe" if mode == P.MODE_SAFE else ("arm" if mode == P.MODE_RUN else "hold"),
            )
            self.mode, self.reason = mode, reason
            if mode == P.MODE_SAFE:
                self._send(P.ACTUATE, self.maps.command_failsafe().tolist())
            self._send_status()

    def _send_status(self) -> None:
        self._send(P.STATUS, [float(self.mode), float(self.reason)])
        self._last_status_ns = time.monotonic_ns()

    # ------------------------------------------------------------------ input
    def _handle(self, pkt: P.Packet, t_ready: int) -> None:
        if pkt.type == P.HELLO:
            self._on_hello(pkt)
        elif pkt.type == P.SENSOR:
            if not self._text and not self.rx.track_seq(pkt.seq):
                return
            if self.cfg.mode == "event":
                self._on_sample(pkt, t_ready)
            else:
                self._pending, self._pending_ns = pkt, t_ready

    def _on_hello(self, pkt: P.Packet) -> None:
        vals = pkt.values
        n_in, n_out = len(self.cfg.inputs), len(self.cfg.outputs)
        self._send(P.HELLO, [float(n_in), float(n_out), float(self.cfg.rate_hz)])
        self.rx.reset_seq()
        self._valid_streak = 0
        if len(vals) < 2 or (int(vals[0]), int(vals[1])) != (n_in, n_out):
            self._hello_ok = False
            self.stats.hello_mismatch += 1
            got = tuple(int(v) for v in vals[:2])
            self._event(
                f"HELLO size mismatch: device has {got[0] if got else '?'} sensors / "
                f"{got[1] if len(got) > 1 else '?'} actuators, config expects {n_in} / "
                f"{n_out}; refusing to arm",
                logging.ERROR,
            )
            self._set_mode(P.MODE_SAFE, R_HELLO_MISMATCH)
            self._send_status()
        else:
            self._hello_ok = True
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
        if not self._valid(pkt):
            self._bad_streak += 1
            self._valid_streak = 0
            self._degrade(R_BAD_SENSOR, pkt.seq, t_ready, pkt.t_us)
            return
        self._bad_streak = 0
        self._last_valid_ns = now
        e = self._elapsed_from(pkt) if elapsed is None else elapsed
        self._last_raw[:] = pkt.values
        self._have_last = True
        if self.mode != P.MODE_RUN:
            self._valid_streak += 1
            if not self._hello_ok or self._valid_streak < self.cfg.arm_after:
                if self.mode == P.MODE_HOLD:
                    self._set_mode(P.MODE_RUN, R_NONE)
                else:
                    return
            else:
                if self.mode == P.MODE_SAFE and self.cfg.on_recovery == "reset_state":
                    self._reset_policy("recovery (on_recovery: reset_state)")
                self._set_mode(P.MODE_RUN, R_NONE)
        self._infer_and_send(self._last_raw, e, pkt.seq, t_ready, pkt.t_us)

    def _degrade(self, reason: int, ref_seq: int, t_ready: int, t_us: int | None) -> None:
        """Missing or bad inputs: HOLD (reuse the last good inputs) then SAFE."""
        if self.mode == P.MODE_SAFE:
            return
        if self._have_last and self._bad_streak <= self.cfg.hold_cycles and self.mode != P.MODE_SAFE:
            if self.mode != P.MODE_HOLD:
                self._set_mode(P.MODE_HOLD, reason)
            self._infer_and_send(
                self._last_raw, (1.0 / self.cfg.rate_hz) / self.cfg.model_dt, ref_seq, t_ready
            )
        else:
            self._set_mode(P.MODE_SAFE, reason)

    def _compute(self, raw: np.ndarray, elapsed: float, dt_s: float) -> int:
        """Inputs -> command in ``self.maps.u``; a kernel status (see kernels.STATUS_*)."""
        if self._fast is not None:
            fp, ip, work = self._fast
            m = self.maps
            return kernels.control_step(raw, elapsed, dt_s, m.chan, m.xbuf, fp, ip, work)
        return self.maps.apply_numpy(self.policy, raw, elapsed, dt_s)

    def _finish(self, status: int, ref_seq: int, t_ready: int, now: int) -> None:
        """Send the computed command, or the fail-safe when the policy failed."""
        if status != kernels.STATUS_OK:
            self.stats.policy_errors += 1
            self._reset_policy("policy error")
            self._event(
                "policy produced a non-finite output; fail-safe command sent, state reset", logging.ERROR
            )
            self._set_mode(P.MODE_SAFE, R_POLICY)
            return
        self._last_cmd_ns = now
        t_inferred = time.monotonic_ns()
        u = self.maps.u
        data = self._encode(P.ACTUATE, u.tolist(), ref_seq)
        t_encoded = time.monotonic_ns()
        self._write(data)
        t_written = time.monotonic_ns()
        self.stats.steps += 1
        self.stats.add_latency(t_written - t_ready)
        if self.recorder is not None:
            self.recorder.record_step(
                ref_seq,
                self._rec_t_us,
                self._rec_elapsed,
                self.mode,
                self._reset_pending,
                self.maps.xbuf,
                self._yview,
                u,
                (t_ready, max(self._t_decoded, t_ready), t_inferred, t_encoded, t_written),
            )
        self._reset_pending = False

    def _infer_and_send(
        self, raw: np.ndarray, elapsed: float, ref_seq: int, t_ready: int, t_us: int = 0
    ) -> None:
        now = time.monotonic_ns()
        self._rec_elapsed, self._rec_t_us = elapsed, t_us
        status = self._compute(raw, elapsed, (now - self._last_cmd_ns) / 1e9)
        self._finish(status, ref_seq, t_ready, now)

    def _reset_policy(self, why: str) -> None:
        self.policy.reset()
        self._reset_pending = True
        if self.recorder is not None:
            self.recorder.event("reset", why)

    def _bind_policy(self) -> None:
        """Cache the cpu kernel's arrays for the fused fast path (None: numpy path)."""
        p = self.policy
        self._yview = p._y
        self._fast = (p._fp, p._ip, p._work) if p.backend == "cpu" and p.batch is None else None
        if self._fast is not None:
            # Compile/load the fused kernel now, on copies, so the first tick pays no JIT.
            fp, ip, work = self._fast
            kernels.control_step(
                np.zeros(len(self.cfg.inputs)),
                1.0,
                0.0,
                self.maps.chan.copy(),
                self.maps.xbuf.copy(),
                fp,
                ip,
                work.copy(),
            )

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
                if exc.kind == "nonfinite" and self.cfg.mode == "event":
                    self._bad_streak += 1
                    self._degrade(R_BAD_SENSOR, 0, t_ready, None)
                continue
            self._t_decoded = time.monotonic_ns()
            self._handle(pkt, t_ready)
        overflow = getattr(self._splitter, "overflows", 0)
        if overflow:
            self.rx.errors["length"] += overflow
            self._splitter.overflows = 0

    def _check_timeout(self, now: int) -> None:
        if self.mode == P.MODE_SAFE:
            return
        since = now - self._last_valid_ns
        if since <= self._timeout_ns:
            return
        # Timer-driven: fires even when no frame arrives at all.
        cycles = (since - self._timeout_ns) // self._period_ns + 1
        if cycles > self.cfg.hold_cycles or not self._have_last:
            self._set_mode(P.MODE_SAFE, R_TIMEOUT)
        elif cycles > self._bad_streak:
            self._bad_streak = int(cycles)
            self._degrade(R_TIMEOUT, 0, now, None)

    def _connect(self) -> None:
        delay = self.cfg.reconnect_min_s
        while not self._stop:
            try:
                self.port = open_port(self.cfg)
                self._splitter = LineSplitter() if self._text else P.Packetizer()
                self.rx.reset_seq()
                self._valid_streak = 0
                self._last_t_us = None
                self._last_valid_ns = time.monotonic_ns()
                # Announce ourselves and put the actuators in a defined state.
                self._send(
                    P.HELLO,
                    [float(len(self.cfg.inputs)), float(len(self.cfg.outputs)), float(self.cfg.rate_hz)],
                )
                self.mode = P.MODE_SAFE
                self._send(P.ACTUATE, self.maps.command_failsafe().tolist())
                self._send_status()
                return
            except (serial.SerialException, OSError) as exc:
                self._close()
                log.warning("cannot open %s (%s); retrying in %.2fs", self.cfg.port, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.cfg.reconnect_max_s)

    def _close(self) -> None:
        if self.port is not None:
            try:
                self.port.close()
            except Exception:  # closing a vanished device can raise anything
                pass
            self.port = None

    def _reload_model(self) -> None:
        from .runtime import load

        self._reload = False
        try:
            new = load(self.cfg.model, backend=self.cfg.backend)
            if (new.n_inputs, new.n_outputs) != (self.policy.n_inputs, self.policy.n_outputs):
                raise EdgeliquidError(
                    f"new model has {new.n_inputs}/{new.n_outputs} inputs/outputs,"
                    f" expected {self.policy.n_inputs}/{self.policy.n_outputs}"
                )
        except EdgeliquidError as exc:
            self._event(
                f"model reload rejected, keeping the old model: {exc}", logging.ERROR, kind="reload_rejected"
            )
            return
        self.policy = new
        self._bind_policy()
        self._reset_pending = True  # a new model starts from a zero state
        self.stats.reloads += 1
        self._event(f"model reloaded from {self.cfg.model}", logging.INFO, kind="reload")

    def stats_line(self) -> str:
        lat = self.stats.latency_us()
        errs = " ".join(f"{k}={v}" for k, v in self.rx.errors.items() if v)
        return (
            f"steps={self.stats.steps} latency_us p50={lat['p50']:.0f} p99={lat['p99']:.0f} "
            f"max={lat['max']:.0f} misses={self.stats.deadline_misses} lost={self.rx.lost} "
            f"dup={self.rx.duplicates} errors[{errs or 'none'}] mode={MODE_NAMES[self.mode]}"
        )

    def run(self, duration_s: float | None = None) -> NodeStats:
        """Run the loop until stopped (or for ``duration_s``); always ends in SAFE."""
        if self.recorder is not None:
            self.recorder.start()
        self._held = realtime.apply(**self.cfg.realtime_settings())
        t_end = None if duration_s is None else time.monotonic_ns() + int(duration_s * 1e9)
        self._connect()
        self.ready.set()
        next_tick = time.monotonic_ns() + self._period_ns
        next_stats = time.monotonic_ns() + int(self.cfg.stats_every_s * 1e9)
        try:
            while not self._stop and (t_end is None or time.monotonic_ns() < t_end):
                if self._reload:
                    self._reload_model()
                try:
                    now = time.monotonic_ns()
                    if self.cfg.mode == "fixed":
                        # Sleep only until spin_us before the tick, then poll without sleeping:
                        # on a VM an idle vCPU can take milliseconds to wake (halt + reschedule).
                        self._poll(realtime.tick_wait_s(next_tick, now, self._spin_s))
                        now = time.monotonic_ns()
                        if now >= next_tick:
                            self._tick(now)
                            next_tick, missed = realtime.next_tick_after(now, next_tick, self._period_ns)
                            if missed:  # overran: skipped, never a burst
                                self.stats.deadline_misses += missed
                                if len(self.stats.miss_log) < 100:
                                    self.stats.miss_log.append((now / 1e9, missed))
                    else:
                        self._poll(0 if self._spin_s else min(self._timeout_ns / 4e9, 0.05))
                    now = time.monotonic_ns()
                    self._check_timeout(now)
                    if self.mode != P.MODE_RUN and now - self._last_status_ns > 1e9:
                        self._send_status()
                        if self.mode == P.MODE_SAFE:
                            self._send(P.ACTUATE, self.maps.command_failsafe().tolist())
                    if now >= next_stats:
                        if self.cfg.gc_freeze:
                            gc.collect(0)
                        log.info("%s", self.stats_line())
                        next_stats = now + int(self.cfg.stats_every_s * 1e9)
                except (serial.SerialException, OSError) as exc:
                    self.stats.reconnects += 1
                    self._event(
                        f"serial error ({exc}); fail-safe, reconnecting", logging.ERROR, kind="reconnect"
                    )
                    try:
                        self._set_mode(P.MODE_SAFE, R_RECONNECT)
                    except (serial.SerialException, OSError):
                        self.mode = P.MODE_SAFE
                    self._close()
                    self._connect()
        finally:
            self._shutdown()
            self._held.release()
        if self.recorder is not None:
            self.recorder.close()
        log.info("final: %s", self.stats_line())
        return self.stats

    def _tick(self, now: int) -> None:
        """Fixed mode: one cycle on the newest frame since the last tick."""
        pkt, self._pending = self._pending, None
        if pkt is not None:
            self._on_sample(pkt, self._pending_ns, elapsed=(self._period_ns / 1e9) / self.cfg.model_dt)

    def _shutdown(self) -> None:
        if self.port is None:
            return
        try:
            self.mode = P.MODE_RUN  # force the transition message
            self._set_mode(P.MODE_SAFE, R_SHUTDOWN)
            self.port.flush()
        except (serial.SerialException, OSError):
            pass
        self._close()
