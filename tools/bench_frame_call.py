#!/usr/bin/env python3
"""What the node's one compiled call per frame costs hot, and right after a system call.

The node's event loop is select -> read -> compiled call -> write. On some virtual machines
every system call leaves the CPU's translation caches (TLB) and predictors cold, so the code
that runs right after one pays for every page it touches again; `tools/bench_loop.py` shows the
result as a compiled call far slower in the loop than in a tight loop. This tool measures it
directly, with the node's own call on the shipped policy and a real SENSOR frame:

* hot: the call back to back;
* after Python work: 0.5 ms of pure-Python busy work (no system call) before each call;
* after system calls: 0.5 ms of `select(..., 0)` calls before each call (what the loop does
  between frames while it polls);
* after a sleep: 0.5 ms asleep before each call;

and, for scale, the same for `time.monotonic_ns()` (vDSO, no system call) and an empty numba
function of one array argument. On a machine where system calls do not flush these caches the
"after system calls" column stays close to "hot".

    python tools/bench_frame_call.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import tempfile
import time
from pathlib import Path

import numpy as np

N_HOT, N_COLD, GAP_US = 20000, 2000, 500


def _node_call():
    """The running node's compiled call and a function that feeds it one fresh SENSOR frame."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_node import Dev, _cfg

    from edgeliquid.node import framecodec as F
    from edgeliquid.node import protocol as P
    from edgeliquid.node.config import load_config
    from edgeliquid.node.loop import Node

    dev = Dev()
    node = Node(load_config(_cfg(Path(tempfile.mkdtemp()), dev.pty.node_port)))
    call, args = node._kcall, node._kargs
    frame = P.encode_frame(P.SENSOR, 1, 1000, [0.01, 0.0, 0.02, 0.0])
    n = len(frame)
    buf, st = node.frames.buf, node.frames.st
    buf[:n] = np.frombuffer(frame, np.uint8)

    def one_frame():
        st[F.ST_LAST_SEQ] = -1  # a fresh sequence every time: the frame is always stepped
        st[F.ST_POS] = 0
        return call(F.OP_EVENT, 0, n, 0, P.MODE_RUN, *args)

    code = one_frame() & 0xFF
    if code != F.R_STEP_END:
        raise SystemExit(f"the frame did not take the compiled step path (code {code})")
    return one_frame, dev


def _empty_numba():
    import numba

    @numba.njit
    def f(a):
        return a.shape[0]

    a = np.zeros(4)
    f(a)
    entry = f.overloads[f.signatures[0]].entry_point
    return lambda: entry(a)


def _gap(kind: str, fd: int):
    end = time.perf_counter_ns() + GAP_US * 1000
    if kind == "python":
        while time.perf_counter_ns() < end:
            pass
    elif kind == "syscalls":
        while time.perf_counter_ns() < end:
            select.select([fd], (), (), 0)
    elif kind == "sleep":
        time.sleep(GAP_US / 1e6)


def _timed(fn, kind: str, fd: int) -> dict:
    n = N_HOT if kind == "hot" else N_COLD
    ts = np.empty(n, np.int64)
    for i in range(n):
        if kind != "hot":
            _gap(kind, fd)
        t0 = time.perf_counter_ns()
        fn()
        ts[i] = time.perf_counter_ns() - t0
    us = ts / 1000.0
    return {"p50": float(np.percentile(us, 50)), "p99": float(np.percentile(us, 99))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    args = ap.parse_args()
    frame, dev = _node_call()
    r, w = os.pipe()
    rows = {
        "node frame call": frame,
        "empty numba call": _empty_numba(),
        "time.monotonic_ns": time.monotonic_ns,
    }
    kinds = ("hot", "python", "syscalls", "sleep")
    out = {name: {k: _timed(fn, k, r) for k in kinds} for name, fn in rows.items()}
    os.close(r)
    os.close(w)
    dev.pty.close()
    print(f"p50 µs (p99), each after {GAP_US} µs of: nothing (hot), Python, select() calls, sleep")
    print(f"  {'':20} " + " ".join(f"{k:>16}" for k in kinds))
    for name, res in out.items():
        cells = " ".join(f"{res[k]['p50']:7.2f} ({res[k]['p99']:6.1f})" for k in kinds)
        print(f"  {name:20} {cells}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
