"""The node under hostile and broken inputs (issue #11 node side, issue #12 `run`), over real
pseudo-terminals and real subprocesses: bad HELLOs, bad model files on SIGHUP, early and
mid-reload signals, implausible sensor values, `run --fail-fast / --seconds / --check`, and a
property test of the input side."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_node import MODEL, Dev, _cfg

from edgeliquid.hil.sim import PtyMaster
from edgeliquid.node import protocol as P
from edgeliquid.node.config import load_config
from edgeliquid.node.loop import R_HELLO_MISMATCH, Node, hello_sizes
from edgeliquid.node.textproto import LineSplitter
from edgeliquid.runtime.policy import load

ROOT = Path(__file__).resolve().parents[1]
SENSOR_OK = (0.01, 0.0, 0.02, 0.0)


class TimedDev(Dev):
    """Dev that also records when each packet arrived (device side)."""

    def __init__(self):
        super().__init__()
        self.arrivals: list[tuple[float, P.Packet]] = []

    def pump(self, seconds):
        end = time.monotonic() + seconds
        while True:
            self.pty.timeout = max(0.0, min(0.005, end - time.monotonic()))
            data = self.pty.read(4096)
            now = time.monotonic()
            for fr in self.split.feed(data):
                pkt = P.decode_frame(fr)
                self.rx.append(pkt)
                self.arrivals.append((now, pkt))
            if now >= end:
                return


@pytest.fixture()
def hrig(tmp_path):
    """(dev, start): a node thread on a pty; start(**config overrides) -> Node."""
    dev = TimedDev()
    made = {}

    def start(cfg_path=None, **over):
        # A long sensor timeout: the test thread's own scheduling delays must not look like
        # a sensor stall on a busy machine.
        over["failsafe"] = {"sensor_timeout_ms": 1000, **over.get("failsafe", {})}
        cfg = load_config(cfg_path or _cfg(tmp_path, dev.pty.node_port, **over))
        node = Node(cfg)
        th = threading.Thread(target=node.run, args=(120,), daemon=True)
        th.start()
        made.update(node=node, th=th)
        assert node.ready.wait(30)
        dev.pump(0.1)
        dev.send(P.HELLO, [4, 1, 100])
        dev.pump(0.1)
        return node

    yield dev, start
    if made:
        made["node"].stop()
        made["th"].join(10)
        assert not made["th"].is_alive(), "node loop did not stop"
    dev.pty.close()


def stream(dev, n=None, until=None, max_s=60.0, values=SENSOR_OK, t0=1_000_000, rate=100.0):
    """Send SENSOR frames at ``rate`` (n of them, or until ``until()`` then 0.3 s more)."""
    t, sent, i, stop_at = t0, [], 0, None
    end = time.monotonic() + max_s
    while time.monotonic() < end:
        if n is not None and i >= n:
            break
        if until is not None and stop_at is None and until():
            stop_at = time.monotonic() + 0.3
        if stop_at is not None and time.monotonic() >= stop_at:
            break
        t += int(1e6 / rate)
        dev.send(P.SENSOR, list(values), t_us=t)
        sent.append((time.monotonic(), dev.seq))
        dev.pump(1.0 / rate)
        i += 1
    dev.pump(0.05)
    return t, sent


def answered_gaps(dev, since: float) -> tuple[int, float]:
    """ACTUATE answers (ref_seq != 0) received after ``since``, and the longest gap between them."""
    times = [t for t, p in dev.arrivals if t >= since and p.type == P.ACTUATE and p.ref_seq]
    gaps = np.diff(times) if len(times) > 1 else np.array([math.inf])
    return len(times), float(gaps.max())


# ----------------------------------------------------------------------------- HELLO


@pytest.mark.parametrize(
    "sizes",
    [
        [math.nan, 1, 100],
        [math.inf, 1, 100],
        [4, -math.inf, 100],
        [4.9, 1.9, 100],
        [-4, 1, 100],
        [4e30, 1, 100],
        [65, 1, 100],
        [4],
        [],
    ],
    ids=["nan", "inf", "-inf", "4.9", "negative", "huge", "over-max", "one-value", "empty"],
)
def test_bad_hello_is_a_mismatch_node_keeps_answering(hrig, sizes):
    dev, start = hrig
    node = start(failsafe={"arm_after": 1})
    stream(dev, 5)
    assert node.mode == P.MODE_RUN
    n = len(dev.rx)
    dev.send(P.HELLO, sizes)
    dev.pump(0.1)
    stream(dev, 10, t0=3_000_000)
    tail = dev.rx[n:]
    assert node.stats.hello_mismatch == 1 and node.mode == P.MODE_SAFE
    assert [int(p.values[1]) for p in tail if p.type == P.STATUS][0] == R_HELLO_MISMATCH
    assert [p.values[0] for p in tail if p.type == P.ACTUATE] and all(
        p.values[0] == 0.0 for p in tail if p.type == P.ACTUATE
    )  # fail-safe force, never a policy command, while refused
    assert any(p.type == P.HELLO for p in tail)  # still answering
    dev.send(P.HELLO, [4, 1, 100])  # a matching HELLO re-enables arming
    dev.pump(0.05)
    stream(dev, 5, t0=4_000_000)
    assert node.mode == P.MODE_RUN


def test_hello_sizes_accepts_only_exact_small_integers():
    assert hello_sizes((4.0, 1.0, 100.0)) == (4, 1)
    for bad in [(math.nan, 1.0), (4.9, 1.0), (4.0, math.inf), (-1.0, 1.0), (1e38, 1.0), (4.0,), ()]:
        assert hello_sizes(bad) is None


class TextDev:
    """A device speaking text mode on the master side of a pty."""

    def __init__(self):
        self.pty = PtyMaster()
        self.split = LineSplitter()
        self.lines: list[str] = []
        self.n = 0

    def send(self, line: str) -> None:
        self.pty.write((line + "\n").encode())

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.pty.timeout = 0.005
            self.lines += [ln.decode() for ln in self.split.feed(self.pty.read(4096))]


@pytest.mark.parametrize("hello", ["H nan 1 100", "H inf 1 100", "H 4.9 1.9 100", "H -inf nan", "H 1e999 1"])
def test_bad_text_hello_is_a_mismatch(tmp_path, hello):
    dev = TextDev()
    cfg = load_config(_cfg(tmp_path, dev.pty.node_port, failsafe={"arm_after": 1, "sensor_timeout_ms": 1000}))
    cfg.protocol = "text"
    node = Node(cfg)
    th = threading.Thread(target=node.run, args=(60,), daemon=True)
    th.start()
    try:
        assert node.ready.wait(30)
        dev.send("H 4 1 100")
        for i in range(5):
            dev.send(f"S {1000 + i * 10000} 0.01 0 0.02 0")
            dev.pump(0.01)
        assert node.mode == P.MODE_RUN
        dev.pump(0.05)
        n = len(dev.lines)
        dev.send(hello)
        dev.pump(0.1)
        for i in range(10):
            dev.send(f"S {200000 + i * 10000} 0.01 0 0.02 0")
            dev.pump(0.01)
        dev.pump(0.1)
        tail = dev.lines[n:]
        assert th.is_alive() and node.mode == P.MODE_SAFE and node.stats.hello_mismatch == 1
        assert f"T {P.MODE_SAFE} {R_HELLO_MISMATCH}" in tail
        acts = [ln for ln in tail if ln.startswith("A ")]
        assert acts and all(float(a.split()[2]) == 0.0 for a in acts)
    finally:
        node.stop()
        th.join(10)
        dev.pty.close()
    assert not th.is_alive()


# ----------------------------------------------------------------------------- range


def test_out_of_range_sensor_holds_then_failsafe_on_the_wire(tmp_path, hrig):
    dev, start = hrig
    data = yaml.safe_load(_cfg(tmp_path, dev.pty.node_port).read_text())
    data["inputs"][2]["range"] = [-3.2, 3.2]  # theta, rad: a sensor reading 1e38 is broken
    data["failsafe"].update(hold_cycles=2, arm_after=1, sensor_timeout_ms=1000)
    cfgp = tmp_path / "ranged.yaml"
    cfgp.write_text(yaml.safe_dump(data))
    node = start(cfg_path=cfgp)
    t, _ = stream(dev, 10)
    assert node.mode == P.MODE_RUN
    stream(dev, 5, values=(0.0, 0.0, 2.0, 0.0), t0=t)  # in range, outside clip [-1.5, 1.5]
    assert node.maps.clipped == 5 and node.mode == P.MODE_RUN
    n = len(dev.rx)
    t, _ = stream(dev, 6, values=(0.01, 0.0, 1e38, 0.0), t0=t + 50_000)
    tail = dev.rx[n:]
    assert node.stats.out_of_range == 6 and node.mode == P.MODE_SAFE
    modes = [int(p.values[0]) for p in tail if p.type == P.STATUS]
    assert modes[:2] == [P.MODE_HOLD, P.MODE_SAFE]
    assert [p.values[0] for p in tail if p.type == P.ACTUATE][-1] == 0.0  # the fail-safe force
    # HOLD cycles reuse the last (clipped) sample and count again: 5 + hold_cycles
    assert "out_of_range=6" in node.stats_line() and f"clipped={node.maps.clipped}" in node.stats_line()
    assert node.maps.clipped >= 5
    stream(dev, 5, t0=t + 50_000)
    assert node.mode == P.MODE_RUN


# ----------------------------------------------------------------------------- reload


def _edited(tmp_path, name, edit) -> Path:
    m = onnx.load(str(MODEL))
    edit(m)
    p = tmp_path / name
    p.write_bytes(m.SerializeToString())
    return p


def _set_meta(key, value):
    def edit(m):
        for prop in m.metadata_props:
            if prop.key == "edgeliquid." + key:
                prop.value = value

    return edit


def _one_d_mask(m):
    for i, init in enumerate(m.graph.initializer):
        if init.name == "sparsity_mask":
            arr = onnx.numpy_helper.to_array(init).ravel()
            m.graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(arr, "sparsity_mask"))


def _string_tensor(m):
    for i, init in enumerate(m.graph.initializer):
        if init.name == "gleak":
            t = onnx.helper.make_tensor("gleak", onnx.TensorProto.STRING, [19], [b"x"] * 19)
            m.graph.initializer[i].CopyFrom(t)


def _random_model_file(tmp_path, name, **kw) -> Path:
    from helpers import random_model

    from edgeliquid.model.file import save

    p = tmp_path / name
    save(random_model(np.random.default_rng(0), **kw), p)
    return p


def _garbage(tmp_path) -> Path:
    p = tmp_path / "g.onnx"
    p.write_bytes(b"\x08garbage\x00" * 1000)
    return p


BAD_MODELS = {
    "garbage": _garbage,
    "one-d-mask": lambda tmp: _edited(tmp, "m1.onnx", _one_d_mask),
    "string-tensor": lambda tmp: _edited(tmp, "s.onnx", _string_tensor),
    "unfolds-1e9": lambda tmp: _edited(tmp, "u.onnx", _set_meta("ode_unfolds", "1000000000")),
    "wrong-size": lambda tmp: _random_model_file(tmp, "w.onnx", n_in=3, motors=1, units=8),
    # valid and within the format's bounds, but one step is longer than the 10 ms period
    "slow-step": lambda tmp: _random_model_file(
        tmp, "slow.onnx", n_in=4, motors=1, units=200, density=1.0, unfolds=1000
    ),
    "missing": lambda tmp: tmp / "nothing-here.onnx",
}


@pytest.mark.parametrize("kind", list(BAD_MODELS))
def test_sighup_bad_model_keeps_old_policy_and_loop_keeps_commanding(tmp_path, hrig, kind):
    dev, start = hrig
    live = tmp_path / "live.onnx"
    live.write_bytes(MODEL.read_bytes())
    node = start(model=str(live), failsafe={"arm_after": 1})
    node.reloader.timeout_s = 20.0
    stream(dev, 10)
    old = node.policy
    bad = BAD_MODELS[kind](tmp_path)
    if bad.exists():
        live.write_bytes(bad.read_bytes())
    else:
        live.unlink()
    t_hup = time.monotonic()
    node.request_reload()
    _, sent = stream(dev, until=lambda: node.stats.reloads_rejected > 0, t0=2_000_000, max_s=60)
    assert node.stats.reloads_rejected == 1 and node.stats.reloads == 0
    assert node.policy is old and node.mode == P.MODE_RUN
    assert any("reload rejected" in e for _, e in node.events)
    n, gap = answered_gaps(dev, t_hup)
    assert n >= 0.9 * len(sent), (n, len(sent))  # answered at the sensor rate throughout
    assert gap < 0.5, f"{gap:.3f} s without a command during the reload"


def test_reload_timeout_keeps_old_policy(tmp_path, hrig):
    dev, start = hrig
    live = tmp_path / "live.onnx"
    live.write_bytes(MODEL.read_bytes())
    node = start(model=str(live), failsafe={"arm_after": 1})
    node.reloader.timeout_s = 0.05  # no interpreter starts, imports numba and loads in 50 ms
    stream(dev, 5)
    old = node.policy
    node.request_reload()
    stream(dev, until=lambda: node.stats.reloads_rejected > 0, t0=2_000_000, max_s=30)
    assert node.policy is old and node.stats.reloads_rejected == 1
    assert any("longer than 0.05 s" in e for _, e in node.events)


def test_good_reload_swaps_between_cycles_without_stalling(tmp_path, hrig):
    dev, start = hrig
    live = tmp_path / "live.onnx"
    live.write_bytes(MODEL.read_bytes())
    node = start(model=str(live), failsafe={"arm_after": 1})
    stream(dev, 10)
    old = node.policy
    t_hup = time.monotonic()
    node.request_reload()
    _, sent = stream(dev, until=lambda: node.stats.reloads > 0, t0=2_000_000, max_s=60)
    assert node.stats.reloads == 1 and node.policy is not old and node.mode == P.MODE_RUN
    n, gap = answered_gaps(dev, t_hup)
    assert n >= 0.9 * len(sent) and gap < 0.5, (n, len(sent), gap)


def _wait_for(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def _validation_children(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"_validate_child" in cmd and marker.encode() in cmd:
                pids.append(int(d.name))
    return pids


def _popen_run(cfgp, *extra, stderr=None):
    return subprocess.Popen(
        [sys.executable, "-m", "edgeliquid", "run", "--config", str(cfgp), *extra],
        stdout=subprocess.PIPE,
        stderr=stderr if stderr is not None else subprocess.PIPE,
        cwd=ROOT,
    )


def test_sigterm_during_reload_exits_zero_failsafe_and_kills_the_child(tmp_path):
    dev = Dev()
    live = tmp_path / "live.onnx"
    live.write_bytes(MODEL.read_bytes())
    cfgp = _cfg(tmp_path, dev.pty.node_port, model=str(live))
    proc = _popen_run(cfgp)
    try:
        deadline = time.monotonic() + 60
        while not dev.rx and time.monotonic() < deadline:
            dev.pump(0.1)
        dev.send(P.HELLO, [4, 1, 100])
        t = 1_000_000
        for _ in range(20):
            t += 10_000
            dev.send(P.SENSOR, list(SENSOR_OK), t_us=t)
            dev.pump(0.01)
        slow = _random_model_file(
            tmp_path, "slow.onnx", n_in=4, motors=1, units=200, density=1.0, unfolds=1000
        )
        live.write_bytes(slow.read_bytes())
        proc.send_signal(signal.SIGHUP)
        assert _wait_for(lambda: _validation_children(str(live)), 30), "no validation child started"
        n = len(dev.rx)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        dev.pump(0.2)
        tail = dev.rx[n:]
        assert [p.values[0] for p in tail if p.type == P.ACTUATE][-1] == 0.0
        assert int([p for p in tail if p.type == P.STATUS][-1].values[0]) == P.MODE_SAFE
        assert _wait_for(lambda: not _validation_children(str(live)), 10), (
            "validation child outlived the node"
        )
    finally:
        proc.kill()
        dev.pty.close()


def _sigterm_caught(pid: int) -> bool:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    except OSError:
        pass
    return False


def test_sigterm_while_starting_exits_zero_with_a_log_line(tmp_path):
    dev = Dev()
    cfgp = _cfg(tmp_path, dev.pty.node_port)
    proc = _popen_run(cfgp)
    try:
        t0 = time.monotonic()
        assert _wait_for(lambda: _sigterm_caught(proc.pid), 30)
        caught_after = time.monotonic() - t0
        proc.send_signal(signal.SIGTERM)  # the model is still loading
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
        assert b"stopped by a signal while starting" in err
        dev.pump(0.1)
        assert dev.rx == []  # the port was never opened: nothing commanded
        print(f"SIGTERM handler installed {caught_after:.2f} s after exec")
    finally:
        proc.kill()
        dev.pty.close()


def test_sigterm_during_connect_retries_exits_promptly(tmp_path):
    cfgp = _cfg(tmp_path, str(tmp_path / "no-such-tty"), reconnect={"min_s": 5.0, "max_s": 10.0})
    log = tmp_path / "err.txt"
    with open(log, "wb") as f:
        proc = _popen_run(cfgp, stderr=f)
    try:
        assert _wait_for(lambda: b"cannot open" in log.read_bytes(), 60)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - t0 < 3.0  # not after the 5 s back-off
    finally:
        proc.kill()


# ----------------------------------------------------------------------------- run CLI


def test_run_fail_fast_one_line_error(tmp_path):
    cfgp = _cfg(tmp_path, str(tmp_path / "no-such-tty"))
    proc = _popen_run(cfgp, "--fail-fast")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    lines = [ln for ln in err.decode().splitlines() if "error:" in ln]
    assert len(lines) == 1 and "serial.port" in lines[0] and "no-such-tty" in lines[0], err.decode()
    assert "Traceback" not in err.decode()


def test_run_seconds_is_honoured_while_retrying(tmp_path):
    cfgp = _cfg(tmp_path, str(tmp_path / "no-such-tty"), reconnect={"min_s": 0.1, "max_s": 0.5})
    t0 = time.monotonic()
    proc = _popen_run(cfgp, "--seconds", "1.5")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert b"cannot open" in err and time.monotonic() - t0 < 60


def test_run_check_ok_opens_no_port(tmp_path):
    dev = Dev()
    try:
        proc = _popen_run(_cfg(tmp_path, dev.pty.node_port), "--check")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        assert out.decode().startswith("ok: ") and "4 inputs, 1 outputs" in out.decode()
        dev.pump(0.1)
        assert dev.rx == []
    finally:
        dev.pty.close()


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d["inputs"].pop(), "config has 3 inputs / 1 outputs but model"),
        (lambda d: d["inputs"][2].update(scale=1.0), "training normalisation"),
        (lambda d: d.update(model="missing.onnx"), "missing.onnx"),
    ],
    ids=["sizes", "normalisation", "missing-model"],
)
def test_run_check_mismatch_exits_2(tmp_path, edit, match):
    cfgp = _cfg(tmp_path, "/dev/null-not-opened")
    data = yaml.safe_load(cfgp.read_text())
    edit(data)
    cfgp.write_text(yaml.safe_dump(data))
    proc = _popen_run(cfgp, "--check")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (out, err)
    assert match in err.decode() and "Traceback" not in err.decode()


# ----------------------------------------------------------------------------- property


@pytest.fixture(scope="module")
def shared_policy():
    return load(MODEL, backend="cpu")


def _frame(kind, draw_vals, seq, t_us):
    if kind == "corrupt":
        return draw_vals
    return P.encode_frame(kind[0], seq, t_us, draw_vals)


FLOAT32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
SANE = st.floats(-0.5, 0.5, width=32)
FRAMES = st.one_of(
    st.tuples(st.just((P.SENSOR,)), st.lists(SANE, min_size=4, max_size=4)),
    st.tuples(st.just((P.SENSOR,)), st.lists(FLOAT32, min_size=4, max_size=4)),
    st.tuples(st.just((P.SENSOR,)), st.lists(SANE, min_size=0, max_size=8)),
    st.tuples(st.just((P.SENSOR,)), st.lists(st.sampled_from([1e38, -1e30, 3e4]), min_size=4, max_size=4)),
    st.tuples(st.just((P.HELLO,)), st.lists(FLOAT32, min_size=0, max_size=4)),
    st.tuples(st.just((P.HELLO,)), st.just([4.0, 1.0, 100.0])),
    st.tuples(st.just((P.ACTUATE,)), st.lists(FLOAT32, max_size=3)),
    st.tuples(st.just("corrupt"), st.binary(max_size=40).map(lambda b: b + b"\x00")),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.tuples(FRAMES, st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFF)), max_size=25))
def test_input_side_never_raises_and_every_cycle_ends_in_a_defined_command(tmp_path, shared_policy, frames):
    dev = Dev()
    cfg = load_config(_cfg(tmp_path, dev.pty.node_port, failsafe={"arm_after": 1, "hold_cycles": 2}))
    node = Node(cfg, shared_policy)
    lo, hi = cfg.outputs[0].clip
    try:
        assert node._connect()
        for (kind, vals), t_us, seq in frames:
            n_before = len(dev.actuations())
            stale = node.rx.duplicates + node.rx.reordered
            dev.send(None, None, raw=_frame(kind, vals, seq, t_us))
            node._poll(0.05)  # the loop's own input path; anything raised here would end run()
            node._check_timeout(time.monotonic_ns())
            dev.pump(0.002)
            acts = dev.actuations()
            assert acts, "the actuators never got a defined command"
            last = acts[-1].values
            assert len(last) == 1 and math.isfinite(last[0]) and lo <= last[0] <= hi
            if node.mode == P.MODE_SAFE:
                assert last[0] == cfg.outputs[0].failsafe
            fresh = node.rx.duplicates + node.rx.reordered == stale
            if kind == (P.SENSOR,) and fresh and node.mode in (P.MODE_RUN, P.MODE_HOLD):
                assert any(p.ref_seq == seq for p in acts[n_before:])  # this cycle was answered
    finally:
        node._shutdown()
        dev.pty.close()


NUM_TEXT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "4.9", "0x10", "", "--1", "9" * 400]),
    st.integers(-(2**40), 2**40).map(str),
)
LINES = st.one_of(
    st.lists(st.floats(-0.5, 0.5), min_size=4, max_size=4).map(lambda v: "S 0 " + " ".join(map(repr, v))),
    st.lists(NUM_TEXT, max_size=6).map(lambda v: "S " + " ".join(v)),
    st.lists(NUM_TEXT, max_size=4).map(lambda v: "H " + " ".join(v)),
    st.just("H 4 1 100"),
    st.text(st.characters(min_codepoint=1, max_codepoint=255, blacklist_characters="\n"), max_size=30),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINES, max_size=25))
def test_text_input_side_never_raises_and_commands_stay_defined(tmp_path, shared_policy, lines):
    dev = TextDev()
    cfg = load_config(_cfg(tmp_path, dev.pty.node_port, failsafe={"arm_after": 1, "hold_cycles": 2}))
    cfg.protocol = "text"
    node = Node(cfg, shared_policy)
    lo, hi = cfg.outputs[0].clip
    try:
        assert node._connect()
        for line in lines:
            dev.pty.write(line.encode("latin-1") + b"\n")
            node._poll(0.05)
            node._check_timeout(time.monotonic_ns())
            dev.pump(0.002)
            acts = [ln.split() for ln in dev.lines if ln.startswith("A ")]
            assert acts, "the actuators never got a defined command"
            u = float(acts[-1][2])
            assert len(acts[-1]) == 3 and math.isfinite(u) and lo <= u <= hi
            if node.mode == P.MODE_SAFE:
                assert u == cfg.outputs[0].failsafe
    finally:
        node._shutdown()
        dev.pty.close()
