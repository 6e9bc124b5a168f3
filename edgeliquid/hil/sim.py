"""Hardware-in-the-loop simulator: plays the robot's microcontroller over a serial link.

It integrates a plant in real time, sends SENSOR frames at ``rate_hz`` (with
optional noise and timing jitter, so elapsed times are irregular), applies each
ACTUATE command until the next (zero-order hold), obeys STATUS SAFE by applying
the fail-safe values it receives, and measures its round trip via ``ref_seq``.

Transports: ``pty`` (creates a pseudo-terminal pair; the node opens
``device.node_port``), ``tcp-listen:[HOST:]PORT`` (the node opens ``socket://HOST:PORT``),
or any pyserial URL/path the device should open (e.g. a USB-serial adapter wired to a
node on another computer).
"""

from __future__ import annotations

import math
import os
import select
import socket
import termios
import threading
import time
import tty
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import serial

from ..node import protocol as P
from ..node.textproto import LineSplitter, encode_line


class CartPole:
    """Cart-pole (Barto et al. 1983 constants), state [x, x_dot, theta, theta_dot]; force in N.

    Unstable open loop: a wrong or slow policy lets the pole fall within about a second.
    """

    gravity, m_cart, m_pole, half_len, force_max = 9.8, 1.0, 0.1, 0.5, 10.0
    n_sensors, n_actuators = 4, 1

    def __init__(self, rng: np.random.Generator, init_scale: float = 0.05):
        self.s = rng.uniform(-init_scale, init_scale, 4)

    def step(self, force: float, dt: float, substeps: int = 4, push: float = 0.0) -> None:
        """Advance ``dt`` s under the actuator ``force`` (clipped to ``force_max``) plus an
        external ``push`` on the cart (N, not clipped: it does not come from the actuator)."""
        f = float(np.clip(force, -self.force_max, self.force_max)) + push
        h = dt / substeps
        for _ in range(substeps):
            x, xd, th, thd = self.s
            total = self.m_cart + self.m_pole
            pml = self.m_pole * self.half_len
            ct, st = math.cos(th), math.sin(th)
            tmp = (f + pml * thd * thd * st) / total
            thacc = (self.gravity * st - ct * tmp) / (
                self.half_len * (4.0 / 3.0 - self.m_pole * ct * ct / total)
            )
            xacc = tmp - pml * thacc * ct / total
            # semi-implicit Euler
            xd += h * xacc
            thd += h * thacc
            self.s = np.array([x + h * xd, xd, th + h * thd, thd])

    @property
    def angle(self) -> float:
        return float(self.s[2])


PLANTS = {"cartpole": CartPole}


@dataclass(frozen=True)
class Push:
    """An external shove: ``force_n`` newtons on the cart from ``at_s`` (s into the run) for
    ``duration_s``; the pole swings away and the policy has to bring it back."""

    at_s: float
    force_n: float
    duration_s: float = 0.1

    def impulse_over(self, t0_s: float, t1_s: float) -> float:
        """N·s this push delivers in [t0_s, t1_s] (exact, whatever the step size)."""
        return self.force_n * max(0.0, min(t1_s, self.at_s + self.duration_s) - max(t0_s, self.at_s))


def random_pushes(n: int, seconds: float, rng: np.random.Generator, max_n: float = 10.0) -> list[Push]:
    """``n`` pushes in the middle 20-80 % of the run, one at a random time in the first half of
    each of ``n`` equal slots (so the pole has time to recover between them), each of random
    sign and a magnitude in [max_n / 2, max_n] N."""
    if n <= 0:
        return []
    slot = 0.6 * seconds / n
    at = 0.2 * seconds + slot * (np.arange(n) + rng.uniform(0.0, 0.5, n))
    mag = rng.uniform(max_n / 2, max_n, n) * rng.choice([-1.0, 1.0], n)
    return [Push(float(a), float(m)) for a, m in zip(at, mag)]


