"""edgeliquid fleet replay, in-process: a real demo recording, recorder-written ones, bad files."""

from __future__ import annotations

import json
import sys
import threading

import pytest
from fleet_helpers import MODEL, write_recording

from edgeliquid.cli.main import main
from edgeliquid.errors import BackendError
from edgeliquid.fleet.engine import Engine, TaskFailure
from edgeliquid.fleet.replay import fleet_replay
from edgeliquid.hil.demo import run_demo
from edgeliquid.model.file import read, save


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet")
    s = run_demo(seconds=2, seed=5, live=False, record=str(d / "demo.mcap"))
    assert s["recording"]
    write_recording(d / "same.mcap", seed=1)
    write_recording(d / "json.mcap", seed=2, encoding="json")
    write_recording(d / "small.mcap", seed=3, perturb_at=200, perturb=0.01)
    write_recording(d / "big.mcap", seed=4, perturb_at=120, perturb=0.3)
    (d / "notes.mcap").write_text("not a recording\n")
    return d


@pytest.fixture(scope="module")
def report(fleet_dir):
    return fleet_replay([str(fleet_dir)], str(MODEL), threshold=0.05, worst=2, progress=False)


def by_name(r):
    return {p["recording"].rsplit("/", 1)[-1]: p for p in r["per_recording"]}


def test_recorded_model_reproduces_its_recordings_exactly(report):
    rows = by_name(report)
    for name in ("demo.mcap", "same.mcap", "json.mcap"):
        assert all(ch["max_abs_diff"] == 0 for ch in rows[name]["channels"]), name
        assert rows[name]["first_divergence_step"] is None
    assert rows["demo.mcap"]["encoding"] == "protobuf" and rows["json.mcap"]["encoding"] == "json"


def test_divergences_found_where_they_start_and_ranked(report):
    rows = by_name(report)
    small, big = rows["small.mcap"], rows["big.mcap"]
    assert small["first_step_over"] is None and small["first_divergence_step"] == 200
    assert abs(small["channels"][0]["max_abs_diff"] - 0.01) < 1e-6
    assert big["first_step_over"] == 120 and big["channels"][0]["first_step_over"] == 120
    assert big["channels"][0]["frac_over"] == pytest.approx(180 / 300)
    assert big["first_divergence_s"] == pytest.approx(1.2)  # 10 ms a step
    f = report["fleet"]
    assert [w["recording"].rsplit("/", 1)[-1] for w in f["worst"]] == ["big.mcap", "small.mcap"]
    assert f["channels"][0]["recordings_over"] == 1
    assert f["channels"][0]["max_abs_diff"] == big["channels"][0]["max_abs_diff"]
    assert 0.3 <= f["channels"][0]["p99_abs_diff"] <= 0.3 * 1.05


def test_unreadable_recording_is_reported_and_skipped(report):
    bad = [u for u in report["unreadable"] if u["recording"].endswith("notes.mcap")]
    assert len(bad) == 1 and "text file" in bad[0]["error"]
    assert report["fleet"]["recordings"] == 5 and report["fleet"]["unreadable"] == 1


def test_baseline_and_perturbed_candidate(fleet_dir, tmp_path):
    m = read(MODEL)
    m.params["w"] = m.params["w"] * 1.01
    save(m, tmp_path / "cand.onnx")
    r = fleet_replay(
        [str(fleet_dir / "same.mcap")], str(tmp_path / "cand.onnx"), baseline=str(MODEL), progress=False
    )
    assert r["compared_with"] == "baseline"
    assert r["fleet"]["channels"][0]["max_abs_diff"] > 0
    same = fleet_replay([str(fleet_dir / "big.mcap")], str(MODEL), baseline=str(MODEL), progress=False)
    assert same["fleet"]["channels"][0]["max_abs_diff"] == 0  # on the same inputs, not the recorded outputs


def test_cli_json_plot_and_progress(fleet_dir, tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    argv = ["fleet", "replay", str(fleet_dir / "*.mcap"), "--model", str(MODEL), "--worst", "1"]
    assert main(argv + ["--json", str(out), "--plot", str(png)]) == 0
    cap = capsys.readouterr()
    assert "fleet replay: 1/1 tasks" in cap.err and "steps/s" in cap.err and "ETA" in cap.err
    assert "big.mcap" in cap.out and "skipped" in cap.out
    r = json.loads(out.read_text())
    assert len(r["fleet"]["worst"]) == 1 and png.stat().st_size > 10_000


def test_a_task_failing_twice_is_reported_and_a_flaky_one_retried():
    calls = []

    def flaky(t):
        calls.append(t)
        if t == "always" or calls.count(t) == 1:
            raise RuntimeError(f"boom {t}")
        return t

    out = Engine().map(flaky, ["once", "always"])
    assert out[0] == "once" and out[1] == TaskFailure(1, "RuntimeError: boom always")


def test_two_stage_tasks_overlap_keep_order_and_retry_once():
    """In-process, prepare(task i+1) runs while fn(task i) does: fn(0) returns only once
    prepare(1) has started. Results stay in task order; a failure in either stage retries the
    whole task once (both stages), a second failure is a TaskFailure."""
    started = {i: threading.Event() for i in range(4)}
    calls = []

    def prepare(t):
        calls.append(("prepare", t))
        started[t].set()
        if t == 2 and calls.count(("prepare", 2)) == 1:
            raise OSError("prepare 2 once")
        return t * 10

    def fn(x):
        t = x // 10
        calls.append(("fn", t))
        if t + 1 in started:
            assert started[t + 1].wait(10), "the next task was not prepared meanwhile"
        if t == 3:
            raise RuntimeError("fn 3 always")
        return x + 1

    out = Engine().map(fn, [0, 1, 2, 3], prepare=prepare)
    assert out[:3] == [1, 11, 21] and out[3] == TaskFailure(3, "RuntimeError: fn 3 always")
    assert calls.count(("prepare", 2)) == 2 and calls.count(("fn", 3)) == 2  # one retry each


def test_missing_ray_is_one_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(BackendError, match=r"pip install -e '\.\[fleet\]'"):
        Engine("local")
    assert main(["fleet", "replay", "x.mcap", "--model", str(MODEL), "--ray"]) == 2
    assert "edgeliquid fleet: error: --ray needs Ray" in capsys.readouterr().err
