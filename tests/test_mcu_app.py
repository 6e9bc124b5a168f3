"""The controller app on the emulated Cortex-M4 (qemu mps2-an386): build, protocol v1 step for step
against the Python node, fail-safes, hostile frames (issue #17).

The app is built once for the module; each test starts its own qemu (a fresh board).
"""

import json
import math
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgeliquid.node import protocol as P

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "edgeliquid" / "data" / "cartpole_ncp.onnx"
DEMO_CONFIG = ROOT / "configs" / "cartpole_demo.yaml"

pytestmark = [
    pytest.mark.skipif(
        shutil.which("arm-none-eabi-gcc") is None,
        reason="arm-none-eabi-gcc not installed (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi)",
    ),
    pytest.mark.skipif(
        shutil.which("qemu-system-arm") is None,
        reason="qemu-system-arm not installed (apt-get install qemu-system-arm)",
    ),
]


def _config(tmp: Path) -> Path:
    """The demo config with a wider sensor timeout (a busy CI machine must not time out between
    scripted frames) and no rate limit (its dt is each side's own wall clock, not scripted)."""
    data = yaml.safe_load(DEMO_CONFIG.read_text())
    data["model"] = str(DEMO_MODEL)
    data["failsafe"]["sensor_timeout_ms"] = 250
    for ch in data["outputs"]:
        ch.pop("max_rate", None)
    p = tmp / "robot.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from firmware_export.app import build_app

    tmp = tmp_path_factory.mktemp("mcu")
    cfg = _config(tmp)
    man = build_app(DEMO_MODEL, tmp / "out", "cp", "mps2-an386", cfg)
    return tmp / "out", man, cfg


class Link:
    """The test device's end of a serial line (an FdPort on qemu's pty, or a PtyMaster)."""

    def __init__(self, port):
        self.port, self.buf = port, P.Packetizer()

    def send_raw(self, data: bytes) -> None:
        self.port.write(data)

    def send(self, ptype, seq, t_us, values=()) -> None:
        self.port.write(P.encode_frame(ptype, seq, t_us, values))

    def collect(self, timeout: float, ref: int | None = None) -> list[P.Packet]:
        """Packets until an ACTUATE answering ``ref`` arrived, or ``timeout`` s."""
        out, end = [], time.monotonic() + timeout
        while time.monotonic() < end:
            self.port.timeout = min(0.05, max(0.0, end - time.monotonic()))
            data = self.port.read(4096)
            for chunk in self.buf.feed(data) if data else ():
                out.append(P.decode_frame(chunk))
            if ref is not None and any(p.type == P.ACTUATE and p.ref_seq == ref for p in out):
                break
        return out

    def handshake(self) -> P.Packet:
        for seq in range(1, 60):
            self.send(P.HELLO, seq, 0, [4, 1, 100])
            got = [p for p in self.collect(0.3) if p.type == P.HELLO]
            if got:
                self.collect(0.2)
                return got[0]
        raise AssertionError("no HELLO answer")


def _sensor(k: int) -> list[float]:
    """A fixed, plausible cart-pole-like trajectory."""
    return [
        0.3 * math.sin(0.05 * k),
        0.2 * math.cos(0.07 * k),
        0.04 * math.sin(0.3 * k),
        0.3 * math.cos(0.2 * k),
    ]


def _script(link: Link) -> list[P.Packet]:
    """Arm, run, invalid samples (NaN, out of range, wrong count) -> HOLD -> RUN, a duplicate,
    silence -> HOLD -> SAFE, recovery after arm_after valid frames. Returns what came back."""
    got: list[P.Packet] = []
    t_us = 0

    def frame(seq, values, expect=True):
        nonlocal t_us
        t_us += 10_000 + (seq % 3) * 1_500  # irregular sampling: elapsed from the device's clock
        link.send(P.SENSOR, seq, t_us, values)
        got.extend(link.collect(5.0 if expect else 0.15, seq if expect else None))

    for seq in range(1, 40):
        vals = _sensor(seq)
        if seq == 26:
            vals[2] = float("nan")
        elif seq == 31:
            vals[2] = 2000.0  # outside inputs[2].range
        elif seq == 35:
            vals = vals[:3]
        frame(seq, vals, expect=seq >= 3)
    link.send(P.SENSOR, 39, t_us, _sensor(39))  # a duplicate: dropped, counted
    got.extend(link.collect(0.15))
    got.extend(link.collect(1.0))  # silence: timeout -> HOLD -> SAFE
    t_us += 1_000_000
    for seq in range(40, 60):
        frame(seq, _sensor(seq), expect=seq >= 42)
    return got


