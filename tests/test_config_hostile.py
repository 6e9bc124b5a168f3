"""Hostile node configs (issue 11 items 6 and 9): every bad file is a one-line ConfigError
naming the file and the key, in bounded time and memory; inputs[].range and the clipped count."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import edgeliquid
from edgeliquid.errors import ConfigError
from edgeliquid.node.channels import ChannelMaps
from edgeliquid.node.config import MAX_CONFIG_BYTES, load_config, parse_config
from edgeliquid.runtime import kernels

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "cartpole_demo.yaml"
MODEL = ROOT / "edgeliquid" / "data" / "cartpole_ncp.onnx"
BASE = DEMO.read_text()
# Generous: the checks take milliseconds; the bound only has to separate them from the
# tens of seconds the unbounded loader took, on a busy machine.
FAST_S = 10.0


def _write(tmp_path: Path, text: str, name: str = "robot.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _data() -> dict:
    return yaml.safe_load(BASE)


def _dump(tmp_path: Path, data: dict) -> Path:
    return _write(tmp_path, yaml.safe_dump(data, sort_keys=False))


def _expect(path: Path, key: str) -> str:
    t = time.perf_counter()
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert time.perf_counter() - t < FAST_S
    msg = str(ei.value)
    assert msg.startswith(f"{path}: {key}: "), msg
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


def _in(data: dict, i: int = 0, **kw) -> dict:
    data["inputs"][i].update(kw)
    return data


def _out(data: dict, **kw) -> dict:
    data["outputs"][0].update(kw)
    return data


NAN, INF = math.nan, math.inf

# (key named in the error, edit of the demo config)
BAD_NUMBERS = [
    ("outputs[0].failsafe", lambda d: _out(d, failsafe=INF)),
    ("outputs[0].failsafe", lambda d: _out(d, failsafe=NAN)),
    ("outputs[0].failsafe", lambda d: _out(d, failsafe=10.5)),  # outside clip [-10, 10]
    ("outputs[0].failsafe", lambda d: _out(d, clip=None, failsafe=1e13)),
    ("outputs[0].offset", lambda d: _out(d, offset=INF)),
    ("outputs[0].offset", lambda d: _out(d, offset=-1e300)),
    ("outputs[0].scale", lambda d: _out(d, scale=NAN)),
    ("outputs[0].scale", lambda d: _out(d, scale=0)),
    ("outputs[0].clip", lambda d: _out(d, clip=[NAN, NAN])),
    ("outputs[0].clip", lambda d: _out(d, clip=[-INF, INF])),
    ("outputs[0].clip", lambda d: _out(d, clip=[1, -1])),
    ("outputs[0].clip", lambda d: _out(d, clip=[-1, "1"])),
    ("outputs[0].max_rate", lambda d: _out(d, max_rate=INF)),
    ("outputs[0].max_rate", lambda d: _out(d, max_rate=0)),
    ("inputs[1].offset", lambda d: _in(d, 1, offset=INF)),
    ("inputs[1].scale", lambda d: _in(d, 1, scale=-INF)),
    ("inputs[1].clip", lambda d: _in(d, 1, clip=[0, NAN])),
    ("inputs[2].range", lambda d: _in(d, 2, range=[NAN, 1])),
    ("inputs[2].range", lambda d: _in(d, 2, range=[-INF, INF])),
    ("inputs[2].range", lambda d: _in(d, 2, range=[1, 1])),
    ("inputs[2].range", lambda d: _in(d, 2, range=[2, 1])),
    ("inputs[2].range", lambda d: _in(d, 2, range=[0, 1, 2])),
    ("inputs[2].range", lambda d: _in(d, 2, range="wide")),
    ("loop.rate_hz", lambda d: d["loop"].update(rate_hz=1e-300) or d),
    ("loop.rate_hz", lambda d: d["loop"].update(rate_hz=0.01) or d),
    ("loop.rate_hz", lambda d: d["loop"].update(rate_hz=1e6) or d),
    ("loop.rate_hz", lambda d: d["loop"].update(rate_hz=INF) or d),
    ("loop.rate_hz", lambda d: d["loop"].update(rate_hz=NAN) or d),
    ("loop.model_dt", lambda d: d["loop"].update(model_dt=1e-300) or d),
    ("loop.model_dt", lambda d: d["loop"].update(model_dt=INF) or d),
    ("failsafe.sensor_timeout_ms", lambda d: d["failsafe"].update(sensor_timeout_ms=INF) or d),
    ("failsafe.sensor_timeout_ms", lambda d: d["failsafe"].update(sensor_timeout_ms=NAN) or d),
    ("failsafe.hold_cycles", lambda d: d["failsafe"].update(hold_cycles=INF) or d),
    ("failsafe.hold_cycles", lambda d: d["failsafe"].update(hold_cycles=10**12) or d),
    ("failsafe.arm_after", lambda d: d["failsafe"].update(arm_after=NAN) or d),
    ("failsafe.arm_after", lambda d: d["failsafe"].update(arm_after=10**9) or d),
    ("serial.baudrate", lambda d: d["serial"].update(baudrate=INF) or d),
    ("realtime.spin_us", lambda d: d["realtime"].update(spin_us=INF) or d),
    ("realtime.cpu", lambda d: d["realtime"].update(cpu=10**9) or d),
    ("realtime.cpu_dma_latency_us", lambda d: d["realtime"].update(cpu_dma_latency_us=NAN) or d),
    ("realtime.mlockall", lambda d: d["realtime"].update(mlockall="false") or d),
    ("stats_every_s", lambda d: d.update(stats_every_s=INF) or d),
    ("reconnect.max_s", lambda d: d.update(reconnect={"max_s": INF}) or d),
    ("reconnect.min_s", lambda d: d.update(reconnect={"min_s": 5.0, "max_s": 1.0}) or d),
    ("telemetry.rotate_mb", lambda d: d.update(telemetry={"path": "r.mcap", "rotate_mb": INF}) or d),
    ("telemetry.rotate_s", lambda d: d.update(telemetry={"path": "r.mcap", "rotate_s": NAN}) or d),
    ("telemetry.keep", lambda d: d.update(telemetry={"path": "r.mcap", "keep": 10**15}) or d),
    ("telemetry.path", lambda d: d.update(telemetry={"path": "r\0.mcap"}) or d),
    ("serial.port", lambda d: d["serial"].update(port="x" * 10_000) or d),
    ("inputs[1].name", lambda d: _in(d, 1, name="x")),  # duplicate channel name
    ("wobble", lambda d: d.update(wobble=1) or d),  # unknown top-level key
]


@pytest.mark.parametrize("key, edit", BAD_NUMBERS, ids=[f"{k}-{i}" for i, (k, _) in enumerate(BAD_NUMBERS)])
def test_bad_value_names_key_and_file(tmp_path, key, edit):
    _expect(_dump(tmp_path, edit(_data())), key)


def test_shipped_configs_still_load_and_carry_ranges():
    for p in [*ROOT.joinpath("configs").glob("*.yaml"), ROOT / "edgeliquid" / "data" / "cartpole_demo.yaml"]:
        cfg = load_config(p)
        assert all(c.range is not None for c in cfg.inputs), p
    example = (ROOT / "configs" / "robot_usb_example.yaml").read_text()
    assert "range: [low, high]" in example and "256 KiB" in example


def _replace(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new)


YAML_TEXT = [  # (key, text) for problems only the YAML text can have
    ("loop.rate_hz", _replace("rate_hz: 100 ", "rate_hz: " + "9" * 5001 + " ")),
    ("loop.rate_hz", _replace("rate_hz: 100 ", "rate_hz: !!int " + "1" * 41 + " ")),
    ("failsafe.hold_cycles", _replace("hold_cycles: 3", "hold_cycles: -0x" + "f" * 100)),
    ("telemetry.keep", BASE + "telemetry: {path: r.mcap, keep: " + "1_" * 100 + "1}\n"),
    ("loop.rate_hz", _replace("rate_hz: 100 ", "rate_hz: 2001-13-45 ")),  # a date PyYAML cannot build
    ("stats_every_s", BASE + "stats_every_s: 6\n"),  # duplicate key
    ("loop.mode", _replace("rate_hz: 100 ", "mode: fixed\n  rate_hz: 100 ")),  # duplicate key
    ("loop.rate_hz", _replace("rate_hz: 100 ", "rate_hz: &r 100 ")),  # anchor
    ("loop.model_dt", _replace("model_dt: 0.01", "model_dt: *r")),  # alias (undefined, too)
    ("x[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]", BASE + "x: " + "[" * 100_000 + "\n"),
    ("loop.mode", _replace("mode: event", "mode: " + "e" * 200_000)),
    ("loop.mode", _replace("mode: event", "mode: {" + ", ".join(f"k{i}: [1, 2]" for i in range(9000)) + "}")),
    (
        "loop." + ("wobble" * 7)[:37] + "...",
        _replace("rate_hz: 100 ", "wobble" * 160 + ": 1\n  rate_hz: 100 "),
    ),
    ("serial.1", _replace("serial:\n", "serial:\n  1: 2\n")),  # non-string key
]


@pytest.mark.parametrize("key, text", YAML_TEXT, ids=[f"{k[:20]}-{i}" for i, (k, _) in enumerate(YAML_TEXT)])
def test_hostile_yaml_names_key_and_file(tmp_path, key, text):
    assert len(text.encode()) <= MAX_CONFIG_BYTES
    msg = _expect(_write(tmp_path, text), key)
    assert len(msg) < 400


def test_unbounded_python_values_never_formatted_whole():
    """parse_config is public: values built in Python may be far larger than YAML allows."""
    for patch in (
        {"loop": {"rate_hz": 10**5000}},
        {"loop": {"mode": ["event"] * 1_000_000}},
        {"loop": {"mode": "e" * 10_000_000}},
        {"serial": {"port": "p", "protocol": {i: i for i in range(100_000)}}},
        {"outputs": [{"name": "f", "clip": [[[[1]]], 2]}]},
    ):
        data = _data()
        for k, v in patch.items():
            data[k] = {**data[k], **v} if isinstance(v, dict) else v
        t = time.perf_counter()
        with pytest.raises(ConfigError, match=r"^robot\.yaml: (loop|serial|outputs)") as ei:
            parse_config(data, "robot.yaml")
        assert time.perf_counter() - t < FAST_S and len(str(ei.value)) < 300, str(ei.value)[:500]


def test_mixed_type_unknown_keys_are_one_error():
    data = _data()
    data["serial"] = {**data["serial"], 1: 2, None: 3, "zz": 4}
    with pytest.raises(ConfigError, match=r"^robot\.yaml: serial\.\S+: unknown key"):
        parse_config(data, "robot.yaml")


# ------------------------------------------------------------------ bounded time and memory

_CHILD = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))
from edgeliquid.node.config import load_config
from edgeliquid.errors import ConfigError
out = []
for p in sys.argv[1:]:
    t = time.perf_counter()
    try:
        load_config(p)
        out.append([p, "ACCEPTED", 0.0])
    except ConfigError as exc:
        out.append([p, str(exc), time.perf_counter() - t])
print(json.dumps(out))
"""


