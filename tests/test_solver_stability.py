"""Stability of the explicit solvers from Theorem 1: the bound holds, beyond it runs diverge and
inspect/load said so beforehand, policies count unstable steps, the node refuses such a model."""

import json
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import yaml
from helpers import random_model
from test_node import MODEL, Dev, _cfg, _sensors

from edgeliquid.errors import ConfigError, InputError, StabilityError
from edgeliquid.model.cell import LTCModel
from edgeliquid.model.file import read, save
from edgeliquid.model.guarantees import STABILITY_MARGIN, guarantees, max_substep, stability
from edgeliquid.model.inspect import describe, format_text
from edgeliquid.node import protocol as P
from edgeliquid.node.config import load_config, parse_config
from edgeliquid.node.loop import Node
from edgeliquid.runtime.policy import from_model, load

EXPLICIT = ("explicit_euler", "rk4")


def with_solver(m: LTCModel, solver: str, unfolds: int | None = None) -> LTCModel:
    cfg = m.config.replace(solver=solver, ode_unfolds=unfolds or m.config.ode_unfolds)
    return LTCModel(cfg, m.params, m.roles, m.info, m.source)


def leak_dominated(seed: int, solver: str) -> LTCModel:
    """Synapses at 2% of the leak: every neuron decays at >= 0.98 x the bound's rate, so a
    sub-step 1.5 x past the bound is past the scheme's stability interval for every neuron."""
    rng = np.random.default_rng(seed)
    m = random_model(rng, units=6, n_in=2, motors=2, positivity="none", unfolds=4)
    p = m.params
    p["gleak"] = rng.uniform(2.0, 4.0, 6)
    p["w"] = p["w"] * 0.02 * 2.0 / m.config.units
    p["sensory_w"] = p["sensory_w"] * 0.02 * 2.0 / m.config.n_inputs
    return with_solver(m, solver)


def envelope(m: LTCModel) -> tuple[np.ndarray, np.ndarray]:
    """Theorem 2's range (the exact ODE never leaves it) widened by its width on each side."""
    g = guarantees(m, (-1.0, 1.0))
    w = g.v_max - g.v_min
    return g.v_min - w, g.v_max + w


