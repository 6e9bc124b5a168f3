"""The flight recorder survives ``kill -9``: real processes killed mid-run, then read back."""

import hashlib
import json
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

from edgeliquid.cli.main import main
from edgeliquid.errors import RecordingError
from edgeliquid.node.recorder import read_recording

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "edgeliquid" / "data" / "cartpole_ncp.onnx"
FLUSH_S = 1.0

# A loop recording 4-input steps at 1 kHz on absolute deadlines, as the node does. After each
# step it publishes (steps so far, monotonic time of the last one) in a shared 16-byte file,
# so the parent knows what had been handed to the recorder when it killed the process.
CHILD = textwrap.dedent(
    """
    import mmap, struct, sys, time
    from edgeliquid.node.recorder import FlightRecorder

    out, progress, meta = sys.argv[1], sys.argv[2], eval(sys.argv[3])
    f = open(progress, "r+b")
    shared = mmap.mmap(f.fileno(), 16)
    rec = FlightRecorder(out, 4, 1, 1, meta, flush_s=float(sys.argv[4])).start()
    period = 1_000_000
    nxt = time.monotonic_ns()
    k = 0
    while True:
        k += 1
        t = time.monotonic_ns()
        x = (0.01 * (k % 7), 0.0, 0.02 * (k % 5), 0.0)
        rec.record_step(k, (t // 1000) & 0xFFFFFFFF, 1.0, 0, k == 1, x, (0.1,), (1.0,), (t, t, t, t, t))
        shared[:16] = struct.pack("<qq", k, t)
        if k == 1:
            print("recording", flush=True)
        nxt += period
        time.sleep(max(0.0, (nxt - time.monotonic_ns()) / 1e9))
    """
)


def _kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)


