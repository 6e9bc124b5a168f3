"""Fixed mode tells apart why a tick sent no command: the loop was late (the node's and the
machine's share, counted like `profile --wakeup` counts the floor) or no fresh frame had come
(the device's timing). A pinned loop keeps its helper tasks off its CPU."""

import os
import threading

import pytest
from test_node import Dev, _cfg

from edgeliquid.node import protocol as P
from edgeliquid.node.config import load_config
from edgeliquid.node.loop import Node

VALUES = [0.01, 0.0, 0.02, 0.0]


def test_ticks_without_a_fresh_frame_are_counted_apart_from_late_ticks(tmp_path):
    dev = Dev()
    cfg = load_config(_cfg(tmp_path, dev.pty.node_port, failsafe={"arm_after": 2}))
    cfg.mode = "fixed"
    node = Node(cfg)
    th = threading.Thread(target=node.run, args=(60,), daemon=True)
    th.start()
    try:
        assert node.ready.wait(30)
        dev.pump(0.2)
        dev.send(P.HELLO, [4, 1, int(cfg.rate_hz)])
        dev.pump(0.1)
        period_s = 1.0 / cfg.rate_hz
        t = 1_000_000
        before = node.stats.ticks_no_sample
        steps0 = node.stats.steps
        for _ in range(60):  # one frame every second tick: about half the ticks find nothing new
            t += int(2e6 * period_s)
            dev.send(P.SENSOR, VALUES, t_us=t)
            dev.pump(2 * period_s)
        st = node.stats
        steps = st.steps - steps0
        no_sample = st.ticks_no_sample - before
        assert node.fused and node.mode == P.MODE_RUN
        assert 40 <= steps <= 60
        # ~60 ticks had nothing new (more if the pump ran long); a wrong count (0, or every tick) fails
        assert 40 <= no_sample <= 60 + 2 * st.ticks_late + 40
        # every command gap is explained by a tick without a frame or a late tick
        assert st.ticks_missed <= no_sample + st.ticks_late + 5
        assert f"ticks_late={st.ticks_late}" in node.stats_line()
    finally:
        node.stop()
        th.join(10)
        dev.pty.close()


def test_event_mode_counts_no_ticks(tmp_path):
    dev = Dev()
    cfg = load_config(_cfg(tmp_path, dev.pty.node_port, failsafe={"arm_after": 2}))
    node = Node(cfg)
    th = threading.Thread(target=node.run, args=(60,), daemon=True)
    th.start()
    try:
        assert node.ready.wait(30)
        dev.pump(0.1)
        dev.send(P.HELLO, [4, 1, int(cfg.rate_hz)])
        t = 1_000_000
        for _ in range(20):
            t += 10_000
            dev.send(P.SENSOR, VALUES, t_us=t)
            dev.pump(0.01)
        assert node.stats.steps >= 15
        assert node.stats.ticks_late == node.stats.ticks_no_sample == 0
        assert "ticks_late" not in node.stats_line()
    finally:
        node.stop()
        th.join(10)
        dev.pty.close()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs: nothing to move to on one")
@pytest.mark.parametrize("writer", ["process", "thread"])
def test_a_pinned_loop_keeps_the_recorder_and_reloader_off_its_cpu(tmp_path, writer):
    dev = Dev()
    telemetry = {"path": str(tmp_path / "r.mcap"), "writer": writer}
    cfg = load_config(_cfg(tmp_path, dev.pty.node_port, telemetry=telemetry))
    cfg.cpu = 1
    node = Node(cfg)
    th = threading.Thread(target=node.run, args=(60,), daemon=True)
    th.start()
    try:
        assert node.ready.wait(60)
        tasks = node._helper_tasks()
        assert len(tasks) == 2  # the writer and the reloader
        for tid in tasks:
            assert 1 not in os.sched_getaffinity(tid)
        assert os.sched_getaffinity(th.native_id) == {1}  # the loop itself is where it was put
    finally:
        node.stop()
        th.join(10)
        dev.pty.close()