def push_recovery(
    t_s: np.ndarray, angle: np.ndarray, pushes: Sequence[Push], band_rad: float
) -> list[dict[str, float | None]]:
    """For each push: the largest |theta| from its start to the next push (or the end), and
    the time from its start until |theta| is back within ``band_rad`` for good in that window
    (None: not back by then)."""
    out = []
    order = sorted(pushes, key=lambda p: p.at_s)
    for i, p in enumerate(order):
        stop = order[i + 1].at_s if i + 1 < len(order) else np.inf
        sel = (t_s >= p.at_s) & (t_s < stop)
        a, t = np.abs(angle[sel]), t_s[sel]
        outside = np.flatnonzero(a > band_rad)
        if len(a) == 0 or (len(outside) and outside[-1] == len(a) - 1):
            settle = None  # no samples, or still outside the band when the window ends
        else:
            settle = float(t[outside[-1] + 1] - p.at_s) if len(outside) else 0.0
        out.append(
            {
                "at_s": p.at_s,
                "force_n": p.force_n,
                "duration_s": p.duration_s,
                "max_abs_angle": float(a.max()) if len(a) else float("nan"),
                "settle_s": settle,
            }
        )
    return out


class PtyMaster:
    """The device end of a pseudo-terminal pair, with the bits of pyserial's API the sim uses."""

    def __init__(self):
        self.fd, slave = os.openpty()
        tty.setraw(slave)
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self.node_port = os.ttyname(slave)
        self._slave = slave  # kept open so the pair survives the node reconnecting
        self.timeout = 0.0

    def read(self, n: int) -> bytes:
        r, _, _ = select.select([self.fd], [], [], self.timeout)
        if not r:
            return b""
        try:
            return os.read(self.fd, max(n, 4096))
        except OSError:
            return b""

    @property
    def in_waiting(self) -> int:
        return 0

    def write(self, data: bytes) -> int:
        return os.write(self.fd, data)

    def close(self) -> None:
        for fd in (self.fd, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass


class TcpListenPort:
    """The device end of a TCP link: listens, accepts the node's ``socket://host:port``.

    Lets the same simulator stand in for a microcontroller behind a serial-to-TCP bridge,
    or run on another computer than the node.
    """

    def __init__(self, host: str, port: int):
        self._srv = socket.create_server((host, port))
        self.address = self._srv.getsockname()
        self.node_port = f"socket://{self.address[0]}:{self.address[1]}"
        self._conn = None
        self.timeout = 0.0

    def _accept(self, wait: float) -> bool:
        if self._conn is None:
            r, _, _ = select.select([self._srv], [], [], wait)
            if not r:
                return False
            self._conn, _ = self._srv.accept()
            # Small frames both ways: without TCP_NODELAY, Nagle waits for the node's delayed ACK.
            self._conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return True

    def read(self, n: int) -> bytes:
        if not self._accept(self.timeout):
            return b""
        r, _, _ = select.select([self._conn], [], [], self.timeout)
        if not r:
            return b""
        data = self._conn.recv(max(n, 4096))
        if not data:  # the node went away: wait for it to come back
            self._conn.close()
            self._conn = None
        return data

    @property
    def in_waiting(self) -> int:
        return 0

    def write(self, data: bytes) -> int:
        if not self._accept(0.0):  # a node waiting in the backlog gets these bytes too
            return 0  # nobody connected yet: the bytes go nowhere, as on an unplugged wire
        try:
            self._conn.sendall(data)
        except OSError:
            self._conn = None
        return len(data)

    def close(self) -> None:
        for s in (self._conn, self._srv):
            if s is not None:
                s.close()


@dataclass
class SimStats:
    sent: int = 0
    actuations: int = 0
    rtt_us: list = field(default_factory=list)
    statuses: list = field(default_factory=list)
    hello: tuple | None = None
    max_abs_angle: float = 0.0
    max_abs_x: float = 0.0
    angles: list = field(default_factory=list)
    commands: list = field(default_factory=list)
    rx_errors: int = 0
    stalls: int = 0  # times this process was descheduled for over 3 periods (its world paused)
    stalled_s: float = 0.0


class Device:
    """The simulated microcontroller. ``run(seconds)`` in a thread or process."""

    def __init__(
        self,
        port=None,
        plant: str = "cartpole",
        rate_hz: float = 100.0,
        protocol: str = "cobs",
        noise: float = 0.0,
        jitter: float = 0.0,
        seed: int = 0,
        init_scale: float = 0.05,
        fault: str | None = None,
        fault_at_s: float = 2.0,
        fault_len_s: float = 0.5,
        pushes: Sequence[Push] = (),
    ):
        self.port = port if port is not None else PtyMaster()
        self.node_port = getattr(self.port, "node_port", None)
        self.rng = np.random.default_rng(seed)
        self.plant = PLANTS[plant](self.rng, init_scale)
        self.rate_hz, self.protocol, self.noise, self.jitter = rate_hz, protocol, noise, jitter
        self.fault, self.fault_at_s, self.fault_len_s = fault, fault_at_s, fault_len_s
        self.pushes = tuple(pushes)
        self.push_now = 0.0  # the external force on the cart at the last step (N), for displays
        self.stats = SimStats()
        self.command = np.zeros(self.plant.n_actuators)
        self.mode = P.MODE_SAFE
        self._seq = 0
        self._sent_at: dict[int, int] = {}
        self._splitter = LineSplitter() if protocol == "text" else P.Packetizer()
        self._stop = threading.Event()
        self._shift = 0  # ns of host stalls the world skipped (see run)
        self.record = True

    def stop(self) -> None:
        self._stop.set()

    def _send(self, ptype: int, values, t_us: int) -> None:
        self._seq = (self._seq + 1) & 0xFFFF
        if self.protocol == "text":
            data = encode_line(ptype, self._seq, values, t_us=t_us)
        else:
            data = P.encode_frame(ptype, self._seq, t_us, values)
        if self.fault == "corrupt" and self._in_fault() and len(data) > 4:
            b = bytearray(data)
            b[int(self.rng.integers(0, len(b) - 1))] ^= 0x5A
            data = bytes(b)
        self.port.write(data)
        self._sent_at[self._seq] = time.monotonic_ns()
        if len(self._sent_at) > 4096:
            self._sent_at.pop(next(iter(self._sent_at)))

    def _in_fault(self) -> bool:
        t = (time.monotonic_ns() - self._shift - self._t0) / 1e9
        return self.fault_at_s <= t < self.fault_at_s + self.fault_len_s

    def _receive(self, data: bytes) -> None:
        for chunk in self._splitter.feed(data):
            try:
                pkt = self._decode(chunk)
            except (P.DecodeError, ValueError, IndexError):
                self.stats.rx_errors += 1
                continue
            if pkt is None:
                continue
            ptype, values, ref = pkt
            if ptype == P.ACTUATE and len(values) == self.plant.n_actuators:
                self.command[:] = values
                self.stats.actuations += 1
                sent = self._sent_at.pop(ref, None)
                if sent is not None:
                    self.stats.rtt_us.append((time.monotonic_ns() - sent) / 1000.0)
                if self.record:
                    self.stats.commands.append((time.monotonic_ns(), self.mode, float(values[0])))
            elif ptype == P.STATUS and values:
                self.mode = int(values[0])
                self.stats.statuses.append(
                    (time.monotonic_ns(), int(values[0]), int(values[1]) if len(values) > 1 else 0)
                )
            elif ptype == P.HELLO:
                self.stats.hello = tuple(values)

    def _decode(self, chunk: bytes):
        if self.protocol == "text":
            parts = chunk.decode("ascii").split()
            kind, nums = parts[0], [float(v) for v in parts[1:]]
            if kind == "A":
                return P.ACTUATE, nums[1:], int(nums[0])
            if kind == "T":
                return P.STATUS, nums, 0
            if kind == "H":
                return P.HELLO, nums, 0
            return None
        pkt = P.decode_frame(chunk)
        return pkt.type, pkt.values, pkt.ref_seq

    def run(self, seconds: float) -> SimStats:
        """Real-time loop: integrate, sample, send; read commands in between."""
        period = 1.0 / self.rate_hz
        period_ns = int(period * 1e9)
        self._t0 = t_prev = time.monotonic_ns()
        # World time = wall time - _shift. If this process was descheduled for over 3 periods
        # (a host stall), the simulated world pauses with it: the plant advances one period,
        # not the stall, and the clock the device sends skips the stall. A robot's physics does
        # not stop when its simulator's host does; without this, a stall of the test machine
        # itself (everything paused) would be judged as the controller's failure. Counted.
        self._shift = 0
        max_gap = 3 * period_ns
        t_us0 = 0
        self._send(P.HELLO, [self.plant.n_sensors, self.plant.n_actuators, self.rate_hz], t_us0)
        next_sample = self._t0
        t_end = self._t0 + int(seconds * 1e9)
        while not self._stop.is_set():
            now = time.monotonic_ns()
            if now - self._shift >= t_end:
                break
            if now >= next_sample:
                if now - t_prev > max_gap:
                    excess = now - t_prev - period_ns
                    self._shift += excess
                    self.stats.stalls += 1
                    self.stats.stalled_s += excess / 1e9
                    t_prev = now - period_ns
                dt = (now - t_prev) / 1e9
                t_a, t_b = (t_prev - self._shift - self._t0) / 1e9, (now - self._shift - self._t0) / 1e9
                push = sum(p.impulse_over(t_a, t_b) for p in self.pushes) / dt if dt > 0 else 0.0
                self.push_now = push
                self.plant.step(self.command[0], dt, push=push)
                t_prev = now
                angle = self.plant.angle
                self.stats.max_abs_angle = max(self.stats.max_abs_angle, abs(angle))
                self.stats.max_abs_x = max(self.stats.max_abs_x, abs(float(self.plant.s[0])))
                if self.record:
                    self.stats.angles.append((now - self._shift, angle))  # world time
                stalled = self.fault == "stall" and self._in_fault()
                if not stalled:
                    obs = self.plant.s + self.noise * self.rng.standard_normal(4)
                    if self.fault == "nan" and self._in_fault():
                        obs = obs * np.nan
                    t_us = ((now - self._shift - self._t0) // 1000) & 0xFFFFFFFF
                    self._send(P.SENSOR, obs.tolist(), t_us)
                    self.stats.sent += 1
                jit = self.jitter * period * self.rng.uniform(-1, 1)
                # A sensor that fell behind (this process was descheduled) samples again one
                # period from now, as hardware would: no burst of catch-up samples
                next_sample = max(next_sample, now) + int((period + jit) * 1e9)
            wait = max(0.0, min((next_sample - time.monotonic_ns()) / 1e9, 0.01))
            self.port.timeout = wait
            data = self.port.read(4096)
            if data:
                self._receive(data)
        return self.stats


def open_device(port_spec: str, **kwargs) -> Device:
    """A device on ``pty`` (new pair), ``tcp-listen:[HOST:]PORT`` (the node connects with
    ``socket://HOST:PORT``), or a pyserial URL/path it opens itself."""
    if port_spec == "pty":
        return Device(None, **kwargs)
    if port_spec.startswith("tcp-listen:"):
        hostport = port_spec[len("tcp-listen:") :]
        host, _, port = hostport.rpartition(":")
        return Device(TcpListenPort(host or "127.0.0.1", int(port)), **kwargs)
    return Device(serial.serial_for_url(port_spec, baudrate=115200, timeout=0), **kwargs)