def _run_limited(paths: list[str]) -> list[tuple[str, str, float]]:
    """load_config each path in a child with 512 MiB of address space and a time limit."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, *paths], capture_output=True, text=True, timeout=120, env=env
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return [tuple(x) for x in json.loads(r.stdout)]


def _laughs(levels: int = 9) -> str:
    """A billion-laughs flow value: 9 ** levels strings from a few hundred bytes."""
    parts = ['&l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        parts.append(f"&l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    return "[" + ", ".join(parts) + "]"


def test_alias_bombs_refused_fast_in_little_memory(tmp_path):
    bomb = _laughs()
    cases = {
        "loop.rate_hz": _replace("rate_hz: 100 ", f"rate_hz: {bomb} "),
        "loop.mode": _replace("mode: event", f"mode: {bomb}"),
        "serial.protocol": _replace("protocol: cobs", f"protocol: {bomb}"),
        "outputs[0].clip": _replace("clip: [-10, 10], failsafe", f"clip: {bomb}, failsafe"),
        "telemetry.keep": BASE + f"telemetry: {{path: r.mcap, keep: {bomb}}}\n",
        "<top level>": "&top [" + bomb + "]\n",
    }
    paths = {key: str(_write(tmp_path, text, f"bomb{i}.yaml")) for i, (key, text) in enumerate(cases.items())}
    t = time.perf_counter()
    results = _run_limited(list(paths.values()))
    assert time.perf_counter() - t < 60
    for (key, path), (p, msg, took) in zip(paths.items(), results):
        assert p == path
        assert msg.startswith(f"{path}: {key}"), msg
        assert "aliases" in msg and took < FAST_S, (msg, took)


def test_huge_and_endless_files_refused_unread(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "w") as f:
        f.write(BASE)
        chunk = "# " + "x" * (1 << 20) + "\n"
        for _ in range(100):  # 100 MiB of comment after a valid config
            f.write(chunk)
    small_but_over = _write(tmp_path, BASE + "#" * MAX_CONFIG_BYTES, "over.yaml")
    results = _run_limited([str(big), str(small_but_over), "/dev/zero"])
    for p, msg, took in results:
        assert msg.startswith(f"{p}: config file larger than 256 KiB"), msg
        assert took < FAST_S
    at_limit = BASE + "#" * (MAX_CONFIG_BYTES - len(BASE.encode()) - 1) + "\n"
    assert len(at_limit.encode()) == MAX_CONFIG_BYTES
    load_config(_write(tmp_path, at_limit, "at_limit.yaml"))  # the bound itself is allowed


def test_not_utf8_is_a_config_error(tmp_path):
    p = tmp_path / "robot.yaml"
    p.write_bytes(BASE.encode() + b"\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"robot\.yaml: not UTF-8"):
        load_config(p)


# ------------------------------------------------------------------ item 9: range and clipped


def _cfg(tmp_path, ranges: bool = True):
    data = _data()
    if not ranges:
        for ch in data["inputs"]:
            ch.pop("range", None)
    return load_config(_dump(tmp_path, data))


def test_in_range_checks_every_declared_range(tmp_path):
    maps = ChannelMaps(_cfg(tmp_path).inputs, _cfg(tmp_path).outputs)
    assert maps.in_range([0.0, 0.0, 0.1, 0.0])
    assert maps.in_range([100.0, -200.0, 1000.0, -1000.0])  # bounds are inside
    assert not maps.in_range([1e38, 0.0, 0.0, 0.0])
    assert not maps.in_range([0.0, 0.0, 0.0, -1000.5])
    assert not maps.in_range([0.0, math.nan, 0.0, 0.0])
    assert not maps.in_range([0.0, 0.0, math.inf, 0.0])
    assert not maps.in_range([0.0, 0.0])  # too few values: not a valid sample
    open_maps = ChannelMaps(_cfg(tmp_path, ranges=False).inputs, _cfg(tmp_path).outputs)
    assert open_maps.in_range([1e38, -1e38, 0.0, 0.0])  # no range declared: nothing to refuse


def test_in_range_costs_almost_nothing_without_ranges(tmp_path):
    cfg = _cfg(tmp_path, ranges=False)
    maps = ChannelMaps(cfg.inputs, cfg.outputs)
    values = (0.1, 0.2, 0.3, 0.4)
    n = 100_000
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            maps.in_range(values)
        best = min(best, (time.perf_counter() - t) / n)
    assert best < 5e-6, best  # a method call and one test (~0.1 us idle), not a loop over inputs


def _fused(policy, maps, raw, elapsed=1.0, dt_s=0.01) -> int:
    return kernels.control_step(
        np.asarray(raw, np.float64), elapsed, dt_s, maps.chan, maps.xbuf, policy._fp, policy._ip, policy._work
    )


def _numpy(policy, maps, raw, elapsed=1.0, dt_s=0.01) -> int:
    return maps.apply_numpy(policy, np.asarray(raw, np.float64), elapsed, dt_s)


# clips are x [-5, 5], x_dot [-10, 10], theta [-1.5, 1.5], theta_dot [-20, 20]
SEQUENCE = [
    ([0.0, 0.0, 0.1, 0.0], 0),
    ([6.0, 0.0, 0.1, -25.0], 2),
    ([5.0, -10.0, 1.5, 20.0], 0),  # exactly on the bounds: unchanged
    ([1e38, 0.0, -3.0, 0.0], 2),  # a glitching sensor: clipped, counted
    ([0.0, math.nan, 9.0, 0.0], 0),  # not finite: refused before counting
]


@pytest.mark.parametrize("path", ["fused", "numpy"])
def test_clipped_counts_on_both_paths(tmp_path, path):
    cfg = _cfg(tmp_path)
    backend, compute = ("cpu", _fused) if path == "fused" else ("reference", _numpy)
    policy = edgeliquid.load(MODEL, backend=backend)
    maps = ChannelMaps(cfg.inputs, cfg.outputs, policy.dtype)
    assert maps.clipped == 0
    total = 0
    for raw, changed in SEQUENCE:
        status = compute(policy, maps, raw)
        assert status == (kernels.STATUS_BAD_INPUT if math.isnan(sum(raw)) else kernels.STATUS_OK)
        total += changed
        assert maps.clipped == total, (raw, maps.clipped, total)
    assert total == 4


def test_fused_and_numpy_paths_agree(tmp_path):
    """The spare counter slot changed neither path's commands."""
    cfg = _cfg(tmp_path)
    fast, ref = edgeliquid.load(MODEL, backend="cpu"), edgeliquid.load(MODEL, backend="reference")
    a = ChannelMaps(cfg.inputs, cfg.outputs, fast.dtype)
    b = ChannelMaps(cfg.inputs, cfg.outputs, ref.dtype)
    a.command_failsafe(), b.command_failsafe()
    rng = np.random.default_rng(3)
    for _ in range(50):
        raw = rng.normal(0, [3, 6, 1, 15])
        assert _fused(fast, a, raw) == _numpy(ref, b, raw) == kernels.STATUS_OK
        np.testing.assert_allclose(a.u, b.u, rtol=1e-3, atol=1e-3)
    assert a.clipped == b.clipped > 0