@pytest.mark.parametrize("solver", EXPLICIT)
@pytest.mark.parametrize("seed,mixed", [(0, False), (1, True), (2, False)])
def test_just_inside_the_bound_stays_bounded_for_10000_steps(seed, mixed, solver):
    rng = np.random.default_rng(seed)
    m = with_solver(random_model(rng, units=8, n_in=3, motors=2, density=0.6, mixed=mixed), solver)
    limit = stability(m)[solver]["max_elapsed"]
    assert 0 < limit < np.inf
    pol = from_model(m, "cpu", np.float64, nominal_elapsed=limit)  # at the bound: accepted
    lo, hi = envelope(m)
    steps = 10_000
    xs = np.repeat(rng.normal(0, 1.5, (steps // 50, 3)), 50, axis=0)  # held levels: transients
    el = limit * rng.uniform(0.9, 1.0, steps)  # irregular, just inside
    ys = pol.run(xs, el)
    v = pol.state[: m.config.units]
    assert np.all(np.isfinite(ys)) and np.all((v >= lo) & (v <= hi))
    assert pol.unstable_steps == 0
    # the same over a stretch with the numpy reference (the spec), state checked every step
    ref = from_model(m, "reference", np.float64)
    for x, e in zip(xs[:300], el[:300]):
        ref.step(x, e)
        s = ref.state[: m.config.units]
        assert np.all((s >= lo) & (s <= hi))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # divergence is the point
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("solver", EXPLICIT)
def test_beyond_the_bound_diverges_and_inspect_and_load_said_so(solver, tmp_path):
    m = leak_dominated(3, solver)
    path = tmp_path / f"{solver}.onnx"
    save(m, path)
    d = describe(read(path))
    limit = d["stability"][solver]["max_elapsed"]
    assert d["solver"] == solver and d["stability"]["fused_semi_implicit_euler"]["max_elapsed"] is None
    elapsed = 1.5 * limit / STABILITY_MARGIN  # 1.5 x past the Theorem-1 interval itself
    assert f"elapsed <= {limit:.3g}" in format_text(d)
    with pytest.raises(StabilityError, match=rf"{solver}.onnx: solver {solver} .* elapsed <= .*unfolds \d+"):
        load(path, backend="reference", nominal_elapsed=elapsed)
    with pytest.warns(RuntimeWarning, match="allow_unstable=True"):
        pol = load(path, backend="reference", dtype=np.float64, nominal_elapsed=elapsed, allow_unstable=True)
    lo, hi = envelope(m)
    rng = np.random.default_rng(0)
    pol.state = rng.uniform(-0.5, 0.5, 6)
    left = None
    for t in range(300):
        try:
            pol.step(rng.normal(0, 1, 2), elapsed)
        except InputError as exc:  # overflow: the message names the bound
            assert "stability bound" in str(exc)
            left = t
            break
        s = pol.state
        if np.any((s < lo) | (s > hi)):
            left = t
            break
    assert left is not None, "a run 1.5x past the bound stayed bounded"
    assert pol.unstable_steps >= left
    # the same model stepped at the bound it reported stays put
    ok = from_model(m, "reference", np.float64, nominal_elapsed=limit)
    ok.run(rng.normal(0, 1, (2000, 2)), limit)
    assert np.all((ok.state >= lo) & (ok.state <= hi))


def test_unstable_steps_counted_on_every_path():
    m = with_solver(random_model(np.random.default_rng(4), units=5, n_in=2, motors=1), "rk4")
    limit = stability(m)["rk4"]["max_elapsed"]
    under, over = 0.5 * limit, 1.2 * limit  # over by a little: finite over a few steps
    for backend in ("cpu", "reference"):
        pol = from_model(m, backend, np.float64)
        assert pol.max_elapsed == pytest.approx(limit)
        pol.step(np.zeros(2), under)
        pol.step(np.zeros(2), over)
        pol.run(np.zeros((4, 2)), [under, over, over, under])
        assert pol.unstable_steps == 3, backend
        fleet = from_model(m, backend, np.float64, batch=3)
        fleet.step(np.zeros((3, 2)), [under, under, under])
        fleet.step(np.zeros((3, 2)), [under, over, under])  # one row over: one step
        fleet.run(np.zeros((3, 3, 2)), np.array([[under] * 3, [over, under, over], [under] * 3]))
        assert fleet.unstable_steps == 2, backend
    gpu = from_model(m, "cuda", np.float64, batch=2)  # the numba-cuda simulator without a GPU
    gpu.step(np.zeros((2, 2)), [under, over])
    gpu.run(np.zeros((3, 2, 2)), np.array([[under, under], [over, under], [under, under]]))
    assert gpu.unstable_steps == 2
    fused = from_model(with_solver(m, "fused_semi_implicit_euler"), "cpu", batch=2)
    fused.run(np.zeros((3, 2, 2)), 1e6)
    fused.step(np.zeros((2, 2)), 1e9)
    assert fused.max_elapsed == np.inf and fused.unstable_steps == 0


def test_bound_closed_form_and_cfc_has_none():
    m = leak_dominated(5, "explicit_euler")
    p = m.params
    w_in = (p["w"] * p["sparsity_mask"]).sum(0) + (p["sensory_w"] * p["sensory_sparsity_mask"]).sum(0)
    tau_min = np.min(p["cm"] / (p["gleak"] + w_in))
    assert max_substep(m) == pytest.approx(STABILITY_MARGIN * 2.0 * tau_min)
    assert max_substep(m, "rk4") == pytest.approx(STABILITY_MARGIN * 2.785293563405282 * tau_min)
    cfc = read(MODEL.parent / "cartpole_cfc.onnx")
    assert "stability" not in describe(cfc)
    assert from_model(cfc, "reference", nominal_elapsed=1e9).max_elapsed == np.inf  # no solver: no bound


def test_inspect_cli_json_and_text(tmp_path):
    m = leak_dominated(6, "explicit_euler")
    path = tmp_path / "e.onnx"
    save(m, path)
    run = [sys.executable, "-m", "edgeliquid", "inspect", str(path)]
    d = json.loads(subprocess.run(run + ["--json"], capture_output=True, text=True, check=True).stdout)
    assert d["stability"]["explicit_euler"]["max_substep"] == pytest.approx(max_substep(m))
    assert d["stability"]["rk4"]["max_elapsed"] == pytest.approx(max_substep(m, "rk4") * 4)
    assert d["stability"]["fused_semi_implicit_euler"] == {"max_substep": None, "max_elapsed": None}
    text = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in text.splitlines() if ln.startswith("stability"))
    assert "explicit Euler h <= " in line and "RK4 h <= " in line and "fused: unconditional" in line


def test_node_config_key():
    data = yaml.safe_load((MODEL.parents[2] / "configs" / "cartpole_demo.yaml").read_text())
    assert parse_config(data, "r.yaml").allow_unstable is False
    cfg = parse_config({**data, "allow_unstable": True}, "r.yaml")
    assert cfg.allow_unstable and cfg.nominal_elapsed == pytest.approx((1 / cfg.rate_hz) / cfg.model_dt)
    with pytest.raises(ConfigError, match="r.yaml: allow_unstable"):
        parse_config({**data, "allow_unstable": "maybe"}, "r.yaml")


def test_node_refuses_unstable_model_at_start_and_on_reload_then_counts_when_allowed(tmp_path):
    # The shipped policy with explicit Euler at its 6 unfolds: stable only for elapsed <= ~0.036,
    # the node steps it with (1/100 Hz) / 0.01 = 1.0.
    unstable = tmp_path / "unstable.onnx"
    save(with_solver(read(MODEL), "explicit_euler"), unstable)
    dev = Dev()
    try:
        with pytest.raises(StabilityError, match=r"unstable.onnx: .*explicit_euler.*allow_unstable: true"):
            Node(load_config(_cfg(tmp_path, dev.pty.node_port, model=str(unstable))))
        live = tmp_path / "live.onnx"
        live.write_bytes(MODEL.read_bytes())
        node = Node(load_config(_cfg(tmp_path, dev.pty.node_port, model=str(live))))
        th = threading.Thread(target=node.run, args=(120,), daemon=True)
        th.start()
        dev.pump(0.3)
        dev.send(P.HELLO, [4, 1, 100])
        t = _sensors(dev, 10)
        assert node.mode == P.MODE_RUN and node.stats.unstable_steps == 0
        old = node.policy
        live.write_bytes(unstable.read_bytes())
        node.request_reload()  # as SIGHUP does
        deadline = time.monotonic() + 90
        while not node.stats.reloads_rejected and time.monotonic() < deadline:
            t = _sensors(dev, 5, start_t=t)
        assert node.stats.reloads_rejected == 1 and node.stats.reloads == 0 and node.policy is old
        assert any("reload rejected" in e and "unstable" in e for _, e in node.events)
        assert node.mode == P.MODE_RUN
        # allow_unstable: true (set on the running node's config, which a reload reads): accepted,
        # recorded, and every cycle beyond the bound counted, with one event
        node.cfg.allow_unstable = True
        node.request_reload()
        deadline = time.monotonic() + 90
        while not node.stats.reloads and time.monotonic() < deadline:
            t = _sensors(dev, 5, start_t=t)
        assert node.stats.reloads == 1 and node.policy.config.solver == "explicit_euler"
        assert any("running it anyway" in e for _, e in node.events)
        t = _sensors(dev, 20, start_t=t)
        assert node.stats.unstable_steps >= 10
        assert sum("exceeds the explicit_euler stability bound" in e for _, e in node.events) == 1
        assert f"unstable={node.stats.unstable_steps}" in node.stats_line()
        node.stop()
        th.join(10)
    finally:
        dev.pty.close()


def test_within_the_bound_loads_silently_and_nominal_elapsed_is_checked():
    """A model stepped within its bound loads silently (no warning, no error)."""
    m = with_solver(random_model(np.random.default_rng(7)), "explicit_euler")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_model(m, "reference", nominal_elapsed=0.5 * stability(m)["explicit_euler"]["max_elapsed"])
    with pytest.raises(InputError, match="nominal_elapsed"):
        from_model(m, "reference", nominal_elapsed=float("nan"))
