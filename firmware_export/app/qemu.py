"""Run a controller app under qemu with its UART on a pty; measure instructions per cycle.

Time on the emulated board: ``-icount shift=N,sleep=on``. Every executed instruction advances
virtual time by 2^N ns (N = :data:`ICOUNT_SHIFT` = 5: 32 ns, a 31 MIPS core, near the AN386's
25 MHz Cortex-M4), and while the core sleeps in WFI virtual time follows the host clock, so the
app's millisecond timeouts stay close to real ones. The board timer ticks at 25 MHz (40 ns), so
``instructions = ticks * 40 / 2^N`` (1.25 instructions per tick, to within one tick). These
are instructions, not cycles: qemu is not cycle accurate (no pipeline, wait states or FPU
latencies are modelled).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import struct
import subprocess
import tempfile
import termios
import time
import tty
from pathlib import Path

from edgeliquid.node import protocol as P

from .board_mps2 import TICK_HZ, qemu_args
from .controller_c import DEBUG_FIELDS

ICOUNT_SHIFT = 5
NS_PER_INSN = 2**ICOUNT_SHIFT
INSN_PER_TICK = (1e9 / TICK_HZ) / NS_PER_INSN
NOTE = (
    f"instructions executed on qemu's emulated Cortex-M4 (-icount shift={ICOUNT_SHIFT}: board timer "
    f"ticks x {INSN_PER_TICK:g}); qemu is not cycle accurate, so this is not a cycle count"
)
_PTY = re.compile(rb"char device redirected to (\S+)")


def qemu_available() -> bool:
    return shutil.which("qemu-system-arm") is not None


class FdPort:
    """A pty path opened raw, with the bits of pyserial's API the simulator uses."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        attrs = termios.tcgetattr(self.fd)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        self.timeout = 0.0
        self.node_port = None

    def read(self, n: int) -> bytes:
        r, _, _ = select.select([self.fd], [], [], self.timeout)
        if not r:
            return b""
        try:
            return os.read(self.fd, max(n, 4096))
        except (BlockingIOError, OSError):
            return b""

    @property
    def in_waiting(self) -> int:
        return 0

    def write(self, data: bytes) -> int:
        view, done = memoryview(data), 0
        while done < len(data):
            try:
                done += os.write(self.fd, view[done:])
            except BlockingIOError:
                select.select([], [self.fd], [], 0.1)
        return done

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


_RT_PREFIX: list[str] | None = None


def realtime_prefix() -> list[str]:
    """``chrt -r 1`` (SCHED_RR, the lowest real-time priority) where this system allows it (root,
    CAP_SYS_NICE or an RLIMIT_RTPRIO), else nothing; probed once.

    Why: qemu's CMSDK UART model holds one received byte and takes the next from the pty only
    after the guest has read it, so every byte is a vCPU -> main loop -> vCPU hand-off (two thread
    wake-ups; the app does drain every byte it is offered). On a loaded host each wake-up waits for
    a time slice, a 30-byte SENSOR frame can take longer than the 10 ms control period and the
    input backs up. A real microcontroller does not share its core; under SCHED_RR the emulated one
    does not queue behind the host's other jobs either, and it sleeps in WFI between frames, so it
    takes little CPU. docs/firmware.md, "Time"."""
    global _RT_PREFIX
    if _RT_PREFIX is None:
        _RT_PREFIX = []
        chrt = shutil.which("chrt")
        if chrt and os.environ.get("EDGELIQUID_QEMU_REALTIME", "1") != "0":
            probe = subprocess.run([chrt, "-r", "1", "true"], capture_output=True)
            if probe.returncode == 0:
                _RT_PREFIX = [chrt, "-r", "1"]
    return list(_RT_PREFIX)


