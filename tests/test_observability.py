"""Flight recorder, bit-exact replay and the profiler."""

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgeliquid.cli.main import main
from edgeliquid.hil.demo import run_demo
from edgeliquid.hil.sim import PtyMaster
from edgeliquid.model.file import read, save
from edgeliquid.node import protocol as P
from edgeliquid.node.recorder import FlightRecorder, read_recording
from edgeliquid.observe.profile import (
    baseline_table,
    percentiles,
    plot,
    profile_link,
    profile_recording,
    trace_tau,
    with_baseline,
)
from edgeliquid.observe.replay import replay

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "edgeliquid" / "data" / "cartpole_ncp.onnx"


def _record(rec, n, x=(0.1, 0.2), y=(0.3,), u=(0.4,)):
    for k in range(n):
        rec.record_step(k + 1, k * 1000, 1.0, 0, k == 0, x, y, u, (k, k + 1, k + 2, k + 3, k + 4))


def test_recorder_keeps_every_record_of_60s_at_1khz(tmp_path):
    rec = FlightRecorder(tmp_path / "r.mcap", 2, 1, 1, {"model": "m"})
    rec.start()
    _record(rec, 60_000)  # 60 s of 1 kHz steps, as fast as the loop can produce them
    rec.close()
    assert rec.dropped == 0 and rec.written == 60_000
    r = read_recording(tmp_path / "r.mcap")
    assert len(r["steps"]) == 60_000 and r["steps"][0]["reset"] == 1
    assert [s["seq"] for s in r["steps"][:3]] == [1, 2, 3] and r["metadata"]["model"] == "m"


class _SlowFile:
    """A file whose writes take 5 ms: the disk of a bad day."""

    def __init__(self, path):
        self.f = open(path, "wb")

    def write(self, b):
        time.sleep(0.005)
        return self.f.write(b)

    def __getattr__(self, k):
        return getattr(self.f, k)


def test_recorder_never_blocks_the_loop_and_counts_drops(tmp_path, monkeypatch):
    import builtins

    import edgeliquid.node.recorder as R

    real_open = builtins.open
    monkeypatch.setattr(
        R, "open", lambda p, m="r", *a, **k: _SlowFile(p) if "w" in m else real_open(p, m), raising=False
    )
    rec = FlightRecorder(tmp_path / "slow.mcap", 2, 1, 1, capacity=1024)
    rec.start()
    t = time.perf_counter()
    _record(rec, 20_000)
    spent = time.perf_counter() - t
    rec.close()
    # The writer needs minutes for this; the loop's calls returned at once, dropping what did
    # not fit in the ring, and counted it.
    assert spent < 5.0
    assert rec.dropped > 0 and rec.dropped + rec.written <= 20_000


