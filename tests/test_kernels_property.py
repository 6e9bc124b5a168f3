"""Property tests: the numba kernels agree with the numpy reference on random models."""

import numpy as np
import pytest
from helpers import random_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeliquid.runtime.policy import from_model

models = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**31 - 1),
        "units": st.integers(2, 24),
        "n_in": st.integers(1, 6),
        "density": st.sampled_from([0.1, 0.4, 1.0]),
        "positivity": st.sampled_from(["softplus", "none"]),
        "input_mapping": st.sampled_from(["affine", "linear", "none"]),
        "output_mapping": st.sampled_from(["affine", "linear", "none"]),
        "mixed": st.booleans(),
        "unfolds": st.sampled_from([1, 2, 6]),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=models, dtype=st.sampled_from([np.float32, np.float64]))
def test_cpu_kernel_matches_reference(spec, dtype):
    rng = np.random.default_rng(spec.pop("seed"))
    motors = int(rng.integers(1, spec["units"] + 1))
    model = random_model(rng, motors=motors, **spec)
    ref = from_model(model, "reference", np.float64)
    cpu = from_model(model, "cpu", dtype)
    xs = rng.normal(0, 2, (30, spec["n_in"]))
    el = rng.uniform(0.01, 5, 30)
    want = ref.run(xs, el)
    got = np.stack([cpu.step(x, e).copy() for x, e in zip(xs, el)])
    tol = 1e-5 if dtype == np.float32 else 1e-10
    scale = max(1.0, np.abs(want).max())
    assert np.abs(got - want).max() / scale <= tol
    np.testing.assert_allclose(cpu.state, ref.state, atol=tol * max(1.0, np.abs(ref.state).max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_run_equals_step_loop(dtype):
    rng = np.random.default_rng(3)
    model = random_model(rng, units=10, n_in=4, motors=3, density=0.3)
    a, b = from_model(model, "cpu", dtype), from_model(model, "cpu", dtype)
    xs = rng.normal(size=(50, 4))
    el = rng.uniform(0.1, 2, 50)
    ys = np.stack([a.step(x, e).copy() for x, e in zip(xs, el)])
    np.testing.assert_array_equal(b.run(xs, el), ys.astype(dtype))
