"""Flight recorder with its writer in a child process: the loop's GIL is never shared.

:class:`ProcessRecorder` has :class:`.recorder.FlightRecorder`'s API. The ring lives in
shared memory (a ``memfd``, inherited by the child; nothing named, nothing to clean up):
fixed-size rows, a head index the loop publishes and a tail index the writer publishes.
:meth:`~ProcessRecorder.record_step` copies one row and bumps the head: no lock, no
syscall; a full ring drops the step and counts it, never waits. Events (rare) go to the
child as JSON lines on its stdin, non-blocking (counted if that pipe is ever full).

The child runs FlightRecorder's own writer (encoding, MCAP, rotation, flush every
``flush_s``, fsync) on the shared ring. It stops when its stdin reaches EOF (``close``, or
the node died: the kernel closes the pipe) or its parent changes (checked at every
wake-up), after draining what the ring holds and closing the file; a ``kill -9`` of both
loses at most the last ``flush_s``, as with the thread writer.

Memory order: the row is written before the head that publishes it. x86 keeps stores in
order; on weakly ordered CPUs the many instructions CPython runs between the two make an
out-of-order view vanishingly unlikely but not impossible (a torn row, never a crash).
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .recorder import _TIMES, ENCODINGS, FlightRecorder

# Header slots (int64). Head and tail on their own cache lines: one writer each.
_HEAD, _TAIL, _WRITTEN, _ERRORS, _FLUSHES, _WDROPPED, _READY = 0, 8, 16, 17, 18, 19, 20
_HDR = 256  # bytes


def _layout(cap: int, nf: int) -> tuple[int, int, int]:
    """Offsets of the float rows and int rows, and the total size, of the shared block."""
    f_off = _HDR
    i_off = f_off + cap * nf * 8
    return f_off, i_off, i_off + cap * (4 + _TIMES) * 8


def _views(buf, cap: int, nf: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f_off, i_off, _ = _layout(cap, nf)
    hdr = np.ndarray((_HDR // 8,), np.int64, buf, 0)
    f = np.ndarray((cap, nf), np.float64, buf, f_off)
    i = np.ndarray((cap, 4 + _TIMES), np.int64, buf, i_off)
    return hdr, f, i


class ProcessRecorder:
    """Shared-memory ring + writer process; same API as :class:`.recorder.FlightRecorder`."""

    def __init__(
        self,
        path: str | os.PathLike,
        n_in: int,
        n_out: int,
        n_cmd: int,
        metadata: dict[str, str] | None = None,
        rotate_mb: float = 64.0,
        rotate_s: float = 3600.0,
        keep: int = 5,
        capacity: int = 1 << 16,
        flush_s: float = 1.0,
        encoding: str = "protobuf",
    ):
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        self.path = Path(path)
        self.n_in, self.n_out, self.n_cmd = n_in, n_out, n_cmd
        self.cap = capacity
        nf = n_in + n_out + n_cmd + 1
        self._args = {
            "path": str(path),
            "n_in": n_in,
            "n_out": n_out,
            "n_cmd": n_cmd,
            "metadata": {k: str(v) for k, v in (metadata or {}).items()},
            "rotate_mb": rotate_mb,
            "rotate_s": rotate_s,
            "keep": keep,
            "capacity": capacity,
            "flush_s": flush_s,
            "encoding": encoding,
        }
        size = _layout(capacity, nf)[2]
        self._fd = os.memfd_create("edgeliquid-recorder", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, size)
        self._mm = mmap.mmap(self._fd, size)
        self._hdr, self._f, self._i = _views(self._mm, capacity, nf)
        self._head = 0
        self._tail_seen = 0
        self._dropped = 0
        self.events_dropped = 0
        self._proc: subprocess.Popen | None = None
        self._final: dict | None = None

    # ------------------------------------------------------------- loop side
    def record_step(self, seq, t_us, elapsed, mode, reset, x, y, u, times) -> None:
        """Copy one step into the shared ring; drops (and counts) when the ring is full."""
        head = self._head
        if head - self._tail_seen >= self.cap:
            self._tail_seen = int(self._hdr[_TAIL])  # only read when the ring looks full
            if head - self._tail_seen >= self.cap:
                self._dropped += 1
                return
        k = head % self.cap
        f = self._f[k]
        n_in, n_out = self.n_in, self.n_out
        f[:n_in] = x
        f[n_in : n_in + n_out] = y
        f[n_in + n_out : -1] = u
        f[-1] = elapsed
        i = self._i[k]
        i[0], i[1], i[2], i[3] = seq, t_us, mode, reset
        i[4:] = times
        self._head = head + 1
        self._hdr[_HEAD] = head + 1  # publish after the row

    def event(self, kind: str, text: str = "") -> None:
        """Send an event to the writer (a non-blocking pipe write; counted if it cannot)."""
        if self._proc is None or self._proc.stdin is None:
            self.events_dropped += 1
            return
        line = json.dumps({"t_ns": time.monotonic_ns(), "kind": kind, "text": text}) + "\n"
        try:
            if os.write(self._proc.stdin.fileno(), line.encode()) != len(line.encode()):
                self.events_dropped += 1
        except (BlockingIOError, BrokenPipeError, OSError, ValueError):
            self.events_dropped += 1

    # ------------------------------------------------------------ counters
    @property
    def dropped(self) -> int:
        """Steps lost: ring full (loop side) plus what a failing disk lost (writer side)."""
        return self._dropped + int(self._hdr[_WDROPPED])

    @property
    def written(self) -> int:
        return int(self._hdr[_WRITTEN])

    @property
    def write_errors(self) -> int:
        return int(self._hdr[_ERRORS])

    @property
    def flushes(self) -> int:
        return int(self._hdr[_FLUSHES])

    @property
    def files(self) -> list[Path]:
        """The files kept (the full list once closed; the first file while running)."""
        if self._final is not None:
            return [Path(p) for p in self._final.get("files", [])]
        return [self.path] if self.path.exists() else []

    @property
    def pid(self) -> int | None:
        """The writer process's pid (None before :meth:`start`)."""
        return None if self._proc is None else self._proc.pid

    @property
    def task_id(self) -> int | None:
        """The writer's OS task id (its pid), to keep it off the loop's CPU."""
        return self.pid

    # -------------------------------------------------------------- control
    def start(self) -> ProcessRecorder:
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else root
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "edgeliquid.node.recorder_process", str(self._fd), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(self._fd,),
            env=env,
        )
        self._proc.stdin.write((json.dumps(self._args) + "\n").encode())
        self._proc.stdin.flush()
        fd = self._proc.stdin.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        return self

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Wait until the writer has opened its first file (tests; the loop never waits)."""
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self._hdr[_READY] or (self._proc is not None and self._proc.poll() is not None):
                return bool(self._hdr[_READY])
            time.sleep(0.01)
        return False

    def close(self) -> None:
        """Let the writer drain the ring, close its file and exit; give up after 10 s without
        progress (a hung disk: the writer is killed then)."""
        p = self._proc
        if p is None or self._final is not None:
            return
        try:
            p.stdin.close()  # EOF: the writer drains and stops
        except OSError:
            pass
        last, idle_since = (int(self._hdr[_TAIL]), self.flushes), time.monotonic()
        while p.poll() is None and time.monotonic() - idle_since < 10:
            try:
                p.wait(0.5)
            except subprocess.TimeoutExpired:
                pass
            now = (int(self._hdr[_TAIL]), self.flushes)
            if now != last:
                last, idle_since = now, time.monotonic()
        if p.poll() is None:
            p.kill()
            p.wait()
        try:
            self._final = json.loads(p.stdout.read() or b"{}")
        except ValueError:
            self._final = {}
        p.stdout.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def _slot(i: int) -> property:
    """An int attribute of the writer kept in header slot ``i`` (the loop reads it there)."""

    def get(self) -> int:
        return int(self._hdr[i])

    def put(self, v: int) -> None:
        if i != _HEAD:  # the head is the loop's alone
            self._hdr[i] = v

    return property(get, put)


class _SharedWriter(FlightRecorder):
    """FlightRecorder's writer on the shared ring: indices and counters live in the header."""

    _yield_gil = False  # nothing else runs Python here

    def __init__(self, hdr, f, i, ppid: int, **kw):
        self._hdr = hdr
        self._ppid = ppid
        self._eof = False
        super().__init__(capacity=1, **kw)  # its own (tiny) ring is replaced just below
        self.cap = f.shape[0]
        self._f, self._i = f, i

    _head = _slot(_HEAD)
    _tail = _slot(_TAIL)
    written = _slot(_WRITTEN)
    write_errors = _slot(_ERRORS)
    flushes = _slot(_FLUSHES)
    dropped = _slot(_WDROPPED)

    @property
    def _stop(self) -> bool:
        return self._eof or os.getppid() != self._ppid

    @_stop.setter
    def _stop(self, v: bool) -> None:
        self._eof = self._eof or bool(v)

    def _open(self) -> None:
        super()._open()
        self._hdr[_READY] = 1


def _child(fd: int, ppid: int) -> int:
    """The writer process: config on the first stdin line, then events, EOF = stop."""
    stdin = sys.stdin.buffer
    args = json.loads(stdin.readline())
    cap = args["capacity"]
    nf = args["n_in"] + args["n_out"] + args["n_cmd"] + 1
    mm = mmap.mmap(fd, _layout(cap, nf)[2])
    hdr, f, i = _views(mm, cap, nf)
    args.pop("capacity")
    w = _SharedWriter(hdr, f, i, ppid, **args)

    def events() -> None:
        for line in stdin:
            try:
                e = json.loads(line)
                with w._lock:
                    w._events.append((int(e["t_ns"]), str(e["kind"]), str(e["text"])))
            except (ValueError, KeyError, TypeError):
                continue
            w._wake.set()
        w._stop = True
        w._wake.set()

    threading.Thread(target=events, daemon=True).start()
    w._run()
    sys.stdout.write(json.dumps({"files": [str(p) for p in w.files]}))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_child(int(sys.argv[1]), int(sys.argv[2])))
