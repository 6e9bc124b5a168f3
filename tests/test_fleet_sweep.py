"""edgeliquid fleet sweep, in-process: the vectorised plant, the grid YAML, the rollouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fleet_helpers import MODEL

from edgeliquid.cli.main import main
from edgeliquid.errors import ConfigError
from edgeliquid.fleet import plant
from edgeliquid.fleet import sweep as sw
from edgeliquid.fleet.grid import load_grid
from edgeliquid.hil.sim import CartPole

CFC = MODEL.parent / "cartpole_cfc.onnx"


def test_vectorised_plant_equals_the_simulator_step_for_step():
    rng = np.random.default_rng(0)
    sims = [CartPole(np.random.default_rng(i), 0.05) for i in range(3)]
    states = np.array([s.s for s in sims])
    params = plant.default_params(3)
    alive = np.ones(3, bool)
    for _ in range(400):
        f, dt = rng.uniform(-15, 15, 3), 0.01 * (1 + 0.3 * rng.uniform(-1, 1, 3))
        for b, s in enumerate(sims):
            s.step(f[b], dt[b])
        plant.step(states, f, dt, params, alive)
        assert np.array_equal(states, np.array([s.s for s in sims]))
    assert abs(states[:, 2]).max() > 0.5  # random forces knocked the poles over: not a trivial check


def test_plant_parameters_and_friction_change_the_motion():
    s = np.zeros((3, 4))
    p = plant.default_params(3)
    p[1, plant.P_FRICTION] = 5.0
    p[2, plant.P_FMAX] = 1.0
    for _ in range(100):
        plant.step(s, np.full(3, 10.0), np.full(3, 0.01), p, np.ones(3, bool))
    assert s[0, 1] > s[1, 1] > 0 and s[0, 1] > s[2, 1] > 0


def grid_file(tmp_path, text, name="g.yaml"):
    f = tmp_path / name
    f.write_text(text)
    return f


@pytest.mark.parametrize(
    "text,match",
    [
        ("grid: {noise: [0, 1], wind: [1]}", "unknown axis 'wind'"),
        ("grid: {noise: [0, -1]}", r"grid.noise\[1\]: -1 is outside"),
        ("grid: {delay_steps: [1.5]}", "expected an integer"),
        ("grid: {noise: [0.1]}\nspeed: 3", "unknown key 'speed'"),
        ("grid: {noise: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], jitter: [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],"
         " delay_steps: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], rate_hz: [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]}",
         "11000 combinations"),
        ("random: {samples: 5, axes: {noise: [1, 0]}}", "lo 1.0 > hi 0.0"),
        ("grid: [1, 2", "not valid YAML"),
    ],
)  # fmt: skip
def test_grid_errors_name_the_file_and_key(tmp_path, text, match):
    f = grid_file(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as e:
        load_grid(f)
    assert str(f) in str(e.value)


def test_grid_and_random_conditions(tmp_path):
    g = load_grid(
        grid_file(tmp_path, "seed: 3\ngrid: {noise: [0, 0.1], delay_steps: [0, 2]}\n"
                  "random: {samples: 4, axes: {pole_mass: [0.05, 0.2]}}\nfixed: {rate_hz: 50}")
    )  # fmt: skip
    assert g["axes"] == ["noise", "delay_steps", "pole_mass"] and len(g["conditions"]) == 8
    assert all(c["rate_hz"] == 50 for c in g["conditions"])
    assert all(0.05 <= c["pole_mass"] <= 0.2 for c in g["conditions"][4:])


GRID = (
    "seed: 1\ngrid: {saturation: [0.3, 10], init_angle: [0.02, 0.15]}\nfixed: {rate_hz: 100, noise: 0.01}\n"
)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    f = grid_file(tmp_path_factory.mktemp("sweep"), GRID)
    return f, sw.fleet_sweep([str(MODEL), str(CFC)], str(f), rollouts=24, seconds=3.0, progress=False)


def test_sweep_success_falls_where_the_conditions_are_hard(sweep):
    _, r = sweep
    rows = {(c["condition"]["saturation"], c["condition"]["init_angle"]): c for c in r["conditions"]}
    easy, hard = rows[(10.0, 0.02)], rows[(0.3, 0.15)]
    for m in ("model0", "model1"):
        assert easy[m]["success_rate"] == 1.0 and easy[m]["median_time_to_failure_s"] is None
        assert hard[m]["success_rate"] < 0.5 and 0 < hard[m]["median_time_to_failure_s"] < 3.0
        assert 0 < easy[m]["mean_abs_angle"] < 0.05
    assert r["plant_steps"] == 4 * 24 * 300 * 2 and not r["failed_tasks"]
    assert len(r["most_different"]) == 4


def test_results_do_not_depend_on_how_rows_are_packed(sweep, monkeypatch):
    f, r = sweep
    monkeypatch.setattr(sw, "ROWS_PER_TASK", 10)
    r2 = sw.fleet_sweep([str(MODEL), str(CFC)], str(f), rollouts=24, seconds=3.0, progress=False)
    assert r2["tasks"] > r["tasks"] and r2["conditions"] == r["conditions"]


def test_cli_sweep_json_and_plot(sweep, tmp_path, capsys):
    f, _ = sweep
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    argv = ["fleet", "sweep", "--model", str(MODEL), "--grid", str(f), "--rollouts", "8", "--seconds", "1"]
    assert main(argv + ["--json", str(out), "--plot", str(png), "--quiet"]) == 0
    assert "success" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert len(r["conditions"]) == 4 and png.stat().st_size > 10_000
    titles = sw.plot(r, str(tmp_path / "t.png"), axes=["init_angle", "saturation"])
    assert titles == ["cartpole_ncp.onnx: success rate"]
    assert main(argv + ["--plot", str(png), "--axes", "noise", "wind", "--quiet"]) == 2