class QemuApp:
    """``elf`` running under qemu (mps2-an386), its UART0 on a pty: ``port`` (an :class:`FdPort`)."""

    def __init__(self, elf: str | Path, shift: int = ICOUNT_SHIFT, start_timeout: float = 20.0):
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            realtime_prefix() + qemu_args(str(elf), shift),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pty_path = self._wait_pty(start_timeout)
        self.port = FdPort(self.pty_path)
        self._buf = P.Packetizer()

    def _log_text(self) -> bytes:
        """qemu's output so far. pread, not seek + read: the file offset is shared with qemu's
        stdout/stderr, and a seek to 0 just before qemu writes made it overwrite its own pty line."""
        return os.pread(self._log.fileno(), 1 << 16, 0)

    def _wait_pty(self, timeout: float) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = _PTY.search(self._log_text())
            if m:
                return m.group(1).decode()
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        text = self._log_text().decode(errors="replace")[-300:]
        self.close()
        raise RuntimeError(f"qemu did not open a pty for the app's UART: {text!r}")

    # ------------------------------------------------------------ a minimal device side
    def send(self, ptype: int, seq: int, t_us: int, values=()) -> None:
        self.port.write(P.encode_frame(ptype, seq, t_us, values))

    def packets(self, timeout: float) -> list[P.Packet]:
        """Packets that arrive within ``timeout`` s (returns as soon as some came and the line is quiet)."""
        out: list[P.Packet] = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.port.timeout = 0.05 if out else max(0.0, end - time.monotonic())
            data = self.port.read(4096)
            if not data:
                if out:
                    break
                continue
            for chunk in self._buf.feed(data):
                try:
                    out.append(P.decode_frame(chunk))
                except P.DecodeError:
                    pass
        return out

    def handshake(self, n_in: int, n_out: int, rate_hz: float, timeout: float = 20.0) -> P.Packet:
        """Send HELLO until the app answers with its HELLO (qemu notices a newly opened pty late)."""
        end = time.monotonic() + timeout
        seq = 0
        while time.monotonic() < end:
            seq += 1
            self.send(P.HELLO, seq, 0, [n_in, n_out, rate_hz])
            for pkt in self.packets(0.3):
                if pkt.type == P.HELLO:
                    self.packets(0.1)  # whatever follows it
                    self.settle(max(1.0, end - time.monotonic()))
                    return pkt
        raise RuntimeError(f"the app on {self.pty_path} did not answer HELLO within {timeout:g} s")

    def settle(self, timeout: float = 10.0, prompt_s: float = 0.05) -> None:
        """Query the app (debug STATUS) until it answers within ``prompt_s``: right after the first
        exchange qemu's pty backend can stop reading for up to a second (its reconnect poll), which
        would stall the first frames of a closed loop."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            t0 = time.monotonic()
            self.send(P.STATUS, 0, 0, [])
            answered = False
            while not answered and time.monotonic() - t0 < 1.5:
                self.port.timeout = 0.1
                for chunk in self._buf.feed(self.port.read(4096)):
                    try:
                        pkt = P.decode_frame(chunk)
                    except P.DecodeError:
                        continue
                    answered |= pkt.type == P.STATUS and len(pkt.values) == len(DEBUG_FIELDS)
            if answered and time.monotonic() - t0 <= prompt_s:
                return
        raise RuntimeError(f"the app on {self.pty_path} did not answer promptly within {timeout:g} s")

    def debug(self, timeout: float = 5.0) -> dict:
        """The app's counters and measurements (its answer to a STATUS frame, :data:`DEBUG_FIELDS`)."""
        self.send(P.STATUS, 0, 0, [])
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for pkt in self.packets(max(0.0, end - time.monotonic())):
                if pkt.type == P.STATUS and len(pkt.values) == len(DEBUG_FIELDS):
                    return dict(zip(DEBUG_FIELDS, pkt.values))
        raise RuntimeError("the app did not answer the STATUS (debug) query")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        port = getattr(self, "port", None)
        if port is not None:
            port.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> QemuApp:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def instructions(dbg: dict) -> dict:
    """Instructions per control cycle from the app's tick measurements (see the module docstring)."""
    k = INSN_PER_TICK
    return {
        "cycles_measured": int(dbg["measured_cycles"]),
        "step_min": round(dbg["step_ticks_min"] * k),
        "step_mean": round(dbg["step_ticks_mean"] * k),
        "step_max": round(dbg["step_ticks_max"] * k),
        "cycle_min": round(dbg["cycle_ticks_min"] * k),
        "cycle_mean": round(dbg["cycle_ticks_mean"] * k),
        "cycle_max": round(dbg["cycle_ticks_max"] * k),
        "icount_shift": ICOUNT_SHIFT,
        "cycle": "frame delimiter received -> decode, checks, maps, NAME_step, encode (UART write excluded)",
        "note": NOTE,
    }


def measure_instructions(elf: str | Path, cfg, frames: int = 60) -> dict:
    """Run ``elf`` under qemu, arm it and step it on ``frames`` SENSOR frames (a fixed, gently
    moving cart-pole-like sequence, 1/rate apart in device time), one at a time; return
    :func:`instructions` of the measured cycles."""
    import math

    n_in, n_out = len(cfg.inputs), len(cfg.outputs)
    period_us = int(1e6 / cfg.rate_hz)
    with QemuApp(elf) as q:
        q.handshake(n_in, n_out, cfg.rate_hz)
        for k in range(frames):
            vals = [0.05 * math.sin(0.1 * k + i) for i in range(n_in)]
            q.send(P.SENSOR, 100 + k, k * period_us, vals)
            q.packets(2.0)
        return instructions(q.debug())


def f32(x: float) -> float:
    """``x`` rounded to float32 (what the wire carries)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]
