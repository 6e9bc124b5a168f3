"""The node over real pseudo-terminals (pyserial on the node side), with injected faults."""

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgeliquid.errors import ConfigError
from edgeliquid.hil.sim import PtyMaster
from edgeliquid.node import protocol as P
from edgeliquid.node.config import load_config, parse_config
from edgeliquid.node.loop import Node
from edgeliquid.runtime.policy import load

MODEL = Path(__file__).resolve().parents[1] / "edgeliquid" / "data" / "cartpole_ncp.onnx"


def _cfg(tmp_path, port, **over):
    data = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "configs" / "cartpole_demo.yaml").read_text()
    )
    data["model"] = str(MODEL)
    data["serial"]["port"] = port
    data["serial"]["exclusive"] = False
    data["failsafe"].update(over.pop("failsafe", {}))
    data.update(over)
    p = tmp_path / "node.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


class Dev:
    """A scripted device on the master side of a pty."""

    def __init__(self):
        self.pty = PtyMaster()
        self.split = P.Packetizer()
        self.seq = 0
        self.rx: list[P.Packet] = []

    def send(self, ptype, values, t_us=None, seq=None, raw=None):
        self.seq = (self.seq + 1) & 0xFFFF if seq is None else seq
        t = int(time.monotonic_ns() // 1000) if t_us is None else t_us
        self.pty.write(raw if raw is not None else P.encode_frame(ptype, self.seq, t, values))

    def pump(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.pty.timeout = 0.005
            data = self.pty.read(4096)
            for fr in self.split.feed(data):
                self.rx.append(P.decode_frame(fr))

    def actuations(self):
        return [p for p in self.rx if p.type == P.ACTUATE]

    def statuses(self):
        return [int(p.values[0]) for p in self.rx if p.type == P.STATUS]


@pytest.fixture()
def rig(tmp_path):
    dev = Dev()
    made = {}

    def start(**over):
        cfg = load_config(_cfg(tmp_path, dev.pty.node_port, **over))
        node = Node(cfg)
        th = threading.Thread(target=node.run, args=(30,), daemon=True)
        th.start()
        made.update(node=node, th=th)
        dev.pump(0.3)
        dev.send(P.HELLO, [4, 1, 100])
        dev.pump(0.1)
        return node

    yield dev, start
    if made:
        made["node"].stop()
        made["th"].join(5)
    dev.pty.close()


def _sensors(dev, n, rate=100.0, values=(0.01, 0.0, 0.02, 0.0), start_t=None):
    t = start_t or 1_000_000
    for i in range(n):
        dev.send(P.SENSOR, list(values), t_us=t + int(i * 1e6 / rate))
        dev.pump(1.0 / rate)
    return t + int(n * 1e6 / rate)


def test_actuate_equals_policy_step_for_step(rig):
    dev, start = rig
    node = start(failsafe={"arm_after": 1})
    ref = load(MODEL, backend="cpu")
    rng = np.random.default_rng(0)
    t = 1_000_000
    sent = []
    for _ in range(40):
        v = rng.normal(0, 0.05, 4)
        dt_us = int(rng.uniform(5_000, 15_000))
        t += dt_us
        dev.send(P.SENSOR, v.tolist(), t_us=t)
        sent.append((np.float32(v).astype(np.float64), dt_us))
        dev.pump(0.01)
    dev.pump(0.2)
    acts = [p for p in dev.actuations() if p.ref_seq != 0]
    assert len(acts) == 40
    scale = np.array([1.0, 1.0, 5.0, 1.0])
    for i, ((v, dt_us), a) in enumerate(zip(sent, acts)):
        x = np.clip(v, [-5, -10, -1.5, -20], [5, 10, 1.5, 20]) * scale
        elapsed = 0.01 / 0.01 if i == 0 else dt_us / 1e6 / 0.01
        y = float(ref.step(x, elapsed)[0])
        u = np.clip(y * 10.0, -10, 10)
        assert a.values[0] == pytest.approx(np.float32(u), abs=1e-5)
    assert node.stats.steps >= 40  # + hold cycles after the stream ends


def test_stall_longer_than_timeout_sends_failsafe_then_recovers(rig):
    dev, start = rig
    node = start()
    t = _sensors(dev, 20)
    assert node.mode == P.MODE_RUN
    n_before = len(dev.rx)
    dev.pump(0.3)  # no frames at all: the timer must fire
    during = dev.rx[n_before:]
    assert P.MODE_SAFE in [int(p.values[0]) for p in during if p.type == P.STATUS]
    assert [p.values[0] for p in during if p.type == P.ACTUATE][-1] == 0.0  # fail-safe force
    assert node.mode == P.MODE_SAFE and node.stats.failsafe_events >= 1
    _sensors(dev, 10, start_t=t + 300_000)
    assert node.mode == P.MODE_RUN


def test_after_a_stall_safe_rearms_only_after_arm_after_fresh_samples(rig):
    dev, start = rig
    node = start(failsafe={"arm_after": 3})
    t = _sensors(dev, 10)
    dev.pump(0.3)  # sensor timeout: SAFE
    assert node.mode == P.MODE_SAFE
    t = _sensors(dev, 2, start_t=t + 300_000)
    dev.pump(0.05)
    assert node.mode == P.MODE_SAFE  # the count restarted on entering SAFE
    n = len(dev.rx)
    _sensors(dev, 1, start_t=t)
    end = time.monotonic() + 5  # the third fresh sample arms (seen on the wire, however busy the host)
    while P.MODE_RUN not in [int(p.values[0]) for p in dev.rx[n:] if p.type == P.STATUS]:
        assert time.monotonic() < end, "did not arm after arm_after fresh samples"
        dev.pump(0.01)


def test_short_stall_holds_without_failsafe(rig):
    dev, start = rig
    node = start(failsafe={"sensor_timeout_ms": 80})
    t = _sensors(dev, 10)
    dev.pump(0.04)
    _sensors(dev, 5, start_t=t + 40_000)
    assert node.mode == P.MODE_RUN and node.stats.failsafe_events == 0


def test_nan_sensors_hold_then_safe_then_recover(rig):
    dev, start = rig
    node = start(failsafe={"hold_cycles": 2})
    t = _sensors(dev, 10)
    t = _sensors(dev, 6, values=(np.nan, 0, 0, 0), start_t=t)
    assert node.rx.errors["nonfinite"] == 6
    assert P.MODE_HOLD in dev.statuses() and node.mode == P.MODE_SAFE
    _sensors(dev, 10, start_t=t)
    assert node.mode == P.MODE_RUN


def test_corruption_and_duplicates_counted_control_continues(rig):
    dev, start = rig
    node = start()
    t = _sensors(dev, 5)
    good = P.encode_frame(P.SENSOR, 999, t, [0.0, 0.0, 0.01, 0.0])
    bad = bytearray(good)
    bad[5] ^= 0xFF
    dev.send(None, None, raw=bytes(bad))
    dev.send(None, None, raw=b"\x00\x17garbage\x00")
    dev.seq = 5
    dev.send(P.SENSOR, [0, 0, 0, 0], t_us=t, seq=5)  # duplicate seq
    dev.pump(0.05)
    _sensors(dev, 5, start_t=t + 10_000)
    assert node.rx.total_errors >= 2 and node.rx.duplicates == 1
    assert node.mode == P.MODE_RUN and node.stats.failsafe_events == 0


def test_wrong_size_hello_refuses_to_arm(rig):
    dev, start = rig
    node = start()
    dev.send(P.HELLO, [3, 2, 100])
    dev.pump(0.1)
    _sensors(dev, 10)
    assert node.mode == P.MODE_SAFE and node.stats.hello_mismatch == 1
    assert all(a.values[0] == 0.0 for a in dev.actuations())


def test_wrong_size_sensor_frames_counted(rig):
    dev, start = rig
    node = start()
    _sensors(dev, 5, values=(0.0, 0.0, 0.0))
    assert node.stats.wrong_size == 5 and node.mode != P.MODE_RUN


def test_sighup_with_broken_model_keeps_old(tmp_path, rig):
    dev, start = rig
    broken = tmp_path / "m.onnx"
    broken.write_bytes(MODEL.read_bytes())
    node = start(model=str(broken))
    _sensors(dev, 5)
    broken.write_bytes(b"garbage")
    node.request_reload()
    t, deadline = 2_000_000, time.monotonic() + 60
    while not node.stats.reloads_rejected and time.monotonic() < deadline:  # loaded off the loop
        t = _sensors(dev, 5, start_t=t)
    assert node.stats.reloads == 0 and any("reload rejected" in e for _, e in node.events)
    assert node.mode == P.MODE_RUN


def test_sigterm_sends_failsafe_and_exits_zero(tmp_path):
    dev = Dev()
    cfgp = _cfg(tmp_path, dev.pty.node_port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeliquid", "run", "--config", str(cfgp)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not dev.rx and time.monotonic() < deadline:
            dev.pump(0.1)
        dev.send(P.HELLO, [4, 1, 100])
        _sensors(dev, 20)
        n = len(dev.rx)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        dev.pump(0.2)
        tail = dev.rx[n:]
        assert [p.values[0] for p in tail if p.type == P.ACTUATE] == [0.0]
        assert int([p for p in tail if p.type == P.STATUS][-1].values[0]) == P.MODE_SAFE
    finally:
        proc.kill()
        dev.pty.close()


def test_unplug_replug_over_socket_reconnects(tmp_path):
    import socket

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    cfg = load_config(_cfg(tmp_path, f"socket://127.0.0.1:{port}", reconnect={"min_s": 0.05, "max_s": 0.2}))
    node = Node(cfg)
    th = threading.Thread(target=node.run, args=(20,), daemon=True)
    th.start()
    try:
        for attempt in range(2):
            conn, _ = srv.accept()
            conn.settimeout(0.01)
            split = P.Packetizer()
            conn.sendall(P.encode_frame(P.HELLO, 1, 0, [4, 1, 100]))
            got = []
            for i in range(15):
                conn.sendall(P.encode_frame(P.SENSOR, i + 2, 1000 + i * 10_000, [0, 0, 0.01, 0]))
                time.sleep(0.01)
                try:
                    got += [P.decode_frame(f) for f in split.feed(conn.recv(4096))]
                except TimeoutError:
                    pass
            assert any(p.type == P.ACTUATE and p.ref_seq for p in got), attempt
            conn.close()  # unplug
        assert node.stats.reconnects >= 1
    finally:
        node.stop()
        th.join(5)
        srv.close()


@pytest.mark.parametrize(
    "patch, match",
    [
        ({"loop": {"mode": "sometimes"}}, r"loop.mode: 'sometimes' is not one of"),
        ({"loop": {"rate_hz": -5}}, r"loop.rate_hz: -5 out of range"),
        ({"serial": {"baud": 9600, "port": "x"}}, r"serial.baud: unknown key"),
        ({"outputs": [{"name": "f", "clip": [-1, 1], "failsafe": 5}]}, r"outputs\[0\].failsafe: 5"),
        ({"inputs": []}, r"inputs: required"),
        ({"realtime": {"cpu_dma_latency_us": -1}}, r"realtime.cpu_dma_latency_us: -1 out of range"),
        ({"realtime": {"cpu_dma_latency_us": 2.5}}, r"realtime.cpu_dma_latency_us: expected an integer"),
    ],
)
def test_config_errors_name_key_and_file(tmp_path, patch, match):
    data = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "configs" / "cartpole_demo.yaml").read_text()
    )
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    with pytest.raises(ConfigError, match=r"robot.yaml: " + match):
        parse_config(data, "robot.yaml")


def test_example_configs_are_valid():
    root = Path(__file__).resolve().parents[1] / "configs"
    for p in root.glob("*.yaml"):
        load_config(p)


def test_normalisation_mismatch_is_flagged(tmp_path):
    from edgeliquid.node.loop import check_normalization

    cfg = load_config(_cfg(tmp_path, "loop://"))
    meta = load(MODEL).metadata
    assert check_normalization(cfg, meta)
    cfg.inputs[2].scale = 1.0
    assert not check_normalization(cfg, meta)


def test_drop_burst_over_255_counted_and_control_continues(rig):
    dev, start = rig
    node = start()
    t = _sensors(dev, 5)
    dev.seq += 300  # 300 frames lost on the wire (more than a u8 could count)
    _sensors(dev, 5, start_t=t + 10_000)
    assert node.rx.lost == 300
    assert node.mode == P.MODE_RUN and node.stats.failsafe_events == 0


def test_reordered_frame_is_dropped_and_counted(rig):
    dev, start = rig
    node = start()
    t = _sensors(dev, 5)
    for seq in (20, 22, 21, 23):  # 21 arrives after 22
        dev.send(P.SENSOR, [0.0, 0.0, 0.01, 0.0], t_us=t + seq * 1000, seq=seq)
        dev.pump(0.01)
    assert node.rx.reordered == 1
    answered = {p.ref_seq for p in dev.actuations()}
    assert {20, 22, 23} <= answered and 21 not in answered


def test_byte_by_byte_trickle_decodes(rig):
    dev, start = rig
    node = start()
    t = _sensors(dev, 5)
    frame = P.encode_frame(P.SENSOR, 77, t + 10_000, [0.0, 0.0, 0.01, 0.0])
    for b in frame:
        dev.send(None, None, raw=bytes([b]))
        time.sleep(0.0005)
    dev.pump(0.05)
    assert any(p.ref_seq == 77 for p in dev.actuations())
    assert node.rx.total_errors == 0


def test_steady_state_loop_holds_no_new_memory(rig):
    # A daemon runs for days: after warm-up, thousands of cycles must leave nothing alive
    # behind (no growing lists, no per-step arrays kept). Transient frame bytes are freed.
    import tracemalloc

    dev, start = rig
    node = start(failsafe={"arm_after": 1})

    def stream(n, t):
        for _ in range(n):
            t += 2000
            dev.send(P.SENSOR, [0.01, 0.0, 0.02, 0.0], t_us=t)
            dev.pump(0.002)
            dev.rx.clear()
        return t

    t = stream(300, 1_000_000)
    steps0 = node.stats.steps
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        stream(2000, t)
        grown = tracemalloc.get_traced_memory()[0] - base
        top = tracemalloc.take_snapshot().statistics("lineno")[:5]
    finally:
        tracemalloc.stop()
    assert node.stats.steps - steps0 >= 1900
    assert grown < 32 * 1024, f"{grown} B still alive after 2000 cycles; largest: {top}"