def test_full_disk_is_survived_and_reported(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full not available")
    rec = FlightRecorder("/dev/full", 2, 1, 1, {})
    rec.start()
    _record(rec, 5000)
    rec.event("test", "after the disk filled")
    time.sleep(0.5)
    rec.close()
    assert rec.write_errors >= 1


def test_demo_with_a_full_disk_still_balances():
    s = run_demo(seconds=3, seed=4, live=False, record="/dev/full")
    assert s["balanced"] and s["steps"] > 250, {k: v for k, v in s.items() if k != "_device"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "demo.mcap"
    s = run_demo(seconds=4, seed=5, live=False, record=str(path), fault="stall")
    assert s["recording"] == str(path)
    return path, s


@pytest.fixture(scope="module")
def recorded_demo(demo_run):
    return demo_run[0]


def test_demo_and_profile_count_the_same_deadline_misses(demo_run):
    path, s = demo_run
    r = profile_recording(str(path))
    assert (r["deadline_misses"], r["ticks_missed"]) == (s["deadline_misses"], s["ticks_missed"])


def test_profile_says_which_steps_ran_in_the_compiled_frame_call(demo_run):
    r = profile_recording(str(demo_run[0]))
    # the demo's node runs the binary protocol on the cpu backend: its RUN cycles are compiled
    assert r["fused_share"] > 0.9
    assert r["stages"]["infer"]["p50"] > 0 and r["stages"]["decode"]["p50"] == 0


def test_replay_reproduces_demo_bit_for_bit(recorded_demo):
    r = replay(recorded_demo)
    assert r["same_model"] and r["bit_exact"] and r["first_divergent_step"] is None
    assert r["steps"] > 300 and r["resets"] >= 1  # the stall's recovery reset the state


def test_replay_reports_first_divergent_step_for_a_perturbed_model(recorded_demo, tmp_path):
    m = read(MODEL)
    m.params["w"] = m.params["w"] * 1.001
    save(m, tmp_path / "perturbed.onnx")
    r = replay(recorded_demo, model=tmp_path / "perturbed.onnx")
    assert not r["same_model"] and not r["bit_exact"]
    assert r["first_divergent_step"] is not None and r["max_abs_error"][0] > 0


def test_profile_recording_stages_and_events(recorded_demo, tmp_path, capsys):
    assert main(["profile", str(recorded_demo), "--json", "--plot", str(tmp_path / "rec.png")]) == 0
    d = json.loads(capsys.readouterr().out)
    for k in ("p50", "p90", "p99", "p99.9", "max"):
        assert k in d
    assert set(d["stages"]) == {"decode", "infer", "encode", "write", "total"}
    kinds = [e["kind"] for e in d["events"]]
    assert "failsafe" in kinds and "arm" in kinds
    assert (tmp_path / "rec.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_percentiles_of_a_known_distribution():
    r = percentiles(np.arange(1, 10001))
    assert (r["p50"], r["p90"], r["p99"], r["p99.9"], r["p99.99"], r["max"]) == (
        5000,
        9000,
        9900,
        9990,
        9999,
        10000,
    )
    r = percentiles(np.random.default_rng(0).exponential(100.0, 1_000_000))
    assert r["p50"] == pytest.approx(100 * np.log(2), rel=0.01)
    assert r["p99"] == pytest.approx(100 * np.log(100), rel=0.01)


def test_baseline_ratios():
    assert with_baseline({"p50": 2.0, "p99": 9.0}, {"p50": 1.0, "p99": 3.0}) == {
        "result": {"p50": 2.0, "p99": 3.0}
    }


def test_baseline_table_has_aligned_columns():
    text = baseline_table(
        {"backends.reference": {"p50": 1.01, "p99": 0.5}, "cpu": {k: 2.0 for k in ("p50", "p90", "max")}}
    )
    head, *rows = text.splitlines()[1:]
    assert head.split() == ["p50", "p90", "p99", "p99.9", "p99.99", "max"]
    assert rows[0].split() == ["backends.reference", "1.01", "-", "0.50", "-", "-", "-"]
    assert rows[1].split() == ["cpu", "2.00", "2.00", "-", "-", "-", "2.00"]
    # each value ends where its column's header ends
    for row in rows:
        assert [row.index(c) + len(c) for c in row.split()[1:2]] == [head.index("p50") + 3]
        assert len(row) == len(head)


def _synthetic_recording(path, gaps_ms, rate_hz=100.0):
    """Commands every 10 ms except the given gaps (index -> ms), with a fail-safe in between."""
    with FlightRecorder(path, 2, 1, 1, {"rate_hz": rate_hz, "model": "m"}) as rec:
        t = 1_000_000_000
        for k in range(200):
            t += int(gaps_ms.get(k, 10.0) * 1e6)
            if k == 100:
                rec.event("failsafe", "mode HOLD -> SAFE (sensor timeout)")
            rec.record_step(
                k + 1, k * 10_000, 1.0, 0, k == 0, (0.0, 0.0), (0.0,), (0.0,), (t, t, t, t, t + 50_000)
            )
            time.sleep(0.0005)


def test_profile_counts_misses_by_the_shared_definition(tmp_path, capsys):
    path = tmp_path / "gaps.mcap"
    # 14 ms: late but within 1.5 periods (no miss); 30 ms: 1 miss of 2 ticks; 100 ms: 9 ticks
    _synthetic_recording(path, {50: 14.0, 80: 30.0, 150: 100.0})
    r = profile_recording(str(path))
    assert (r["deadline_misses"], r["ticks_missed"]) == (2, 11)
    assert len(r["miss_times_s"]) == 2 and r["miss_times_s"][0] < r["miss_times_s"][1]
    assert main(["profile", str(path)]) == 0
    assert "2 deadline misses, 11 ticks missed" in capsys.readouterr().out


def test_profile_plot_of_a_recording_draws_what_readme_promises(tmp_path):
    path = tmp_path / "gaps.mcap"
    _synthetic_recording(path, {80: 35.0})
    titles = plot(profile_recording(str(path)), str(tmp_path / "r.png"))
    joined = " | ".join(titles)
    for promised in ("latency per stage", "loop period", "deadline misses", "fail-safe / reconnect timeline"):
        assert promised in joined, titles
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_baseline_prints_separated_columns(tmp_path, capsys):
    path = tmp_path / "gaps.mcap"
    _synthetic_recording(path, {})
    assert main(["profile", str(path), "--json"]) == 0
    (tmp_path / "base.json").write_text(capsys.readouterr().out)
    assert main(["profile", str(path), "--baseline", str(tmp_path / "base.json")]) == 0
    out = capsys.readouterr().out
    table = out[out.index("ratio to baseline") :].splitlines()[1:]
    assert table[0].split() == ["p50", "p90", "p99", "p99.9", "p99.99", "max"]
    rows = {r.split()[0]: r.split()[1:] for r in table[1:]}
    assert "stages.total" in rows and rows["stages.total"] == ["1.00"] * 6
    assert main(["profile", str(path), "--baseline", str(tmp_path / "nope.json")]) == 2


def _responder(pty, stall_at, drop_every, stop):
    """A node stand-in: answers each SENSOR with an ACTUATE, once stalls 5 ms, drops some."""
    split = P.Packetizer()
    n = 0
    while not stop.is_set():
        pty.timeout = 0.01
        for fr in split.feed(pty.read(4096)):
            pkt = P.decode_frame(fr)
            if pkt.type == P.HELLO:
                pty.write(P.encode_frame(P.HELLO, 1, 0, [3.0, 1.0, 1000.0]))
            elif pkt.type == P.SENSOR:
                n += 1
                if n == stall_at:
                    time.sleep(0.005)
                if n % drop_every == 0:
                    continue
                pty.write(P.encode_frame(P.ACTUATE, n, 0, [0.0], ref_seq=pkt.seq))


def test_link_profile_sees_a_stall_as_a_tail_and_drops_as_losses():
    pty = PtyMaster()
    stop = threading.Event()
    th = threading.Thread(target=_responder, args=(pty, 500, 200, stop), daemon=True)
    th.start()
    try:
        r = profile_link(pty.node_port, rate_hz=1000, seconds=2.0)
    finally:
        stop.set()
        th.join(2)
        pty.close()
    assert r["sent"] > 1500
    assert r["lost"] >= r["sent"] // 200 - 1
    assert r["max"] >= 5000  # the stall is in the tail
    # Coordinated omission: a 5 ms stall at a 1 ms period hid at least 4 sends; the corrected
    # histogram adds them back (4, 3, 2, 1 ms). Those lie below the stall, so they may lower
    # the very top percentile slightly; no percentile inequality is asserted for that reason.
    assert r["corrected_count"] - r["answered"] >= 4


def test_trace_tau_within_theorem1(tmp_path, capsys):
    r = trace_tau(str(MODEL), steps=200)
    assert r["within_theorem1_bounds"]
    assert main(["profile", str(MODEL), "--trace-tau", "--plot", str(tmp_path / "tau.png")]) == 0
    assert (tmp_path / "tau.png").read_bytes()[:4] == b"\x89PNG"


def test_profile_policy_json_and_plot(tmp_path, capsys):
    assert main(["profile", str(MODEL), "--steps", "500", "--json", "--plot", str(tmp_path / "p.png")]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {"cpu", "reference"} <= set(d["backends"])
    assert {"p50", "p90", "p99", "p99.9", "max", "cold_first_call"} <= set(d["backends"]["cpu"])
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_recorder_rotates_by_size_and_keeps_the_last_n(tmp_path):
    rec = FlightRecorder(tmp_path / "rot.mcap", 2, 1, 1, {}, rotate_mb=0.02, keep=2)
    rec.start()
    for _ in range(6):
        _record(rec, 300)
        time.sleep(0.15)  # let the writer drain and rotate between bursts
    rec.close()
    files = sorted(tmp_path.glob("rot*.mcap"))
    assert len(files) == 2 and rec.files == [f for f in rec.files if f.exists()]
    assert rec.dropped == 0
    total = sum(len(read_recording(f)["steps"]) for f in files)
    assert 0 < total < 1800  # older files were deleted: only the last two remain
