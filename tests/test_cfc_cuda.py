"""CfC on the cuda backend against the numpy reference (simulator in CI, a real GPU unchanged)."""

import os

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

from edgeliquid import InputError  # noqa: E402
from edgeliquid.model.cfc import CfCConfig, CfCModel, cfc_expected_shapes  # noqa: E402
from edgeliquid.runtime.cuda import CfCCudaPolicy  # noqa: E402
from edgeliquid.runtime.policy import from_model  # noqa: E402

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
# The simulator runs every GPU thread as a Python thread: keep CI's sizes small.
BATCH = 4 if SIM else 1024
STEPS = 3 if SIM else 50
TOL = {np.float32: 1e-5, np.float64: 1e-10}

VARIANTS = {
    "default_bb1_lecun": CfCConfig(5, 8, backbone_units=12, backbone_layers=1),
    "no_gate_bb1_gelu": CfCConfig(5, 8, mode="no_gate", activation="gelu", backbone_units=12),
    "pure_bb1_lecun": CfCConfig(5, 8, mode="pure", backbone_units=12),
    "default_bb0": CfCConfig(5, 8, backbone_layers=0, backbone_units=0),
    "pure_bb0_sparse": CfCConfig(5, 8, mode="pure", backbone_layers=0, backbone_units=0, sparse=True),
    "no_gate_bb2_silu_sparse": CfCConfig(
        4, 6, mode="no_gate", activation="silu", backbone_units=9, backbone_layers=2, sparse=True
    ),
    "wired": CfCConfig(6, 10, layer_sizes=(5, 3, 2), backbone_layers=0, backbone_units=0),
    "wired_mixed_proj": CfCConfig(
        6, 10, layer_sizes=(5, 3, 2), backbone_layers=0, backbone_units=0, mixed_memory=True, proj_size=3
    ),
    "mixed_relu": CfCConfig(5, 7, activation="relu", backbone_units=10, mixed_memory=True),
    "proj_tanh": CfCConfig(5, 7, activation="tanh", backbone_units=10, proj_size=2),
}


def cfc_model(cfg: CfCConfig, seed: int = 0) -> CfCModel:
    """torch-like initialisation (uniform +-1/sqrt(fan_in)) and random masks."""
    rng = np.random.default_rng(seed)
    p = {}
    for name, shape in cfc_expected_shapes(cfg).items():
        if name.endswith("sparsity_mask"):
            m = (rng.random(shape) < 0.6).astype(np.float64)
            m[:, 0] = 1.0
            p[name] = m
        else:
            p[name] = rng.uniform(-1, 1, shape) / np.sqrt(shape[-1])
    return CfCModel(cfg, p)


def inputs(cfg: CfCConfig, steps: int, batch: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    # irregular elapsed, its own per batch row
    return rng.normal(0, 1.5, (steps, batch, cfg.n_inputs)), rng.uniform(0.05, 3.0, (steps, batch))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_cuda_cfc_matches_reference_per_row_elapsed(name):
    cfg = VARIANTS[name]
    model = cfc_model(cfg, seed=len(name))
    xs, es = inputs(cfg, STEPS, BATCH)
    ref = from_model(model, "reference", np.float64, batch=BATCH)
    gpu = from_model(model, "cuda", np.float32, batch=BATCH)
    assert isinstance(gpu, CfCCudaPolicy) and gpu.cell == "cfc"
    want = np.stack([ref.step(xs[t], es[t]).copy() for t in range(STEPS)])
    got = np.stack([gpu.step(xs[t], es[t]).copy() for t in range(STEPS)])
    assert np.all(np.isfinite(want)) and np.abs(want).max() > 1e-2
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL[np.float32])
    np.testing.assert_allclose(gpu.state, ref.state, rtol=0, atol=TOL[np.float32])