def test_kill9_of_a_recording_loop_loses_at_most_flush_s(tmp_path, capsys):
    out, progress = tmp_path / "crash.mcap", tmp_path / "progress"
    progress.write_bytes(bytes(16))
    meta = {
        "model": str(MODEL),
        "model_sha256": hashlib.sha256(MODEL.read_bytes()).hexdigest(),
        "backend": "cpu",
        "dtype": "float32",
        "rate_hz": 1000.0,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(out), str(progress), repr(meta), str(FLUSH_S)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "recording"
        time.sleep(3.0)
        with open(progress, "rb") as f:
            shared = mmap.mmap(f.fileno(), 16, access=mmap.ACCESS_READ)
            # what the loop had recorded the moment it died: read, kill, read again
            k_before, _ = struct.unpack("<qq", shared[:16])
            _kill9(proc)
            k_dead, t_dead = struct.unpack("<qq", shared[:16])
    finally:
        if proc.poll() is None:
            proc.kill()
    assert k_dead >= k_before > 100
    rec = read_recording(out)
    assert rec["truncated"] and rec["metadata"]["model"] == str(MODEL)
    seqs = [s["seq"] for s in rec["steps"]]
    assert seqs == list(range(1, len(seqs) + 1))  # a prefix: nothing out of order, no holes
    # At most flush_s of data was not yet on disk when the process died.
    lost_s = (t_dead - rec["steps"][-1]["t_ready_ns"]) / 1e9
    assert 0 <= lost_s <= FLUSH_S, (lost_s, len(seqs), k_dead)

    assert main(["replay", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"truncated, recovered {len(seqs)} steps" in text and "not closed" in text
    assert main(["profile", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["truncated"] and d["steps"] == len(seqs) and "recovered" in d["note"]


def _node_config(tmp_path: Path, port: str, mcap: Path, writer: str = "process") -> Path:
    data = yaml.safe_load((ROOT / "configs" / "cartpole_demo.yaml").read_text())
    data["model"] = str(MODEL)
    data["serial"]["port"] = port
    data["serial"]["exclusive"] = False
    data["telemetry"] = {"path": str(mcap), "flush_s": FLUSH_S, "writer": writer}
    p = tmp_path / "node.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("writer", ["process", "thread"])
def test_kill9_of_the_node_leaves_a_recording_replay_and_profile_read(tmp_path, capsys, writer):
    """thread writer: the file dies with the node, truncated but readable up to its last flush;
    process writer: the writer outlives the node, drains the ring and closes the file whole."""
    mcap, log = tmp_path / "run.mcap", tmp_path / "node.log"
    sim = subprocess.Popen(
        [sys.executable, "-m", "edgeliquid", "sim", "--port", "pty", "--seconds", "120"],
        stdout=subprocess.PIPE,
        text=True,
    )
    node, logf = None, open(log, "w")
    try:
        line = sim.stdout.readline()
        port = line.rsplit(" ", 1)[-1].strip()
        assert port.startswith("/dev/"), line
        node = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgeliquid",
                "run",
                "--config",
                str(_node_config(tmp_path, port, mcap, writer)),
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
        # Wait until the node has run for a while (its first flush puts the header on disk
        # at once; steps follow every flush_s), then kill it without warning.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not mcap.exists() or mcap.stat().st_size < 60_000):
            time.sleep(0.2)
        assert mcap.exists() and mcap.stat().st_size >= 60_000, log.read_text()[-2000:]
        _kill9(node)
    finally:
        for p in (node, sim):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
        logf.close()
    rec = read_recording(mcap)
    if writer == "process":  # the orphaned writer notices, drains and closes within its poll
        deadline = time.monotonic() + 30
        while rec["truncated"] and time.monotonic() < deadline:
            time.sleep(0.2)
            rec = read_recording(mcap)
        assert not rec["truncated"] and len(rec["steps"]) > 100
        assert main(["replay", str(mcap)]) == 0
        assert "match bit for bit" in capsys.readouterr().out
        return
    assert rec["truncated"] and len(rec["steps"]) > 100
    assert main(["replay", str(mcap)]) == 0
    text = capsys.readouterr().out
    assert f"truncated, recovered {len(rec['steps'])} steps" in text
    assert "match bit for bit" in text  # what was recovered is intact
    assert main(["profile", str(mcap)]) == 0
    assert f"recovered {len(rec['steps'])} steps" in capsys.readouterr().out


def test_a_file_cut_anywhere_reads_up_to_its_last_complete_record(tmp_path):
    from edgeliquid.node.recorder import FlightRecorder

    path = tmp_path / "whole.mcap"
    rec = FlightRecorder(path, 2, 1, 1, {"model": "m"}, flush_s=0.05).start()
    for k in range(2000):
        rec.record_step(k + 1, k, 1.0, 0, False, (0.1, 0.2), (0.3,), (0.4,), (k, k, k, k, k))
        if k % 200 == 0:
            time.sleep(0.1)  # several flushes: several chunks
    rec.close()
    data = path.read_bytes()
    whole = read_recording(path)
    assert not whole["truncated"] and len(whole["steps"]) == 2000
    got = []
    for cut in range(8, len(data), max(1, len(data) // 97)):  # from the end of the magic
        part = tmp_path / "cut.mcap"
        part.write_bytes(data[:cut] + bytes(512 * (cut % 2)))  # odd cuts: a zero-filled tail
        r = read_recording(part)
        assert r["truncated"]
        assert [s["seq"] for s in r["steps"]] == list(range(1, len(r["steps"]) + 1))
        got.append(len(r["steps"]))
    # more of the file, more steps; one chunk at a time (flushed every 0.05 s)
    assert got == sorted(got) and got[0] == 0 and max(got) <= 2000 and len(set(got)) >= 5


CONTENTS = {
    "missing": None,
    "empty": b"",
    "text": b"steps: 1\nthis is a note\n",
    "onnx": MODEL.read_bytes(),
    "binary": bytes(range(256)),
}


@pytest.mark.parametrize(
    "kind, match",
    [
        ("missing", "no such recording"),
        ("empty", r"empty \(0 bytes\)"),
        ("text", "a text file, not a flight recording"),
        ("onnx", "an ONNX model file, not a flight recording"),
        ("binary", "not a flight recording .* MCAP magic"),
    ],
)
def test_what_is_not_a_recording_is_named_in_one_line(tmp_path, kind, match, capsys):
    path = tmp_path / ("x.onnx" if kind == "onnx" else "x.mcap")
    if CONTENTS[kind] is not None:
        path.write_bytes(CONTENTS[kind])
    with pytest.raises(RecordingError, match=match):
        read_recording(path)
    # profile takes an .onnx as a model to profile: only replay must refuse it
    for cmd in (["replay", str(path)], ["profile", str(path)] if kind != "onnx" else None):
        if cmd:
            assert main(cmd) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and str(path) in err[0] and "Traceback" not in err[0], err


def test_replay_with_a_model_of_another_shape_names_both_files(tmp_path, capsys):
    from edgeliquid.node.recorder import FlightRecorder

    path = tmp_path / "three.mcap"
    with FlightRecorder(path, 3, 1, 1, {"model": str(MODEL)}) as rec:
        rec.record_step(1, 0, 1.0, 0, True, (0.1, 0.2, 0.3), (0.0,), (0.0,), (1, 2, 3, 4, 5))
    assert main(["replay", str(path), "--model", str(MODEL)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"model {MODEL} has 4 inputs / 1 outputs" in err and f"recording {path} holds 3 inputs" in err
    assert len(err.splitlines()) == 1
