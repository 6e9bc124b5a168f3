"""Known answers: closed-form leaky decay, and the Theorem 1/2 bounds holding in runs."""

import numpy as np
import pytest
from helpers import random_model

from edgeliquid.model.guarantees import guarantees
from edgeliquid.runtime.policy import from_model


def test_leaky_neuron_without_synapses_decays_in_closed_form():
    """No synapses: each sub-step is v <- (cm/h v + gleak vleak)/(cm/h + gleak + eps)."""
    rng = np.random.default_rng(0)
    m = random_model(
        rng,
        units=4,
        n_in=2,
        motors=4,
        positivity="none",
        input_mapping="none",
        output_mapping="none",
        unfolds=6,
    )
    m.params["sparsity_mask"][:] = 0
    m.params["sensory_sparsity_mask"][:] = 0
    cm, gl, vl, eps = m.params["cm"], m.params["gleak"], m.params["vleak"], m.config.epsilon
    v = np.array([0.9, -0.5, 0.3, 0.0])
    for backend in ("reference", "cpu"):
        pol = from_model(m, backend, np.float64)
        pol.state = v
        y = pol.step(np.zeros(2), 2.0).copy()
        want = v.copy()
        h = 2.0 / 6
        for _ in range(6):
            want = (cm / h * want + gl * vl) / (cm / h + gl + eps)
        np.testing.assert_allclose(y, want, rtol=1e-12)
        # and it tends to vleak
        for _ in range(500):
            y = pol.step(np.zeros(2), 2.0)
        np.testing.assert_allclose(y, vl * gl / (gl + eps), atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_state_stays_within_theorem2_bounds(seed):
    rng = np.random.default_rng(seed)
    m = random_model(rng, units=12, n_in=3, motors=2, density=0.5)
    g = guarantees(m)
    pol = from_model(m, "cpu", np.float64)
    xs = rng.normal(0, 5, (400, 3))
    el = rng.uniform(0.01, 20, 400)  # steps far larger than any time constant
    for x, e in zip(xs, el):
        pol.step(x, e)
        s = pol.state
        assert np.all(s >= g.v_min - 1e-12) and np.all(s <= g.v_max + 1e-12)


def test_time_constant_bounds_ordered_and_closed_form():
    m = random_model(np.random.default_rng(1), units=5, n_in=2, motors=1, positivity="none")
    g = guarantees(m)
    p = m.params
    w_in = (p["w"] * p["sparsity_mask"]).sum(0) + (p["sensory_w"] * p["sensory_sparsity_mask"]).sum(0)
    tau = p["cm"] / p["gleak"]
    np.testing.assert_allclose(g.tau_max, tau)
    np.testing.assert_allclose(g.tau_min, tau / (1 + tau * w_in / p["cm"]))
    assert np.all(g.tau_min <= g.tau_max)