def test_cuda_cfc_float64_and_run_equal_steps():
    cfg = VARIANTS["wired_mixed_proj"]
    model = cfc_model(cfg, seed=3)
    xs, es = inputs(cfg, STEPS, 2, seed=4)
    want = from_model(model, "reference", np.float64, batch=2).run(xs, es)
    got = from_model(model, "cuda", np.float64, batch=2).run(xs, es)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL[np.float64])
    # single instance: run (one launch, T steps) == step by step
    a, b = from_model(model, "cuda"), from_model(model, "cuda")
    stepped = np.stack([a.step(xs[t, 0], es[t, 0]).copy() for t in range(STEPS)])
    np.testing.assert_allclose(b.run(xs[:, 0], es[:, 0]), stepped, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.state, b.state)


def test_cuda_cfc_sparse_heads_equal_dense():
    """The packer's sparse (existing synapses only) heads give the dense numbers on the device."""
    cfg = VARIANTS["wired"]
    model = cfc_model(cfg, seed=5)
    xs, es = inputs(cfg, STEPS, 3, seed=6)
    dense = CfCCudaPolicy(model, np.float32, batch=3, sparse=False)
    sparse = CfCCudaPolicy(model, np.float32, batch=3, sparse=True)
    for t in range(STEPS):
        np.testing.assert_allclose(sparse.step(xs[t], es[t]), dense.step(xs[t], es[t]), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("x", np.nan, r"x must be finite \(batch row 2"),
        ("x", np.inf, r"x must be finite \(batch row 2"),
        ("elapsed", 0.0, r"elapsed must be finite and > 0 \(batch row 2"),
        ("elapsed", -1.0, r"elapsed must be finite and > 0 \(batch row 2"),
        ("elapsed", np.nan, r"elapsed must be finite and > 0 \(batch row 2"),
    ],
)
def test_cuda_cfc_bad_input_keeps_that_rows_state(field, value, match):
    cfg = VARIANTS["mixed_relu"]
    gpu = from_model(cfc_model(cfg), "cuda", batch=3)
    gpu.step(np.ones((3, cfg.n_inputs)), 0.5)
    before = gpu.state
    x, e = np.ones((3, cfg.n_inputs)), np.full(3, 0.5)
    if field == "x":
        x[2, 1] = value
    else:
        e[2] = value
    with pytest.raises(InputError, match=match) as err:
        gpu.step(x, e)
    assert "\n" not in str(err.value)
    np.testing.assert_array_equal(gpu.state[2], before[2])
    assert not np.array_equal(gpu.state[0], before[0])  # the other rows still stepped


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow is the point (simulator warns)
def test_cuda_cfc_non_finite_result_not_committed():
    # float32 inputs near the largest float overflow the heads: ff1 = inf, exp(-inf) * inf = nan
    cfg = CfCConfig(2, 3, mode="pure", backbone_layers=0, backbone_units=0)
    model = cfc_model(cfg)
    for p in model.params.values():
        p[...] = np.abs(p) + 0.5
    gpu = from_model(model, "cuda", batch=2)
    gpu.step(np.ones((2, 2)), 1.0)
    before = gpu.state
    with pytest.raises(InputError, match=r"non-finite state \(batch row 0"):
        gpu.step(np.full((2, 2), 3e38), 1.0)
    np.testing.assert_array_equal(gpu.state, before)


def test_cuda_cfc_state_reset_and_mapped_memory():
    cfg = VARIANTS["default_bb1_lecun"]
    model = cfc_model(cfg, seed=7)
    xs, es = inputs(cfg, 2, 3, seed=8)
    a = from_model(model, "cuda", batch=3)
    b = from_model(model, "cuda", batch=3, mapped=True)
    for t in range(2):
        np.testing.assert_array_equal(a.step(xs[t], es[t]), b.step(xs[t], es[t]))
    s = a.state
    assert s.shape == (3, cfg.n_state) and np.abs(s).max() > 0
    a.reset()
    assert not a.state.any()
    a.state = s
    np.testing.assert_array_equal(a.state, s)
    np.testing.assert_array_equal(a.step(xs[0], es[0]), b.step(xs[0], es[0]))
