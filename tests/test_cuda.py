"""CUDA backend parity with the reference (simulator in CI, a real GPU unchanged)."""

import os

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

from helpers import random_model  # noqa: E402

from edgeliquid import BackendError, InputError  # noqa: E402
from edgeliquid.runtime.policy import from_model  # noqa: E402

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
# The simulator runs every GPU thread as a Python thread: keep CI's sizes small.
BATCHES = [1, 7, 33] + ([] if SIM else [1024])
TOL = 1e-5


def _ncp_like(rng, mixed=False):
    return random_model(rng, units=10, n_in=3, motors=2, density=0.3, mixed=mixed, unfolds=3)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("mixed", [False, True])
def test_cuda_matches_reference_irregular_elapsed(batch, mixed):
    rng = np.random.default_rng(batch)
    model = _ncp_like(rng, mixed)
    ref = from_model(model, "reference", np.float64, batch=batch)
    gpu = from_model(model, "cuda", np.float32, batch=batch)
    steps = 4 if SIM else 50
    xs = rng.normal(0, 1, (steps, batch, 3))
    el = rng.uniform(0.1, 3.0, (steps, batch))
    want = ref.run(xs, el)
    got = np.stack([gpu.step(xs[t], el[t]).copy() for t in range(steps)])
    scale = max(1.0, np.abs(want).max())
    assert np.abs(got - want).max() / scale <= TOL
    np.testing.assert_allclose(gpu.state, ref.state, atol=TOL * max(1.0, np.abs(ref.state).max()))


def test_cuda_run_single_instance_equals_steps():
    rng = np.random.default_rng(5)
    model = _ncp_like(rng)
    a, b = from_model(model, "cuda"), from_model(model, "cuda")
    xs = rng.normal(size=(5, 3))
    ys = np.stack([a.step(x, 0.5).copy() for x in xs])
    np.testing.assert_allclose(b.run(xs, 0.5), ys, atol=1e-6)


def test_cuda_bad_row_keeps_its_state():
    rng = np.random.default_rng(1)
    gpu = from_model(_ncp_like(rng), "cuda", batch=3)
    gpu.step(np.ones((3, 3)))
    before = gpu.state
    x = np.ones((3, 3))
    x[1, 2] = np.nan
    with pytest.raises(InputError, match=r"x must be finite \(batch row 1"):
        gpu.step(x)
    np.testing.assert_array_equal(gpu.state[1], before[1])


def test_no_cuda_gives_clear_error(monkeypatch):
    from numba import cuda

    from edgeliquid.runtime import cuda as cuda_backend

    monkeypatch.setattr(cuda, "is_available", lambda: False)
    with pytest.raises(BackendError, match="no CUDA device or driver found; use backend='cpu'"):
        cuda_backend._cuda()


def test_cuda_mapped_host_memory_same_numbers():
    rng = np.random.default_rng(9)
    model = _ncp_like(rng)
    a = from_model(model, "cuda", batch=7)
    b = from_model(model, "cuda", batch=7, mapped=True)
    xs = rng.normal(size=(3, 7, 3))
    for x in xs:
        np.testing.assert_array_equal(a.step(x, 0.7), b.step(x, 0.7))
