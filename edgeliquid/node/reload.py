"""Model loads that cannot hurt the loop: a validation child with time and memory limits, the
SIGHUP :class:`Reloader` (validate, then build off the loop), an interruptible first load and
``run --check`` (:func:`check_deployment`).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import EdgeliquidError
from ..model.checks import MAX_FILE_BYTES
from .config import NodeConfig
from .deploy import normalization_problem, size_problem, stability_kwargs
from .fastpath import warm_fused

#: Time limit of one model load (validation child + in-process build); a first run on a
#: machine may compile the kernels, which takes tens of seconds on a small ARM board.
LOAD_TIMEOUT_S = 120.0


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
    nominal = float(sys.argv[6]) if sys.argv[6] else None  # refuse a solver unstable at it
    try:
        from edgeliquid.model.file import read_bytes
        from edgeliquid.runtime.policy import from_model

        data = sys.stdin.buffer.read()
        policy = from_model(read_bytes(data, source), backend=backend, nominal_elapsed=nominal)
        x = np.zeros(policy.n_inputs)
        e = min(1.0, policy.max_elapsed)  # timing only: an allowed unstable solver must not overflow here
        best, spent = math.inf, 0.0
        for _ in range(5):  # the fastest of a few steps (a slow model: one is enough)
            t0 = time.perf_counter()
            policy.step(x, e)
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
            "max_elapsed": policy.max_elapsed if math.isfinite(policy.max_elapsed) else None,
        }
    except BaseException as exc:  # noqa: BLE001 - anything at all is a rejection, on one line
        msg = str(exc) if isinstance(exc, EdgeliquidError) else f"{type(exc).__name__}: {exc}"
        sys.stderr.write("\n" + " ".join(msg.split())[:600] + "\n")
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

    def __init__(self, source: str, backend: str, timeout_s: float, nominal_elapsed: float | None = None):
        self.source, self.backend, self.timeout_s = source, backend, timeout_s
        self.nominal_elapsed = nominal_elapsed  # see runtime.policy.load
        self._proc: subprocess.Popen | None = None
        self._killed = False

    def run(self, data: bytes) -> dict:
        """The child's report (sizes, step time, metadata); raises EdgeliquidError on rejection."""
        root = str(Path(__file__).resolve().parents[2])  # the folder holding the package
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [
            sys.executable,
            "-c",
            "from edgeliquid.node.reload import _validate_child; _validate_child()",
            self.source,
            self.backend,
            str(child_memory_bytes()),
            str(int(self.timeout_s) + 2),
            str(os.getpid()),
            "" if self.nominal_elapsed is None else repr(float(self.nominal_elapsed)),
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
            why = lines[-1][:600] if lines else f"exit status {proc.returncode}"
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
            box["policy"] = load(cfg.model, backend=cfg.backend, **stability_kwargs(cfg))
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
    report = ChildValidation(str(cfg.model), cfg.backend, timeout_s, **stability_kwargs(cfg)).run(data)
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
    bound = report.get("max_elapsed")
    unstable = (
        f"; solver unstable at elapsed {cfg.nominal_elapsed:.4g} > {bound:.4g}, allowed (allow_unstable)"
        if bound is not None and cfg.nominal_elapsed > bound
        else ""
    )
    return (
        f"ok: {cfg.source} and {cfg.model} agree: {report['n_inputs']} inputs, "
        f"{report['n_outputs']} outputs, backend {cfg.backend}, step {report['step_s'] * 1e6:.0f} µs "
        f"(period {period_s * 1e6:.0f} µs){unstable}"
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

    @property
    def native_id(self) -> int | None:
        """The reloader thread's OS task id (None before it starts)."""
        return None if self._thread is None else self._thread.native_id

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
                out = " ".join(why.split())[:600]
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
        self._child = ChildValidation(str(cfg.model), cfg.backend, self.timeout_s, **stability_kwargs(cfg))
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
            model = read_bytes(data, str(cfg.model))
            policy = from_model(model, backend=cfg.backend, **stability_kwargs(cfg))
            warm_fused(policy, self._chan)
        finally:
            sys.setswitchinterval(switch)
        if (policy.n_inputs, policy.n_outputs) != (report["n_inputs"], report["n_outputs"]):
            return f"{cfg.model}: the file changed during the reload"
        if time.monotonic() > end:
            return f"{cfg.model}: loading took longer than {self.timeout_s:g} s"
        return policy, report