def _statuses(pkts):
    """Mode changes (repeats collapsed; the 1 s repeat of SAFE "starting" while arming dropped)."""
    out = []
    for p in pkts:
        if p.type == P.STATUS and tuple(p.values[:2]) == (2.0, 1.0):
            continue
        if p.type == P.STATUS and (not out or out[-1] != tuple(p.values[:2])):
            out.append(tuple(p.values[:2]))
    return out


def _run_node(cfg_path: Path):
    from edgeliquid.hil.sim import PtyMaster
    from edgeliquid.node.config import load_config
    from edgeliquid.node.loop import Node

    pty = PtyMaster()
    cfg = load_config(cfg_path)
    cfg.port, cfg.exclusive, cfg.stats_every_s = pty.node_port, False, 1000.0
    node = Node(cfg)
    t = threading.Thread(target=node.run, args=(120,), daemon=True)
    t.start()
    assert node.ready.wait(60)
    link = Link(pty)
    link.collect(0.3)  # the node's HELLO, fail-safe and STATUS on opening the port
    link.handshake()
    try:
        return _script(link), node
    finally:
        node.stop()
        t.join(10)
        pty.close()


def test_build_outputs_and_budget(app):
    out, man, _ = app
    a = man["app"]
    for f in ("cp.elf", "cp.bin", "Makefile", "board.c", "board.ld", "app.c", "app_config.h", "cp.c"):
        assert (out / f).is_file(), f
    assert a["flash_bytes"] <= 16 * 1024 and a["ram_bytes"] <= 4 * 1024, a
    assert (out / "cp.bin").stat().st_size <= a["flash_bytes"] + 16
    ins = a["instructions"]
    assert 0 < ins["step_mean"] <= ins["cycle_mean"] and "not cycle accurate" in ins["note"]
    assert json.loads((out / "manifest.json").read_text())["app"]["flash_bytes"] == a["flash_bytes"]
    # the Makefile rebuilds the same image
    r = subprocess.run(["make", "-B", "-C", str(out)], capture_output=True, text=True)
    if shutil.which("make"):
        assert r.returncode == 0, r.stderr


def test_same_frames_same_answers_as_the_python_node(app):
    from firmware_export.app.qemu import QemuApp

    out, _, cfg = app
    with QemuApp(out / "cp.elf") as q:
        link = Link(q.port)
        hello = link.handshake()
        assert list(hello.values) == [4.0, 1.0, 100.0]
        fw = _script(link)
        dbg = q.debug()
    py, node = _run_node(cfg)

    # the same mode changes, in the same order: arm, HOLD/RUN on each invalid sample, timeout
    # -> HOLD -> SAFE, re-arm
    want = [(0.0, 0.0), (1.0, 3.0), (0.0, 0.0), (1.0, 3.0), (0.0, 0.0), (1.0, 3.0), (0.0, 0.0)]
    want += [(1.0, 2.0), (2.0, 2.0), (0.0, 0.0)]
    assert _statuses(py) == want
    assert _statuses(fw) == want
    # commands answering a SENSOR frame: the same frames answered, values within float32 tolerance
    a_fw = {p.ref_seq: p.values for p in fw if p.type == P.ACTUATE and p.ref_seq}
    a_py = {p.ref_seq: p.values for p in py if p.type == P.ACTUATE and p.ref_seq}
    assert sorted(a_fw) == sorted(a_py) == [s for s in range(3, 60) if s not in (40, 41)]
    err = max(abs(a_fw[k][0] - a_py[k][0]) for k in a_fw)
    scale = max(1.0, max(abs(v[0]) for v in a_py.values()))
    assert err <= 1e-5 * 10 * scale, err  # 1e-5 of the output scale (10 N per model unit)
    # silence: the fail-safe value on the wire right before STATUS SAFE, on both
    for got in (fw, py):
        i = next(i for i, p in enumerate(got) if p.type == P.STATUS and tuple(p.values[:2]) == (2.0, 2.0))
        assert got[i - 1].type == P.ACTUATE and list(got[i - 1].values) == [0.0] and got[i - 1].ref_seq == 0
    # the counters the node keeps, kept by the app too
    assert dbg["nonfinite"] == node.rx.errors["nonfinite"] == 1
    assert dbg["out_of_range"] == node.stats.out_of_range == 1
    assert dbg["wrong_size"] == node.stats.wrong_size == 1
    assert dbg["duplicates"] == node.rx.duplicates == 1
    assert dbg["failsafe_events"] == 1


