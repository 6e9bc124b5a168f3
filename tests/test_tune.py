"""``edgeliquid tune``: every solver x unfolds against the trained integration."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import random_model

from edgeliquid.cli.main import main
from edgeliquid.hil.demo import run_demo
from edgeliquid.model.convert import convert, convert_file, trained_integration
from edgeliquid.model.file import read
from edgeliquid.model.guarantees import max_substep, stability
from edgeliquid.node.recorder import FlightRecorder, read_recording
from edgeliquid.observe.tune import json_rows, random_stream, recording_stream, tune
from edgeliquid.runtime.policy import from_model

ROOT = Path(__file__).resolve().parents[1]
CARTPOLE = ROOT / "edgeliquid" / "data" / "cartpole_ncp.onnx"
FUSED = "fused_semi_implicit_euler"
KEYS = {"solver", "unfolds", "max_abs_err", "rel_err", "us_per_step", "stable", "pareto", "chosen"}


def reference_rel_err(model, stream, trained) -> float:
    """The relative error recomputed independently: numpy reference, float64, step by step."""

    def outputs(m):
        p = from_model(m, "reference", np.float64)
        ys = []
        for t in range(len(stream.xs)):
            if t == 0 or stream.resets[t]:
                p.reset()
            ys.append(p.step(stream.xs[t], stream.elapsed[t]).copy())
        return np.array(ys)

    got, want = outputs(model), outputs(trained)
    return float((np.abs(got - want).max(axis=0) / np.abs(want).max(axis=0)).max())


def eligible(r):
    return r.stable and r.rel_err is not None


@pytest.fixture(scope="module")
def random_case():
    """A random LTC model at an elapsed time 1.5x explicit Euler's one-unfold bound: a mix of
    stable and unstable explicit candidates."""
    m = random_model(np.random.default_rng(3), units=8, n_in=3, motors=2)
    e = 1.5 * max_substep(m, "explicit_euler")
    stream = random_stream(m, 150, elapsed=e, seed=1)
    return m, stream, tune(m, stream, max_unfolds=4, tolerance=1e-3, repeats=2, block=50)


def test_table_has_every_candidate_and_the_trained_baseline(random_case):
    m, _, r = random_case
    rows = r["candidates"]
    grid = {(c.solver, c.unfolds) for c in rows}
    assert grid == {(s, n) for s in (FUSED, "explicit_euler", "rk4") for n in range(1, 5)} | {(FUSED, 6)}
    (t,) = [c for c in rows if c.trained]
    assert (t.solver, t.unfolds, t.max_abs_err, t.rel_err, t.speedup) == (FUSED, 6, 0.0, 0.0, 1.0)
    assert all(c.us_per_step > 0 for c in rows)
    assert all(KEYS <= set(d) for d in json_rows(r))


def test_stable_is_the_theorem1_bound_at_the_streams_elapsed(random_case):
    m, stream, r = random_case
    for c in r["candidates"]:
        bound = stability(convert(m, c.solver, c.unfolds))[c.solver]["max_elapsed"]
        assert c.stable == (stream.elapsed.max() <= bound)
    by = {(c.solver, c.unfolds): c for c in r["candidates"]}
    assert not by["explicit_euler", 1].stable and by["explicit_euler", 2].stable
    assert not by["rk4", 1].stable and by["rk4", 2].stable and by[FUSED, 1].stable


def test_errors_match_an_independent_reference_run(random_case):
    m, stream, r = random_case
    trained = convert(m, FUSED, 6)
    by = {(c.solver, c.unfolds): c for c in r["candidates"]}
    for key in [("rk4", 2), ("explicit_euler", 3), (FUSED, 2)]:
        want = reference_rel_err(convert(m, *key), stream, trained)
        assert by[key].rel_err == pytest.approx(want, rel=1e-9)
    # RK4 and Euler converge to the same ODE solution, away from the fused scheme's
    assert by["rk4", 4].rel_err == pytest.approx(by["explicit_euler", 4].rel_err, rel=0.5)


def test_pareto_front_is_exactly_the_undominated_stable_candidates(random_case):
    _, _, r = random_case
    rows = r["candidates"]

    def dominated(a):
        return any(
            b is not a
            and eligible(b)
            and b.rel_err <= a.rel_err
            and b.us_per_step <= a.us_per_step
            and (b.rel_err < a.rel_err or b.us_per_step < a.us_per_step)
            for b in rows
        )

    for a in rows:
        assert a.pareto == (eligible(a) and not dominated(a)), a
    assert any(a.pareto for a in rows)


def test_chosen_is_the_cheapest_stable_candidate_within_tolerance(random_case):
    _, _, r = random_case
    fits = [c for c in r["candidates"] if eligible(c) and c.rel_err <= r["tolerance"]]
    chosen = [c for c in r["candidates"] if c.chosen]
    assert chosen == [r["chosen"]] and r["chosen"] in fits
    assert r["chosen"].us_per_step == min(c.us_per_step for c in fits)


def test_cli_json_plot_and_output_file_on_the_shipped_policy(tmp_path, capsys):
    out, png = tmp_path / "best.onnx", tmp_path / "tune.png"
    argv = ["tune", str(CARTPOLE), "--random", "120", "--max-unfolds", "3", "--repeats", "2"]
    assert main([*argv, "--tolerance", "0.6", "--json", "--plot", str(png), "-o", str(out)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert isinstance(rows, list) and all(KEYS <= set(d) for d in rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (c,) = [d for d in rows if d["chosen"]]
    assert c["stable"] and c["rel_err"] <= 0.6
    # the written file is that candidate, and reproduces its error
    m, src = read(out), read(CARTPOLE)
    assert (m.config.solver, m.config.ode_unfolds) == (c["solver"], c["unfolds"])
    assert trained_integration(m) == (FUSED, 6)
    stream = random_stream(src, 120, 1.0, 0)
    assert reference_rel_err(m, stream, src) == pytest.approx(c["rel_err"], rel=1e-9, abs=1e-15)
    # the text table names the choice
    assert main([*argv, "--tolerance", "0.6"]) == 0
    text = capsys.readouterr().out
    # the choice is timed (fastest within tolerance): a second run on a busy machine may pick
    # another candidate that fits, so the text must name one of those
    fits = [f"{d['solver']}, {d['unfolds']} unfolds" for d in rows if d["stable"] and d["rel_err"] <= 0.6]
    assert any(f in text for f in fits) and "Pareto" in text, text


def test_a_converted_file_is_tuned_against_its_trained_integration(tmp_path, capsys):
    conv = tmp_path / "rk4.onnx"
    convert_file(CARTPOLE, conv, "rk4", 2)
    assert main(["tune", str(conv), "--random", "40", "--max-unfolds", "2", "--repeats", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    (t,) = [d for d in rows if d["trained"]]
    assert (t["solver"], t["unfolds"], t["max_abs_err"]) == (FUSED, 6, 0.0)
    assert {(d["solver"], d["unfolds"]) for d in rows} >= {("rk4", 2), (FUSED, 1)}


@pytest.fixture(scope="module")
def demo_recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("tune") / "demo.mcap"
    s = run_demo(seconds=3, seed=11, noise=0.002, jitter=0.2, live=False, record=str(path))
    assert s["balanced"] and s["recording"] == str(path)
    return path


def test_tune_on_a_flight_recording_uses_its_steps_and_elapsed(demo_recording):
    model = read(CARTPOLE)
    stream = recording_stream(demo_recording, model)
    steps = read_recording(demo_recording)["steps"]
    assert len(stream.xs) == len(steps) > 200 and stream.resets[0]
    np.testing.assert_array_equal(stream.elapsed, [s["elapsed"] for s in steps])
    assert stream.elapsed.max() > np.median(stream.elapsed)  # the jittery bus: elapsed varies
    r = tune(model, stream, solvers=(FUSED,), max_unfolds=2, repeats=1, block=50)
    assert r["steps"] == len(steps) and r["elapsed"]["max"] == stream.elapsed.max()
    by = {(c.solver, c.unfolds): c for c in r["candidates"]}
    assert by[FUSED, 2].rel_err == pytest.approx(
        reference_rel_err(convert(model, FUSED, 2), stream, model), rel=1e-9
    )


def test_cartpole_policy_has_no_cheaper_integration_within_tolerance(demo_recording):
    """Issue #15 asks for a candidate >= 2x cheaper per step than the trained 6-unfold fused
    solver, within tolerance, that still balances. The shipped policy has none (BENCHMARKS.md,
    "Solver choice"): its fastest neuron's time constant is ~0.003 model time units, so the
    explicit schemes are unstable at the recorded ~1.0 elapsed with any affordable number of
    unfolds, and the trained fused solver's own discretisation error at 6 unfolds is a few
    percent of the output, so any other number of unfolds moves the output by more than 1e-3."""
    model = read(CARTPOLE)
    r = tune(
        model, recording_stream(demo_recording, model), max_unfolds=6, tolerance=1e-3, repeats=2, block=50
    )
    rows = r["candidates"]
    assert all(not c.stable for c in rows if c.solver != FUSED)
    assert all(c.rel_err > 1e-3 for c in rows if c.solver == FUSED and not c.trained)
    assert r["chosen"].trained  # so nothing new to fly: the closed-loop test already covers it
    bound = stability(model)["rk4"]["max_substep"]
    assert math.ceil(r["elapsed"]["max"] / bound) > 100  # unfolds RK4 would need: > 400 evaluations


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    cfc = ROOT / "edgeliquid" / "data" / "cartpole_cfc.onnx"
    wrong = tmp_path / "two_inputs.mcap"
    rec = FlightRecorder(wrong, 2, 1, 1, {"model": "m"})
    rec.start()
    for k in range(5):
        rec.record_step(k + 1, k * 1000, 1.0, 0, k == 0, (0.1, 0.2), (0.3,), (0.4,), (k, k, k, k, k))
    rec.close()
    cases = [
        ([str(CARTPOLE), "--input", str(tmp_path / "none.mcap")], "no such recording"),
        ([str(CARTPOLE), "--input", str(wrong)], "holds 2 inputs per step"),
        ([str(cfc), "--random", "10"], "CfC model has no ODE solver"),
        ([str(CARTPOLE), "--random", "10", "-o", str(CARTPOLE)], "is the input model itself"),
        ([str(CARTPOLE), "--random", "10", "-o", str(tmp_path / "no" / "x.onnx")], "does not exist"),
    ]
    for argv, match in cases:
        assert main(["tune", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("edgeliquid tune: error:") and match in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit):
        main(["tune", str(CARTPOLE), "--input", str(wrong), "--random", "5"])  # one stream or the other
