"""Real-time settings for the calling thread, and a probe of what they buy on this machine.

`apply` sets what a node config's ``realtime:`` section asks for (CPU pinning, SCHED_FIFO,
mlockall, a CPU wake-up latency request); each setting the OS refuses is a warning, never a
failure. `AbsSleep` is the fixed mode's wait (clock_nanosleep on an absolute deadline, GIL
released). `probe_wakeups` is a small cyclictest: a loop that waits for absolute ticks exactly
as the node's fixed mode does, with nothing else to do, so its late ticks are the floor this
machine and these settings put under the node (``edgeliquid profile --wakeup``).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing as mp
import os
import select
import struct
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("edgeliquid.node.realtime")

CPU_LATENCY_PATH = "/dev/cpu_dma_latency"


@dataclass
class Held:
    """What must stay alive (and be released) for the settings to hold."""

    qos_fd: int | None = None
    gc_frozen: bool = False

    def release(self) -> None:
        if self.qos_fd is not None:
            os.close(self.qos_fd)  # closing the file drops the latency request
            self.qos_fd = None
        if self.gc_frozen:
            gc.unfreeze()
            gc.enable()
            self.gc_frozen = False


def hold_cpu_latency(us: int, path: str = CPU_LATENCY_PATH) -> int | None:
    """Ask the kernel (PM QoS) to keep CPU wake-up latency under ``us`` µs; the fd holds it.

    A sleeping loop is woken late when its idle CPU sits in a deep C-state (in a VM: a halted
    vCPU). With 0 the idle loop polls instead, as cyclictest does; the cost is an idle core
    that never sleeps. The request lasts while the returned fd is open. Refused: warning, None.
    """
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        log.warning("realtime.cpu_dma_latency_us=%s refused: %s", us, exc)
        return None
    try:
        os.write(fd, struct.pack("i", us))
    except OSError as exc:
        os.close(fd)
        log.warning("realtime.cpu_dma_latency_us=%s refused: %s", us, exc)
        return None
    return fd


def keep_off_cpu(cpu: int, task_ids: list[int]) -> None:
    """Move helper tasks (a writer process's pid, a thread's native id) off the loop's CPU.

    The recorder's writer and the reloader start before the loop pins itself, so they may run
    on its CPU between frames and leave its caches cold; on the other CPUs they only take time
    the loop does not use. Nothing to do on a single-CPU machine; a refusal is logged.
    """
    for tid in task_ids:
        try:
            others = os.sched_getaffinity(tid) - {cpu}
            if others:
                os.sched_setaffinity(tid, others)
        except (OSError, AttributeError) as exc:
            log.warning("realtime.cpu=%s: could not move task %s off it: %s", cpu, tid, exc)


def apply(
    cpu: int | None = None,
    sched_fifo: int | None = None,
    mlockall: bool = False,
    gc_freeze: bool = False,
    cpu_dma_latency_us: int | None = None,
) -> Held:
    """Apply the settings to the calling thread; call ``release()`` on the result when done."""
    held = Held()
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except (OSError, AttributeError) as exc:
            log.warning("realtime.cpu=%s refused: %s", cpu, exc)
    if sched_fifo is not None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(sched_fifo))
        except (OSError, AttributeError) as exc:
            log.warning("realtime.sched_fifo=%s refused: %s", sched_fifo, exc)
    if mlockall:
        try:
            if ctypes.CDLL(None, use_errno=True).mlockall(3) != 0:  # MCL_CURRENT | MCL_FUTURE
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        except (OSError, AttributeError) as exc:
            log.warning("realtime.mlockall refused: %s", exc)
    if cpu_dma_latency_us is not None:
        held.qos_fd = hold_cpu_latency(cpu_dma_latency_us)
    if gc_freeze:
        # Freeze what exists, and keep the collector out of the loop: a generation-2
        # pass can take milliseconds. Young objects are collected at stats time.
        gc.collect()
        gc.freeze()
        gc.disable()
        held.gc_frozen = True
    return held


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class AbsSleep:
    """Sleep until an absolute ``time.monotonic_ns()`` instant: ``clock_nanosleep(CLOCK_MONOTONIC,
    TIMER_ABSTIME)`` through ctypes, which releases the GIL for the call. An absolute deadline
    does not stretch by the time spent computing a relative one. A signal ends the sleep early
    (the caller loops). Without the libc call (not Linux): ``time.sleep`` of the difference."""

    CLOCK_MONOTONIC, TIMER_ABSTIME = 1, 1

    def __init__(self):
        self._ts = _Timespec()
        self._ref = ctypes.byref(self._ts)
        try:
            f = ctypes.CDLL(None).clock_nanosleep
            f.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Timespec), ctypes.c_void_p)
            f.restype = ctypes.c_int
            self._f = f
        except (OSError, AttributeError):
            self._f = None

    def until(self, t_ns: int) -> None:
        if self._f is None:
            time.sleep(max(0.0, (t_ns - time.monotonic_ns()) / 1e9))
            return
        ts = self._ts
        ts.tv_sec = t_ns // 1_000_000_000
        ts.tv_nsec = t_ns % 1_000_000_000
        self._f(self.CLOCK_MONOTONIC, self.TIMER_ABSTIME, self._ref, None)


def tick_wait_s(next_tick_ns: int, now_ns: int, spin_s: float) -> float:
    """How long the fixed loop may sleep in select(): until ``spin_s`` before the tick (capped
    at 50 ms so signals and timeouts are seen), 0 inside the spin window."""
    wait = (next_tick_ns - now_ns) / 1e9 - spin_s
    return min(wait, 0.05) if wait > 0 else 0.0


def next_tick_after(now_ns: int, tick_ns: int, period_ns: int) -> tuple[int, int]:
    """The deadline after the tick ``tick_ns`` taken at ``now_ns``, and the ticks missed.

    Absolute deadlines (no drift); an overrun skips every tick already past and counts it,
    never a burst of catch-up steps.
    """
    nxt = tick_ns + period_ns
    if now_ns < nxt:
        return nxt, 0
    missed = (now_ns - nxt) // period_ns + 1
    return nxt + missed * period_ns, missed


def ticks_due(first_ns: int, end_ns: int, period_ns: int) -> int:
    """How many ticks ``first_ns + k * period_ns`` fall before ``end_ns``."""
    return max(0, -(-(end_ns - first_ns) // period_ns))


def _probe_loop(rate_hz: float, seconds: float, spin_us: float, settings: dict) -> dict:
    held = apply(**settings)
    try:
        period = int(1e9 / rate_hz)
        r, w = os.pipe()  # never written: a quiet port
        sleeper = AbsSleep()
        n = missed = 0
        next_tick = time.monotonic_ns() + period
        end = next_tick + int(seconds * 1e9)
        lateness = np.zeros(ticks_due(next_tick, end, period), dtype=np.int64)
        while True:
            # Node.run's fixed-mode wait and tick accounting, on a port that stays quiet:
            # look at the port, sleep (absolute) until spin_us before the tick, then spin.
            now = time.monotonic_ns()
            wait = tick_wait_s(next_tick, now, spin_us / 1e6)
            select.select([r], [], [], 0.0)
            if wait > 0:
                sleeper.until(now + int(wait * 1e9))
            now = time.monotonic_ns()
            if now < next_tick:
                continue
            if now >= end:
                # Woken at or after the end: the ticks from next_tick up to the end were due
                # and not taken, so they are misses too; every tick in [start, end) is then
                # either taken or missed, however late the last wake-up came.
                missed += ticks_due(next_tick, end, period)
                break
            lateness[n] = now - next_tick
            n += 1
            next_tick, skipped = next_tick_after(now, next_tick, period)
            missed += skipped
        os.close(r)
        os.close(w)
    finally:
        held.release()
    late_us = lateness[:n] / 1e3
    pct = (lambda q: float(np.percentile(late_us, q))) if n else (lambda q: float("nan"))
    return {
        "rate_hz": rate_hz,
        "seconds": seconds,
        "ticks": n,
        "missed": missed,
        "lateness_us": {
            "p50": pct(50),
            "p99": pct(99),
            "p99.9": pct(99.9),
            "max": pct(100),
        },
    }


def _child(conn, *args) -> None:
    conn.send(_probe_loop(*args))


def probe_wakeups(rate_hz: float = 1000.0, seconds: float = 10.0, spin_us: float = 0.0, **settings) -> dict:
    """Tick at ``rate_hz`` for ``seconds`` doing nothing else, in a fresh process with the
    given realtime ``settings`` (the keywords of :func:`apply`) and the node's wait.

    Returns ticks, ``missed`` (ticks the node's fixed mode would have skipped, counted the
    same way) and the wake-up lateness percentiles in µs.
    """
    if not (rate_hz > 0 and seconds > 0):
        raise ValueError(f"probe_wakeups needs rate_hz > 0 and seconds > 0, got {rate_hz}, {seconds}")
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(child, rate_hz, seconds, spin_us, settings), daemon=True)
    p.start()
    child.close()
    try:
        if not parent.poll(seconds + 30):
            raise TimeoutError("wake-up probe did not finish")
        return parent.recv()
    finally:
        p.join(5)
        if p.is_alive():
            p.kill()