def _packet(version=1, ptype=P.SENSOR, flags=0, count=4, payload=4, seq=1):
    body = struct.pack("<BBBBHIH", version, ptype, flags, count, seq, 0, 0) + b"\0\0\x80\x3f" * payload
    return body + struct.pack("<H", P.crc16(body))


def test_hostile_bytes_never_hang_the_app(app):
    from cobs import cobs

    from firmware_export.app.qemu import QemuApp

    out, _, _ = app
    good = P.encode_frame(P.SENSOR, 7, 0, [0.1, 0.2, 0.3, 0.4])
    rng = np.random.default_rng(5)
    bad_crc = bytearray(P.encode_packet(P.SENSOR, 8, 0, [0.1, 0.2, 0.3, 0.4]))
    bad_crc[14] ^= 0x01
    chunks = [
        good[:-1][:9] + b"\x00",  # truncated
        cobs.encode(bad_crc) + b"\x00",  # a payload bit flipped: CRC
        cobs.encode(_packet(version=2)) + b"\x00",
        cobs.encode(_packet(flags=1)) + b"\x00",
        cobs.encode(_packet(ptype=9)) + b"\x00",
        cobs.encode(_packet(count=5)) + b"\x00",  # count says 5, payload has 4
        b"\x55" * 700 + b"\x00",  # no delimiter for longer than a frame
        b"\x07\x01\x00",  # COBS code pointing past the end
        bytes(rng.integers(0, 256, 3000, dtype=np.uint8)),
        b"\x00",
    ]
    stream = b"".join(chunks)
    # what the Python receiver makes of the same bytes
    want = {k: 0 for k in P.ERROR_KINDS}
    pk = P.Packetizer()
    for chunk in pk.feed(stream):
        try:
            P.decode_frame(chunk)
        except P.DecodeError as exc:
            want[exc.kind] += 1
    want["length"] += pk.overflows
    with QemuApp(out / "cp.elf") as q:
        link = Link(q.port)
        link.handshake()
        t0 = time.monotonic()
        link.send_raw(stream)
        link.collect(1.0)
        assert link.handshake().type == P.HELLO  # still answering
        dbg = q.debug()
        assert time.monotonic() - t0 < 30
    got = {k: int(dbg[k]) for k in P.ERROR_KINDS}
    assert got == want
    assert got["crc"] >= 1 and got["version"] == got["flags"] == got["type"] == 1 and got["length"] >= 2


def test_cli_builds_the_app(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeliquid",
            "firmware",
            str(DEMO_MODEL),
            "-o",
            str(tmp_path),
            "--name",
            "pol",
            "--app",
            "mps2-an386",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "pol.elf").is_file() and (tmp_path / "pol.bin").is_file()
    assert "instructions per control cycle" in r.stdout and "not cycle accurate" in r.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeliquid",
            "firmware",
            str(DEMO_MODEL),
            "-o",
            str(tmp_path / "x"),
            "--app",
            "mps2-an386",
            "--config",
            str(ROOT / "configs" / "robot_usb_example.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "error:" in bad.stderr, bad.stderr
