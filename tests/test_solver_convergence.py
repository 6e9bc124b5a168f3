"""Convergence order of each solver, measured against an independent tight solution.

The exact trajectory comes from scipy's ``solve_ivp`` (DOP853, rtol 1e-10, atol 1e-12) on
the LTC ODE written out below from the model's parameters, not from
``edgeliquid.runtime.reference``, so that a wrong derivative there cannot cancel out:

    cm dv/dt = gleak (vleak - v) + sum_j w_ji s_ji(v_j) (erev_ji - v) + sum_k sw_ki s_ki(x_k) (serev_ki - v)

with the inputs held over each step and, with mixed memory, the LSTM run first. The max
error over a few irregular steps and batch rows falls like h^p with h = elapsed / unfolds;
p is the slope of a log-log fit over a range of unfolds: 1 for explicit and fused
Euler, 4 for RK4.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from helpers import random_model
from scipy.integrate import solve_ivp

from edgeliquid.model.cell import LTCModel
from edgeliquid.model.file import save
from edgeliquid.model.guarantees import max_substep
from edgeliquid.runtime.reference import ReferenceCell

STEPS, BATCH = 4, 3


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def exact_states(model: LTCModel, xs: np.ndarray, state0: np.ndarray, elapsed: np.ndarray) -> np.ndarray:
    """[T, B, n_state] states of the exact step map (the ODE solved to 1e-10)."""
    cfg, p = model.config, model.params
    pos = (lambda a: np.logaddexp(0.0, a)) if cfg.positivity == "softplus" else (lambda a: a)
    u = cfg.units
    gleak, cm, vleak = pos(p["gleak"]), pos(p["cm"]), p["vleak"]
    w = pos(p["w"]) * p["sparsity_mask"]  # [pre, post]
    sw = pos(p["sensory_w"]) * p["sensory_sparsity_mask"]
    state, out = state0.copy(), []
    for x, el in zip(xs, elapsed):
        v, c = state[:, :u], state[:, u:]
        if cfg.mixed_memory:
            z = (
                x @ p["lstm.input_map.weight"].T
                + p["lstm.input_map.bias"]
                + v @ p["lstm.recurrent_map.weight"].T
            )
            gi, gin, gf, go = np.split(z, 4, axis=1)
            c = c * _sigmoid(gf + 1.0) + np.tanh(gi) * _sigmoid(gin)
            v = np.tanh(c) * _sigmoid(go)
        xm = x * p.get("input_w", 1.0) + p.get("input_b", 0.0)
        s_in = sw * _sigmoid(p["sensory_sigma"] * (xm[:, :, None] - p["sensory_mu"]))  # [B, I, U]
        drive, conductance = (s_in * p["sensory_erev"]).sum(axis=1), s_in.sum(axis=1)

        def rhs(t, y, el=el, drive=drive, conductance=conductance):
            vv = y.reshape(-1, u)
            a = w * _sigmoid(p["sigma"] * (vv[:, :, None] - p["mu"]))  # [B, pre, post]
            syn = (a * (p["erev"] - vv[:, None, :])).sum(axis=1)
            dv = (gleak * (vleak - vv) + syn + drive - conductance * vv) / cm
            # Time rescaled to [0, 1] so that each batch row integrates over its own elapsed.
            return (el[:, None] * dv).ravel()

        sol = solve_ivp(rhs, (0.0, 1.0), v.ravel(), method="DOP853", rtol=1e-10, atol=1e-12)
        assert sol.success, sol.message
        v = sol.y[:, -1].reshape(-1, u)
        state = np.concatenate([v, c], axis=1)
        out.append(state)
    return np.array(out)


def with_solver(model: LTCModel, solver: str, unfolds: int) -> LTCModel:
    cfg = model.config.replace(solver=solver, ode_unfolds=unfolds)
    return LTCModel(cfg, dict(model.params), model.roles, model.info, model.source)


def reference_states(model, solver, unfolds, xs, state0, elapsed) -> np.ndarray:
    cell = ReferenceCell(with_solver(model, solver, unfolds))
    state, out = state0, []
    for x, el in zip(xs, elapsed):
        _, state = cell.step(x, state, el)
        out.append(state)
    return np.array(out)


def order(unfolds: list[int], errors: list[float]) -> float:
    """Slope of log(error) against log(h), h proportional to 1 / unfolds."""
    return -float(np.polyfit(np.log(unfolds), np.log(errors), 1)[0])


def ncp_like(rng: np.random.Generator) -> LTCModel:
    """A random model with NCP-shaped sparse masks: inputs -> inter -> command -> motor,
    recurrent synapses among the command neurons (motor 0-1, command 2-4, inter 5-9)."""
    m = random_model(rng, units=10, n_in=3, motors=2, density=1.0)
    motor, command, inter = slice(0, 2), slice(2, 5), slice(5, 10)
    mask = np.zeros((10, 10))
    mask[inter, command] = rng.random((5, 3)) < 0.6
    mask[command, command] = rng.random((3, 3)) < 0.5
    mask[command, motor] = rng.random((3, 2)) < 0.7
    smask = np.zeros((3, 10))
    smask[:, inter] = rng.random((3, 5)) < 0.6
    m.params["sparsity_mask"], m.params["sensory_sparsity_mask"] = mask, smask
    m.params["erev"] = m.params["erev"] * mask
    m.params["sensory_erev"] = m.params["sensory_erev"] * smask
    return m


MODELS = {
    "ltc_dense": lambda rng: random_model(rng, units=8, density=1.0),
    "ncp_sparse": ncp_like,
    "mixed_memory": lambda rng: random_model(
        rng, units=6, density=0.5, mixed=True, positivity="none", input_mapping="linear"
    ),
}


def trajectory(model: LTCModel, rng: np.random.Generator, coarsest: int):
    """Inputs, start state and irregular per-row elapsed times for which ``coarsest``
    explicit Euler sub-steps are within the stability bound (h <= max_substep)."""
    cfg = model.config
    xs = rng.normal(0.0, 1.0, (STEPS, BATCH, cfg.n_inputs))
    state0 = rng.uniform(-0.5, 0.5, (BATCH, cfg.n_state))
    elapsed = rng.uniform(0.5, 1.0, (STEPS, BATCH)) * coarsest * max_substep(model, "explicit_euler")
    return xs, state0, elapsed


@pytest.fixture(scope="module", params=sorted(MODELS))
def case(request):
    rng = np.random.default_rng(15)
    model = MODELS[request.param](rng)
    xs, state0, elapsed = trajectory(model, rng, coarsest=4)
    return model, xs, state0, elapsed, exact_states(model, xs, state0, elapsed)


@pytest.mark.parametrize(
    "solver, unfolds, lo, hi",
    [
        # Over 25 seeds per model the fits were 0.97 .. 1.20 (Euler), 0.86 .. 1.02 (fused).
        ("explicit_euler", [4, 8, 16, 32, 64], 0.85, 1.3),
        ("fused_semi_implicit_euler", [4, 8, 16, 32, 64], 0.8, 1.2),
        # RK4's error reaches ~1e-8 at 32 unfolds, well above solve_ivp's 1e-10; the
        # coarse end is short of the asymptote, so fits come out a little above 4 (over
        # 25 seeds per model: 3.94 .. 4.60).
        ("rk4", [4, 8, 16, 32], 3.5, 4.7),
    ],
)
def test_reference_converges_at_the_order_of_its_scheme(case, solver, unfolds, lo, hi):
    model, xs, state0, elapsed, exact = case
    errors = [
        float(np.abs(reference_states(model, solver, n, xs, state0, elapsed) - exact).max()) for n in unfolds
    ]
    p = order(unfolds, errors)
    assert lo <= p <= hi, f"{solver}: order {p:.2f} outside [{lo}, {hi}]; errors {errors}"


def test_exact_solution_is_what_the_schemes_converge_to():
    """Guard on the oracle: the finest RK4 run agrees with solve_ivp to 1e-8, and a wrong
    ODE (vleak ignored) would not."""
    rng = np.random.default_rng(3)
    model = random_model(rng, units=5)
    xs, state0, elapsed = trajectory(model, rng, coarsest=4)
    exact = exact_states(model, xs, state0, elapsed)
    assert np.abs(reference_states(model, "rk4", 64, xs, state0, elapsed) - exact).max() < 1e-8
    model.params["vleak"] = model.params["vleak"] + 0.1
    assert np.abs(reference_states(model, "rk4", 64, xs, state0, elapsed) - exact).max() > 1e-3


# ------------------------------------------------------------------ the ONNX graph, float32


def ort_states(path, xs, state0, elapsed) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    state, out = state0.astype(np.float32), []
    for x, el in zip(xs, elapsed):
        feeds = {"x": x.astype(np.float32), "state": state, "elapsed": el[:, None].astype(np.float32)}
        _, state = sess.run(None, feeds)
        out.append(state)
    return np.array(out, np.float64)


@pytest.mark.parametrize(
    "solver, unfolds, coarsest, lo, hi",
    [
        ("explicit_euler", [4, 8, 16, 32], 4, 0.85, 1.3),
        ("fused_semi_implicit_euler", [4, 8, 16, 32], 4, 0.8, 1.2),
        # Larger steps than above: in float32 RK4's error must stay well above rounding
        # (~1e-6); that range is short of the asymptote, hence the wider upper bound
        # (over 15 seeds: 4.03 .. 4.85). A wrong stage would give order <= 3.
        ("rk4", [2, 3, 4, 6], 2, 3.5, 5.0),
    ],
)
def test_onnx_graph_converges_at_the_order_of_its_scheme(tmp_path, solver, unfolds, coarsest, lo, hi):
    rng = np.random.default_rng(21)
    model = random_model(rng, units=8, density=0.5)
    xs, state0, elapsed = trajectory(model, rng, coarsest)
    # What the float32 graph sees: the same inputs, rounded.
    xs, state0, elapsed = (a.astype(np.float32).astype(np.float64) for a in (xs, state0, elapsed))
    exact = exact_states(model, xs, state0, elapsed)
    errors = []
    for n in unfolds:
        path = tmp_path / f"{solver}_{n}.onnx"
        save(with_solver(model, solver, n), path)
        errors.append(float(np.abs(ort_states(path, xs, state0, elapsed) - exact).max()))
    p = order(unfolds, errors)
    assert lo <= p <= hi, f"{solver}: order {p:.2f} outside [{lo}, {hi}]; errors {errors}"
