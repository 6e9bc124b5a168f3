"""The onboard node: a real-time sense -> infer -> actuate loop over a serial port.

port -> bytes -> frame -> packet -> inputs -> policy.step -> command -> frame -> port.

Modes: SAFE (fail-safe command, not armed) -> RUN after ``arm_after`` consecutive
valid SENSOR frames of the configured size; RUN -> HOLD when sensors go missing
or bad (the last good inputs are reused for ``hold_cycles`` cycles) -> SAFE.
Any I/O error closes the port (fail-safe first, if it can still be written),
then the node reopens it with exponential back-off and handshakes again.
Policy errors (a non-finite output) send the fail-safe command and reset the state.
SIGHUP loads the model file again off the loop (:class:`Reloader`) and swaps it in between
cycles; any failure keeps the running policy.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import serial

from ..errors import EdgeliquidError
from ..model.checks import MAX_FILE_BYTES
from ..runtime import kernels
from . import deadlines, realtime
from . import protocol as P
from .channels import ChannelMaps
from .config import NodeConfig
from .textproto import LineSplitter, decode_line, encode_line

log = logging.getLogger("edgeliquid.node.loop")

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
#: Time limit of one model load (validation child + in-process build); a first run on a
#: machine may compile the kernels, which takes tens of seconds on a small ARM board.
LOAD_TIMEOUT_S = 120.0


def _percentiles_us(ring: np.ndarray, n: int) -> dict[str, float]:
    n = min(n, LAT_RING)
    if n == 0:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan}
    a = ring[:n] / 1000.0
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


@dataclass
class NodeStats:
    """What the loop counts. Fault counters only count faults (see each comment)."""

    steps: int = 0
    deadline_misses: int = 0  # command-to-command intervals > deadlines.LATE_FACTOR periods
    ticks_missed: int = 0  # nominal periods without a command in those intervals
    failsafe_events: int = 0  # transitions to SAFE caused by a fault (not the orderly shutdown)
    shutdowns: int = 0  # transitions to SAFE at shutdown
    reconnects: int = 0
    policy_errors: int = 0
    reloads: int = 0
    reloads_rejected: int = 0
    hello_mismatch: int = 0
    wrong_size: int = 0
    out_of_range: int = 0  # SENSOR samples outside the config's inputs[].range
    miss_log: list = field(default_factory=list, repr=False)  # (monotonic s, ticks missed), first 100
    latency_ns: np.ndarray = field(default_factory=lambda: np.zeros(LAT_RING, np.int64), repr=False)
    n_lat: int = 0
    compute_ns: np.ndarray = field(default_factory=lambda: np.zeros(LAT_RING, np.int64), repr=False)
    n_compute: int = 0

    def add_latency(self, ns: int, compute_ns: int | None = None) -> None:
        """One command: frame ready -> written, and cycle start -> written (default: the same)."""
        self.latency_ns[self.n_lat % LAT_RING] = ns
        self.n_lat += 1
        self.compute_ns[self.n_compute % LAT_RING] = ns if compute_ns is None else compute_ns
        self.n_compute += 1

    def latency_us(self) -> dict[str, float]:
        """Sensor-to-command: frame ready -> command written (fixed mode: includes the wait
        for the tick)."""
        return _percentiles_us(self.latency_ns, self.n_lat)

    def compute_latency_us(self) -> dict[str, float]:
        """Cycle start (fixed mode: the tick; event mode: the frame ready) -> command written."""
        return _percentiles_us(self.compute_ns, self.n_compute)


def normalization_problem(cfg: NodeConfig, metadata: dict[str, str]) -> str | None:
    """Why the config's input scale/offset differ from the model's recorded normalisation
    (None when they agree or the model records none).

    A policy fed differently normalised inputs than it was trained on misbehaves without
    any error; this is the one check that can catch it before the robot moves.
    """
    raw = metadata.get("input_normalization")
    if not raw:
        return None
    try:
        norm = json.loads(raw)
        off, scale = np.asarray(norm["offset"], float), np.asarray(norm["scale"], float)
    except (ValueError, KeyError, TypeError):
        return f"model metadata input_normalization is not valid JSON {{offset, scale}}: {raw[:200]!r}"
    got_off = np.array([c.offset for c in cfg.inputs])
    got_scale = np.array([c.scale for c in cfg.inputs])
    if (
        off.shape != got_off.shape
        or scale.shape != got_scale.shape
        or not (np.allclose(off, got_off) and np.allclose(scale, got_scale))
    ):
        return (
            f"{cfg.source}: inputs offset/scale {got_off.tolist()} / {got_scale.tolist()} differ from "
            f"the model's training normalisation {off.ravel()[:16].tolist()} / {scale.ravel()[:16].tolist()}"
        )
    return None


def check_normalization(cfg: NodeConfig, metadata: dict[str, str]) -> bool:
    """Warn when the config's input scale/offset differ from the model's normalisation."""
    problem = normalization_problem(cfg, metadata)
    if problem:
        log.warning("%s", problem)
    return problem is None


def size_problem(cfg: NodeConfig, n_inputs: int, n_outputs: int) -> str | None:
    """Why a model with these sizes cannot serve this config (None when it can)."""
    n_in, n_out = len(cfg.inputs), len(cfg.outputs)
    if (n_inputs, n_outputs) != (n_in, n_out):
        return (
            f"{cfg.source}: config has {n_in} inputs / {n_out} outputs but model {cfg.model} "
            f"has {n_inputs} / {n_outputs}"
        )
    return None


# ------------------------------------------------------------------ bounded model loads


def _validate_child() -> None:
    """Entry point of the validation subprocess: model bytes on stdin, one JSON line out.

    Loads the file exactly as the node would (read, check, build, warm up) and times a few
    steps, so that a file that hangs, explodes or raises anything does so here, where the
    parent can kill it, and never inside the control loop.
    """
    import ctypes
    import resource

    try:  # die with the node even if it is killed with SIGKILL (PR_SET_PDEATHSIG)
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != int(sys.argv[5]):  # the parent died before prctl
        os._exit(3)
    # Bounded memory and CPU time too: a hostile file must not push the robot's computer
    # into swap, and an orphan must not spin forever.
    for res, value in ((resource.RLIMIT_AS, int(sys.argv[3])), (resource.RLIMIT_CPU, int(sys.argv[4]))):
        try:
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError):
            pass
    source, backend = sys.argv[1], sys.argv[2]
    try:
        from edgeliquid.model.file import read_bytes
        from edgeliquid.runtime.policy import from_model

        data = sys.stdin.buffer.read()
        policy = from_model(read_bytes(data, source), backend=backend)
        x = np.zeros(policy.n_inputs)
        best, spent = math.inf, 0.0
        for _ in range(5):  # the fastest of a few steps (a slow model: one is enough)
            t0 = time.perf_counter()
            policy.step(x, 1.0)
            best = min(best, time.perf_counter() - t0)
            spent += best
            if spent > 0.5:
                break
        policy.reset()
        out = {
            "n_inputs": policy.n_inputs,
            "n_outputs": policy.n_outputs,
            "step_s": best,
            "metadata": dict(policy.metadata),
        }
    except BaseException as exc:  # noqa: BLE001 - anything at all is a rejection, on one line
        msg = str(exc) if isinstance(exc, EdgeliquidError) else f"{type(exc).__name__}: {exc}"
        sys.stderr.write("\n" + " ".join(msg.split())[:300] + "\n")
        sys.stderr.flush()
        os._exit(2)
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)


def child_memory_bytes() -> int:
    """Address-space limit of the validation child: half the RAM, within [1, 6] GiB (the child
    loading the shipped model peaks at ~0.5 GB of address space, numba included)."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        ram = 8 << 30
    return max(1 << 30, min(6 << 30, ram // 2))


def read_model_bytes(path: str | os.PathLike) -> bytes:
    """The model file's bytes, refusing a file over :data:`MAX_FILE_BYTES` before reading it."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise EdgeliquidError(f"{path}: model file of {size} bytes exceeds {MAX_FILE_BYTES}")
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise EdgeliquidError(f"{path}: cannot read model file ({exc.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise EdgeliquidError(f"{path}: model file exceeds {MAX_FILE_BYTES} bytes")
    return data


class ChildValidation:
    """Validate model bytes in a subprocess with a time and memory limit (see ``_validate_child``).

    ``run()`` blocks the calling thread (never the control loop's); ``kill()`` may be called
    from any thread and ends a validation in progress at once.
    """

    def __init__(self, source: str, backend: str, timeout_s: float):
        self.source, self.backend, self.timeout_s = source, backend, timeout_s
        self._proc: subprocess.Popen | None = None
        self._killed = False

    def run(self, data: bytes) -> dict:
        """The child's report (sizes, step time, metadata); raises EdgeliquidError on rejection."""
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [
            sys.executable,
            "-c",
            "from edgeliquid.node.loop import _validate_child; _validate_child()",
            self.source,
            self.backend,
            str(child_memory_bytes()),
            str(int(self.timeout_s) + 2),
            str(os.getpid()),
        ]
        if self._killed:
            raise EdgeliquidError("validation cancelled")
        # stdin/stdout/stderr pipes and no preexec_fn: CPython uses vfork, so a big process
        # does not copy its page tables (a fork stalls the calling process for milliseconds).
        self._proc = proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        if self._killed:  # kill() ran while the child was starting
            proc.kill()
        try:
            out, err = proc.communicate(data, timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise EdgeliquidError(
                f"{self.source}: loading took longer than {self.timeout_s:g} s (killed)"
            ) from None
        finally:
            self._proc = None
        if self._killed:
            raise EdgeliquidError("validation cancelled")
        if proc.returncode != 0:
            lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
            why = lines[-1][:300] if lines else f"exit status {proc.returncode}"
            if proc.returncode < 0:
                why = f"killed by signal {-proc.returncode} (time or memory limit); {why}"
            raise EdgeliquidError(why if why.startswith(self.source) else f"{self.source}: {why}")
        try:
            report = json.loads(out.decode().strip().splitlines()[-1])
            int(report["n_inputs"]), int(report["n_outputs"]), float(report["step_s"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise EdgeliquidError(f"{self.source}: validation produced no report") from None
        return report

    def kill(self) -> None:
        self._killed = True
        proc = self._proc
        if proc is not None:
            try:
                proc.kill()
            except OSError:
                pass


def load_policy_interruptible(cfg: NodeConfig, stop: threading.Event, timeout_s: float = LOAD_TIMEOUT_S):
    """Load ``cfg.model`` in a worker thread; None if ``stop`` is set first (a signal).

    The calling (main) thread only waits, so SIGINT/SIGTERM handlers run at once even while
    numba loads or compiles kernels (they release the GIL), and a load that takes longer than
    ``timeout_s`` is an error rather than a hang.
    """
    from ..runtime.policy import load

    box: dict = {}

    def work() -> None:
        try:
            box["policy"] = load(cfg.model, backend=cfg.backend)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    th = threading.Thread(target=work, name="edgeliquid-load", daemon=True)
    th.start()
    end = time.monotonic() + timeout_s
    while th.is_alive():
        if stop.wait(0.05):
            return None
        if time.monotonic() > end:
            raise EdgeliquidError(f"{cfg.model}: loading took longer than {timeout_s:g} s")
    if stop.is_set():
        return None
    if "error" in box:
        exc = box["error"]
        if isinstance(exc, EdgeliquidError):
            raise exc
        raise EdgeliquidError(f"{cfg.model}: cannot load model ({type(exc).__name__}: {exc})") from None
    return box["policy"]


def check_deployment(cfg: NodeConfig, timeout_s: float = LOAD_TIMEOUT_S) -> str:
    """Validate the config and its model against each other without opening the port.

    Loads the model in a time-limited child (as a reload would), then compares sizes and the
    input normalisation. Returns a one-line summary; raises EdgeliquidError naming the problem.
    """
    data = read_model_bytes(cfg.model)
    report = ChildValidation(str(cfg.model), cfg.backend, timeout_s).run(data)
    problems = [
        p
        for p in (
            size_problem(cfg, report["n_inputs"], report["n_outputs"]),
            normalization_problem(cfg, report.get("metadata") or {}),
        )
        if p
    ]
    if problems:
        raise EdgeliquidError("; ".join(problems))
    period_s = 1.0 / cfg.rate_hz
    if report["step_s"] > period_s:
        raise EdgeliquidError(
            f"{cfg.model}: one step takes {report['step_s'] * 1e3:.3g} ms, longer than the "
            f"{period_s * 1e3:.3g} ms period of {cfg.source}: loop.rate_hz"
        )
    return (
        f"ok: {cfg.source} and {cfg.model} agree: {report['n_inputs']} inputs, "
        f"{report['n_outputs']} outputs, backend {cfg.backend}, step {report['step_s'] * 1e6:.0f} µs "
        f"(period {period_s * 1e6:.0f} µs)"
    )


class Reloader:
    """Loads a new policy off the control loop; the loop picks the result up between cycles.

    A persistent worker thread (created before the loop takes realtime priority, so it and
    its children keep the default scheduling, at a lower nice level) first validates the
    file's bytes in a child process with a time and memory limit (anything can happen
    there: a hang, an allocation bomb, any exception), then builds the policy from the same
    bytes in-process, and warms the fused kernel on copies. ``result()`` hands over either
    ``(policy, report)`` or an error message; the running policy is never touched here.
    """

    def __init__(self, cfg: NodeConfig, chan: np.ndarray, timeout_s: float = LOAD_TIMEOUT_S):
        self.cfg, self.timeout_s = cfg, timeout_s
        self._chan = chan.copy()
        self._go = threading.Event()
        self._lock = threading.Lock()
        self._results: list = []
        self._closed = False
        self._child: ChildValidation | None = None
        self._thread: threading.Thread | None = None

    def start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="edgeliquid-reload", daemon=True)
            self._thread.start()

    def request(self) -> None:
        self.start_thread()
        self._go.set()

    def result(self):
        """The next finished reload (``(policy, report)`` or ``str`` error), or None."""
        if not self._results:  # the loop's per-cycle cost: one list check
            return None
        with self._lock:
            return self._results.pop(0)

    def close(self) -> None:
        self._closed = True
        child = self._child
        if child is not None:
            child.kill()
        self._go.set()

    def _work(self) -> None:
        try:  # nice 10 for this thread and the children it starts (Linux: per thread)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (OSError, AttributeError):
            pass
        while True:
            self._go.wait()
            if self._closed:
                return
            self._go.clear()
            try:
                out = self._load_once()
            except BaseException as exc:  # noqa: BLE001 - any failure is a rejection
                why = str(exc) if isinstance(exc, EdgeliquidError) else f"{type(exc).__name__}: {exc}"
                out = " ".join(why.split())[:400]
            if self._closed:
                return
            with self._lock:
                self._results.append(out)

    def _load_once(self):
        from ..model.file import read_bytes
        from ..runtime.policy import from_model

        cfg = self.cfg
        end = time.monotonic() + self.timeout_s
        data = read_model_bytes(cfg.model)
        self._child = ChildValidation(str(cfg.model), cfg.backend, self.timeout_s)
        try:
            report = self._child.run(data)
        finally:
            self._child = None
        problem = size_problem(cfg, report["n_inputs"], report["n_outputs"]) or normalization_problem(
            cfg, report.get("metadata") or {}
        )
        if problem:
            return problem
        if report["step_s"] > 1.0 / cfg.rate_hz:
            return (
                f"{cfg.model}: one step takes {report['step_s'] * 1e3:.3g} ms, longer than the loop "
                f"period ({1e3 / cfg.rate_hz:.3g} ms)"
            )
        # Same bytes as validated (the file may change again meanwhile). This part holds the
        # GIL in short slices: ask for a switch every 0.5 ms (default 5 ms) so the loop thread
        # gets it back quickly. Its C calls are short because the model passed the step-time
        # check, which bounds its size.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, 0.0005))
        try:
            policy = from_model(read_bytes(data, str(cfg.model)), backend=cfg.backend)
            warm_fused(policy, self._chan)
        finally:
            sys.setswitchinterval(switch)
        if (policy.n_inputs, policy.n_outputs) != (report["n_inputs"], report["n_outputs"]):
            return f"{cfg.model}: the file changed during the reload"
        if time.monotonic() > end:
            return f"{cfg.model}: loading took longer than {self.timeout_s:g} s"
        return policy, report


def fast_arrays(policy):
    """The cpu kernel's arrays for the fused fast path, or None (numpy path)."""
    if policy.backend == "cpu" and policy.batch is None:
        return policy._fp, policy._ip, policy._work
    return None


def warm_fused(policy, chan: np.ndarray) -> None:
    """Compile/load the fused kernel now, on copies, so the first tick pays no JIT."""
    fast = fast_arrays(policy)
    if fast is not None:
        fp, ip, work = fast
        kernels.control_step(
            np.zeros(policy.n_inputs),
            1.0,
            0.0,
            chan.copy(),
            np.zeros(policy.n_inputs, policy.dtype),
            fp,
            ip,
            work.copy(),
        )


def make_recorder(cfg: NodeConfig, policy):
    """The flight recorder for ``cfg.telemetry`` (model sha256 and config in its metadata)."""
    import dataclasses
    import hashlib

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
        flush_s=t.get("flush_s", 1.0),
    )


def open_port(cfg: NodeConfig) -> serial.SerialBase:
    """Open the configured port by name or URL (pty paths, socket://, loop://, spy://...)."""
    kwargs = {"baudrate": cfg.baudrate, "timeout": 0, "write_timeout": 1.0}
    if cfg.exclusive and "://" not in cfg.port:
        kwargs["exclusive"] = True
    return serial.serial_for_url(cfg.port, **kwargs)


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
    """The loop. ``run()`` until ``stop()`` (or SIGINT/SIGTERM via :meth:`install_signals`)."""

    def __init__(self, cfg: NodeConfig, policy=None):
        from ..runtime.policy import load

        self.cfg = cfg
        self.policy = policy if policy is not None else load(cfg.model, backend=cfg.backend)
        n_in = len(cfg.inputs)
        problem = size_problem(cfg, self.policy.n_inputs, self.policy.n_outputs)
        if problem:
            raise EdgeliquidError(problem)
        self.maps = ChannelMaps(cfg.inputs, cfg.outputs, self.policy.dtype)
        check_normalization(cfg, self.policy.metadata)
        self._bind_policy()
        warm_fused(self.policy, self.maps.chan)
        self.reloader = Reloader(cfg, self.maps.chan)
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
        self._last_write_ns = 0  # the previous policy command's write time (deadline misses)
        self._cycle_ns = 0  # the current cycle's start (fixed mode: the tick)
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

    def _set_mode(self, mode: int, reason: int) -> None:
        if mode != self.mode or reason != self.reason:
            if mode == P.MODE_SAFE and self.mode != P.MODE_SAFE:
                if reason == R_SHUTDOWN:
                    self.stats.shutdowns += 1
                else:
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
        if hello_sizes(vals) != (n_in, n_out):
            self._hello_ok = False
            self.stats.hello_mismatch += 1
            # Any float can arrive here (NaN, Inf, 4.9, -1, 1e38): format, never convert.
            got = [f"{v:.9g}" for v in vals[:2]] + ["?", "?"]
            self._event(
                f"HELLO size mismatch: device has {got[0]} sensors / {got[1]} actuators, "
                f"config expects {n_in} / {n_out}; refusing to arm",
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
        self._yview = self.policy._y
        self._fast = fast_arrays(self.policy)

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

    def _connect(self, deadline_ns: int | None = None, fail_fast: bool = False) -> bool:
        """Open the port and handshake, retrying with back-off until stopped or ``deadline_ns``
        (False then). ``fail_fast``: the first failure raises EdgeliquidError instead."""
        delay = self.cfg.reconnect_min_s
        while not self._stop and (deadline_ns is None or time.monotonic_ns() < deadline_ns):
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
        if self.port is not None:
            try:
                self.port.close()
            except Exception:  # closing a vanished device can raise anything
                pass
            self.port = None

    def _reload_done(self, out) -> None:
        """Swap in a finished reload between cycles, or log why the old policy stays."""
        if isinstance(out, str):
            self.stats.reloads_rejected += 1
            self._event(
                f"model reload rejected, keeping the old model: {out}", logging.ERROR, kind="reload_rejected"
            )
            return
        new, report = out
        self.policy = new
        self._bind_policy()
        self._reset_pending = True  # a new model starts from a zero state
        self.stats.reloads += 1
        self._event(
            f"model reloaded from {self.cfg.model} (step {report['step_s'] * 1e6:.0f} µs)",
            logging.INFO,
            kind="reload",
        )

    def stats_line(self) -> str:
        lat = self.stats.latency_us()
        errs = " ".join(f"{k}={v}" for k, v in self.rx.errors.items() if v)
        return (
            f"steps={self.stats.steps} latency_us p50={lat['p50']:.0f} p99={lat['p99']:.0f} "
            f"max={lat['max']:.0f} misses={self.stats.deadline_misses} lost={self.rx.lost} "
            f"dup={self.rx.duplicates} errors[{errs or 'none'}] clipped={self.maps.clipped} "
            f"out_of_range={self.stats.out_of_range} mode={MODE_NAMES[self.mode]}"
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
                    if self.cfg.mode == "fixed":
                        # Sleep only until spin_us before the tick, then poll without sleeping:
                        # on a VM an idle vCPU can take milliseconds to wake (halt + reschedule).
                        self._poll(realtime.tick_wait_s(next_tick, now, self._spin_s))
                        now = time.monotonic_ns()
                        if now >= next_tick:
                            self._tick(now)
                            # Overran: late ticks are skipped, never a burst; the misses are
                            # counted from the command write times (_finish).
                            next_tick, _ = realtime.next_tick_after(now, next_tick, self._period_ns)
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
                    self._connect(t_end)
        finally:
            self._shutdown()
            self.reloader.close()
            self._held.release()
        if self.recorder is not None:
            self.recorder.close()
        log.info("final: %s", self.stats_line())
        return self.stats

    def _tick(self, now: int) -> None:
        """Fixed mode: one cycle on the newest frame since the last tick."""
        self._cycle_ns = now
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
