"""Realtime settings (refusals are warnings) and the wake-up probe's tick accounting."""

import json
import logging
import os
import struct
import subprocess
import sys

import pytest

from edgeliquid.node import realtime

LATENCY = realtime.CPU_LATENCY_PATH


def test_refused_settings_are_warnings_not_failures(caplog, tmp_path):
    caplog.set_level(logging.WARNING, logger="edgeliquid.node.realtime")
    missing = tmp_path / "no-such-device"
    assert realtime.hold_cpu_latency(0, str(missing)) is None
    held = realtime.apply(cpu=100_000)  # no such CPU
    held.release()
    text = caplog.text
    assert "realtime.cpu_dma_latency_us=0 refused" in text
    assert "realtime.cpu=100000 refused" in text


@pytest.mark.skipif(not os.access(LATENCY, os.W_OK), reason="needs a writable /dev/cpu_dma_latency")
def test_cpu_latency_request_holds_while_open():
    def current() -> int:
        with open(LATENCY, "rb") as f:
            return struct.unpack("i", f.read(4))[0]

    before = current()
    fd = realtime.hold_cpu_latency(0)
    assert fd is not None
    try:
        assert current() == 0
    finally:
        realtime.Held(qos_fd=fd).release()
    assert current() == before


def test_gc_freeze_is_undone_on_release():
    import gc

    held = realtime.apply(gc_freeze=True)
    assert not gc.isenabled()
    held.release()
    assert gc.isenabled()


@pytest.mark.parametrize("rate_hz", [500.0, 200_000.0])
def test_probe_accounts_for_every_tick(rate_hz):
    # Each period is either a tick taken or a tick missed, exactly, however busy the machine
    # (a late last wake-up counts the ticks it slept through); at 200 kHz (5 µs) a sleeping
    # Python loop cannot keep up, so the probe must report misses rather than hide them.
    seconds = 0.4
    r = realtime.probe_wakeups(rate_hz, seconds)
    assert r["ticks"] + r["missed"] == round(rate_hz * seconds)
    if rate_hz > 100_000:
        assert r["missed"] > r["ticks"]
    lat = r["lateness_us"]
    assert 0 <= lat["p50"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]


def test_cli_wakeup_reads_the_config_realtime_section(tmp_path):
    model = os.path.join(os.path.dirname(realtime.__file__), "data", "cartpole_ncp.onnx")
    cfg = tmp_path / "rt.yaml"
    cfg.write_text(
        f"model: {model}\nserial: {{port: 'loop://'}}\n"
        "inputs: [{name: a}, {name: b}, {name: c}, {name: d}]\n"
        "outputs: [{name: u, failsafe: 0}]\n"
        "realtime: {gc_freeze: false, spin_us: 50}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "edgeliquid", "profile", "--wakeup", "--seconds", "0.3", "--rate", "200"]
        + ["--config", str(cfg), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    r = json.loads(out)
    assert r["settings"]["spin_us"] == 50 and r["settings"]["gc_freeze"] is False
    assert r["ticks"] + r["missed"] == 60


def test_next_tick_skips_overruns_and_never_drifts():
    period = 1_000_000
    assert realtime.next_tick_after(5_200_000, 5_000_000, period) == (6_000_000, 0)  # on time
    assert realtime.next_tick_after(6_000_000, 5_000_000, period) == (7_000_000, 1)  # one late
    assert realtime.next_tick_after(8_500_000, 5_000_000, period) == (9_000_000, 3)  # no burst
    assert realtime.tick_wait_s(2_000_000, 1_000_000, 0.0003) == pytest.approx(0.0007)
    assert realtime.tick_wait_s(2_000_000, 1_800_000, 0.0003) == 0.0  # inside the spin window
    assert realtime.tick_wait_s(10**12, 0, 0.0) == 0.05  # capped


def test_ticks_due_counts_ticks_before_the_end():
    assert realtime.ticks_due(0, 10, 5) == 2  # ticks at 0 and 5
    assert realtime.ticks_due(0, 11, 5) == 3  # ... and 10
    assert realtime.ticks_due(12, 10, 5) == 0  # already past the end
