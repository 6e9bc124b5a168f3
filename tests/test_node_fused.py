"""The node's compiled per-frame path over a real pty: it is the path the node runs, it keeps
no memory per frame, and fixed mode steps through it on the tick."""

import os
import select
import threading
import tracemalloc

import pytest
from test_node import Dev, _cfg

from edgeliquid.node import framecodec as F
from edgeliquid.node import protocol as P
from edgeliquid.node import syscalls
from edgeliquid.node.config import load_config
from edgeliquid.node.loop import Node

VALUES = [0.01, 0.0, 0.02, 0.0]


def _drain(fd: int) -> int:
    n = 0
    while select.select([fd], [], [], 0)[0]:
        n += len(os.read(fd, 65536))
    return n


def test_ten_thousand_frames_take_the_compiled_path_and_keep_no_memory(tmp_path):
    dev = Dev()
    node = Node(load_config(_cfg(tmp_path, dev.pty.node_port, failsafe={"arm_after": 1})))
    frames = [P.encode_frame(P.SENSOR, (i + 1) & 0xFFFF, 1_000_000 + 1000 * i, VALUES) for i in range(12_500)]
    fd = dev.pty.fd
    try:
        assert node._connect()
        assert node.fused  # binary protocol, cpu policy, a port with a file descriptor

        def drive(a: int, b: int) -> None:
            for i in range(a, b):
                os.write(fd, frames[i])
                node._poll(2.0)  # the loop's own input path
                _drain(fd)

        drive(0, 2500)  # arm (the first frames go through the supervisor), warm every cache
        assert node.mode == P.MODE_RUN
        assert node.compiled_io == syscalls.AVAILABLE  # wait, read and write compiled too
        steps, rare, sent = node.stats.steps, node.rare_frames, int(node._st[F.ST_SENT])
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            used0 = tracemalloc.get_traced_memory()[0]
            drive(2500, 12_500)
            used1 = tracemalloc.get_traced_memory()[0]
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        assert node.stats.steps - steps == 10_000
        assert node.rare_frames == rare  # every one of them went through the compiled call
        if syscalls.AVAILABLE:  # ... and was written by it
            assert node._st[F.ST_SENT] - sent == 10_000
        assert node.rx.lost == node.rx.duplicates == node.rx.total_errors == 0
        growth = [
            s
            for s in after.compare_to(before, "lineno")
            if s.size_diff > 0 and "edgeliquid" in s.traceback[0].filename
        ]
        assert sum(s.size_diff for s in growth) < 2048, growth[:5]
        assert used1 - used0 < 64 * 1024  # the whole process, the test's own driving included
    finally:
        node._shutdown()
        dev.pty.close()


@pytest.mark.parametrize("io", ["compiled", "python"])
@pytest.mark.parametrize("mode", ["event", "fixed"])
def test_the_running_node_steps_through_the_compiled_call(tmp_path, mode, io, monkeypatch):
    """io "python": the wait, read and write in Python (where the compiled system calls do not
    fit the platform), the per-frame call still compiled."""
    if io == "python":
        monkeypatch.setattr(F, "frame_io_kernel", lambda policy: None)
        monkeypatch.setattr(F, "frame_tick_kernel", lambda policy: None)
    dev = Dev()
    cfg = load_config(_cfg(tmp_path, dev.pty.node_port, failsafe={"arm_after": 2}))
    cfg.mode = mode
    node = Node(cfg)
    th = threading.Thread(target=node.run, args=(60,), daemon=True)
    th.start()
    try:
        assert node.ready.wait(30)
        dev.pump(0.2)
        dev.send(P.HELLO, [4, 1, 100])
        dev.pump(0.1)
        t = 1_000_000
        for _ in range(150):
            t += 10_000
            dev.send(P.SENSOR, VALUES, t_us=t)
            dev.pump(0.01)
        assert node.fused and node.mode == P.MODE_RUN  # (a sensor timeout follows the last frame)
        dev.pump(0.3)
        acts = [p for p in dev.actuations() if p.ref_seq != 0]
        assert len(acts) >= (140 if mode == "event" else 100)
        assert node.rare_frames <= 5  # HELLO and the arming frames; every RUN cycle compiled
        if syscalls.AVAILABLE and io == "compiled":  # ... written by it (event: io, fixed: tick)
            assert node.compiled_io and node._st[F.ST_SENT] >= len(acts) - 5
        else:
            assert not node.compiled_io and node._st[F.ST_SENT] == 0
        assert node.stats.steps >= len(acts)
        # ACTUATE seqs count up by one per frame the node sent (shared with the Python path)
        seqs = [p.seq for p in dev.rx]
        assert all(b == (a + 1) & 0xFFFF for a, b in zip(seqs, seqs[1:]))
    finally:
        node.stop()
        th.join(10)
        dev.pty.close()
    statuses = dev.statuses()
    assert statuses[-1] == P.MODE_SAFE  # the orderly stop still ends in SAFE
