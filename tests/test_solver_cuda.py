"""CUDA backend: the explicit solvers match the reference (simulator in CI, a real GPU unchanged)."""

import os

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

from helpers import random_model  # noqa: E402

from edgeliquid import InputError  # noqa: E402
from edgeliquid.model.cell import LTCModel  # noqa: E402
from edgeliquid.model.guarantees import stability  # noqa: E402
from edgeliquid.runtime.policy import from_model  # noqa: E402

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
# The simulator runs every GPU thread as a Python thread: keep CI's sizes small.
BATCH = 7 if SIM else 1000
STEPS = 4 if SIM else 200
TOL = 1e-5


def _model(solver: str, mixed: bool) -> LTCModel:
    m = random_model(np.random.default_rng(3), units=8, n_in=3, motors=2, density=0.4, mixed=mixed, unfolds=3)
    return LTCModel(m.config.replace(solver=solver), m.params, m.roles, m.info, m.source)


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("solver", ["explicit_euler", "rk4"])
def test_cuda_explicit_solver_matches_reference(solver, mixed):
    model = _model(solver, mixed)
    rng = np.random.default_rng(4)
    bound = stability(model)[solver]["max_elapsed"]
    ref = from_model(model, "reference", np.float64, batch=BATCH)
    gpu = from_model(model, "cuda", np.float32, batch=BATCH)
    xs = rng.normal(0, 1, (STEPS, BATCH, 3))
    el = rng.uniform(0.2, 1.0, (STEPS, BATCH)) * bound  # irregular, per row, inside the bound
    want = ref.run(xs, el)
    got = np.concatenate([gpu.step(xs[0], el[0])[None].copy(), gpu.run(xs[1:], el[1:])])
    scale = max(1.0, np.abs(want).max())
    assert np.abs(got - want).max() / scale <= TOL
    np.testing.assert_allclose(gpu.state, ref.state, atol=TOL * max(1.0, np.abs(ref.state).max()))
    # the other scheme on the same inputs is far off: the kernel ran this one
    other = "rk4" if solver == "explicit_euler" else "explicit_euler"
    alt = from_model(
        LTCModel(model.config.replace(solver=other), model.params, model.roles, model.info, model.source),
        "reference",
        np.float64,
        batch=BATCH,
    ).run(xs, el)
    assert np.abs(alt - want).max() / scale > 100 * TOL


def test_cuda_explicit_bad_row_keeps_its_state():
    model = _model("rk4", False)
    gpu = from_model(model, "cuda", batch=3)
    e = stability(model)["rk4"]["max_elapsed"] / 2
    gpu.step(np.ones((3, 3)), e)
    before = gpu.state
    x = np.ones((3, 3))
    x[1, 2] = np.nan
    with pytest.raises(InputError, match=r"x must be finite \(batch row 1"):
        gpu.step(x, e)
    np.testing.assert_array_equal(gpu.state[1], before[1])
