"""The flight recorder's writer process: shared-memory ring, drops, dies with the node, crashes."""

import mmap
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from edgeliquid.errors import ConfigError
from edgeliquid.node.config import parse_config
from edgeliquid.node.recorder import FlightRecorder, read_recording
from edgeliquid.node.recorder_process import ProcessRecorder

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "cartpole_demo.yaml"


def _step(rec, k: int) -> None:
    x = (0.001 * k, -0.5 * k)
    rec.record_step(
        k, k * 1000, 1.0 + k, k % 3, k == 1, x, (k / 7,), (k / 3,), (k, k + 1, k + 2, k + 3, k + 4)
    )


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaped yet (a container's pid 1 may not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_every_row_written_is_read_back_exactly(tmp_path):
    path = tmp_path / "p.mcap"
    # float64 steps: the protobuf keeps every bit, so the values compare exactly
    rec = ProcessRecorder(path, 2, 1, 1, {"model": "m", "dtype": "float64"}).start()
    for k in range(1, 20_001):
        _step(rec, k)
        if k == 10_000:
            rec.event("reset", "half way\nsecond line")
    rec.close()
    assert _gone(rec.pid) and rec.dropped == 0 and rec.written == 20_000 and rec.write_errors == 0
    assert rec.files == [path]
    r = read_recording(path)
    assert not r["truncated"] and r["metadata"]["model"] == "m"
    steps = r["steps"]
    assert [s["seq"] for s in steps] == list(range(1, 20_001))
    for s in (steps[0], steps[12_345], steps[-1]):
        k = s["seq"]
        assert s["x"] == [0.001 * k, -0.5 * k] and s["y"] == [k / 7] and s["u"] == [k / 3]
        assert (s["elapsed"], s["mode"], s["reset"], s["t_us"]) == (1.0 + k, k % 3, int(k == 1), k * 1000)
        assert (s["t_ready_ns"], s["t_written_ns"]) == (k, k + 4)
    assert [(e["kind"], e["text"]) for e in r["events"]] == [("reset", "half way\nsecond line")]


def test_a_stalled_writer_costs_drops_never_waits(tmp_path):
    path = tmp_path / "stall.mcap"
    rec = ProcessRecorder(path, 2, 1, 1, {}, capacity=1024).start()
    assert rec.wait_ready()
    os.kill(rec.pid, signal.SIGSTOP)
    try:
        t = time.perf_counter()
        for k in range(1, 3001):
            _step(rec, k)
        spent = time.perf_counter() - t
    finally:
        os.kill(rec.pid, signal.SIGCONT)
    rec.close()
    # the ring held the first 1024; the rest were dropped and counted, the loop never blocked
    assert spent < 5.0
    assert rec.dropped == 3000 - 1024 and rec.written == 1024
    assert [s["seq"] for s in read_recording(path)["steps"]] == list(range(1, 1025))


# A node stand-in: records at ~1 kHz, publishes (steps so far, writer pid) in a shared file.
NODE = textwrap.dedent(
    """
    import mmap, struct, sys, time
    from edgeliquid.node.recorder_process import ProcessRecorder

    f = open(sys.argv[2], "r+b")
    shared = mmap.mmap(f.fileno(), 16)
    rec = ProcessRecorder(sys.argv[1], 2, 1, 1, {"model": "m"}, flush_s=0.2).start()
    k = 0
    while True:
        k += 1
        rec.record_step(k, k, 1.0, 0, k == 1, (0.1, 0.2), (0.3,), (0.4,), (k, k, k, k, k))
        shared[:16] = struct.pack("<qq", k, rec.pid)
        if k == 1:
            print("recording", flush=True)
        time.sleep(0.001)
    """
)


def _node(tmp_path):
    out, progress = tmp_path / "node.mcap", tmp_path / "progress"
    progress.write_bytes(bytes(16))
    proc = subprocess.Popen(
        [sys.executable, "-c", NODE, str(out), str(progress)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline().strip() == "recording"
    f = open(progress, "rb")
    return proc, out, mmap.mmap(f.fileno(), 16, access=mmap.ACCESS_READ)


def test_the_writer_finishes_the_file_and_exits_when_the_node_is_killed(tmp_path):
    proc, out, shared = _node(tmp_path)
    try:
        time.sleep(1.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        k, pid = struct.unpack("<qq", shared[:16])
        t_end = time.monotonic() + 60
        while not _gone(pid) and time.monotonic() < t_end:
            time.sleep(0.05)
        assert _gone(pid), "the writer outlived the node"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # everything the node had handed over was in the ring: drained, and the file closed
    r = read_recording(out)
    assert not r["truncated"]
    assert [s["seq"] for s in r["steps"]] == list(range(1, len(r["steps"]) + 1)) and len(r["steps"]) >= k


def test_a_crash_of_node_and_writer_leaves_a_readable_file(tmp_path):
    proc, out, shared = _node(tmp_path)
    try:
        time.sleep(1.5)
        os.killpg(proc.pid, signal.SIGKILL)  # both at once: a power cut, as far as the file knows
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    k, _ = struct.unpack("<qq", shared[:16])
    r = read_recording(out)
    assert r["truncated"] and r["metadata"]["model"] == "m"
    n = len(r["steps"])
    assert 0 < n <= k and [s["seq"] for s in r["steps"]] == list(range(1, n + 1))


def test_the_writer_is_chosen_in_the_config():
    data = yaml.safe_load(DEMO.read_text())
    data["telemetry"] = {"path": "r.mcap"}
    assert parse_config(data, "robot.yaml").telemetry["writer"] == "process"
    data["telemetry"]["writer"] = "process"
    assert parse_config(data, "robot.yaml").telemetry["writer"] == "process"
    data["telemetry"]["writer"] = "fork"
    with pytest.raises(ConfigError, match="telemetry.writer"):
        parse_config(data, "robot.yaml")


def test_make_recorder_builds_the_configured_writer(tmp_path):
    from edgeliquid.node.loop import make_recorder
    from edgeliquid.runtime import load

    data = yaml.safe_load(DEMO.read_text())
    for writer, cls in (("process", ProcessRecorder), ("thread", FlightRecorder)):
        data["telemetry"] = {"path": str(tmp_path / f"{writer}.mcap"), "writer": writer}
        cfg = parse_config(data, "robot.yaml", base=DEMO.parent)
        rec = make_recorder(cfg, load(cfg.model))
        assert type(rec) is cls
