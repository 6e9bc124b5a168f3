"""CfC runtime: the numba cpu backend against the numpy reference (the spec), and the policy API.

Random models use torch-like initialisation (uniform +-1/sqrt(fan_in)) with random masks, so the
dynamics are not chaotic and float64 rounding differences stay at rounding level over long runs.
"""

import tracemalloc

import numba
import numpy as np
import pytest
from helpers import random_model

from edgeliquid import BackendError, InputError
from edgeliquid.model.cfc import ACTIVATIONS, CfCConfig, CfCModel, cfc_expected_shapes
from edgeliquid.runtime import cfc_kernels
from edgeliquid.runtime.cfc_packing import W_Y, CfCPacked
from edgeliquid.runtime.policy import from_model

TOL = {np.float64: 1e-10, np.float32: 1e-5}


def cfc_model(cfg: CfCConfig, seed: int = 0, scale: float = 1.0) -> CfCModel:
    rng = np.random.default_rng(seed)
    p = {}
    for name, shape in cfc_expected_shapes(cfg).items():
        if name.endswith("sparsity_mask"):
            m = (rng.random(shape) < 0.6).astype(np.float64)
            m[:, 0] = 1.0  # every neuron has an input
            p[name] = m
        else:
            p[name] = scale * rng.uniform(-1, 1, shape) / np.sqrt(shape[-1])
    return CfCModel(cfg, p)


def drive(pol, xs, es):
    return np.array([pol.step(x, e).copy() for x, e in zip(xs, es)])


def inputs(cfg, t, seed=1, batch=None):
    rng = np.random.default_rng(seed)
    shape = (t, cfg.n_inputs) if batch is None else (t, batch, cfg.n_inputs)
    es = rng.uniform(0.05, 3.0, shape[:-1])  # irregular elapsed, per row in batch mode
    return rng.normal(0, 1.5, shape), es


def check(cfg: CfCConfig, seed: int = 0, steps: int = 25):
    """cpu (float64 and float32) against the float64 reference: single steps, run, batch, run_batch."""
    model = cfc_model(cfg, seed)
    xs, es = inputs(cfg, steps, seed + 1)
    want = drive(from_model(model, "reference", np.float64), xs, es)
    assert np.all(np.isfinite(want))
    for dt in (np.float64, np.float32):
        got = drive(from_model(model, "cpu", dt), xs, es)
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL[dt], err_msg=f"step {dt.__name__}")
        ran = from_model(model, "cpu", dt).run(xs, es)
        np.testing.assert_allclose(ran, want, rtol=0, atol=TOL[dt], err_msg=f"run {dt.__name__}")
    # batch == units, each row its own inputs and elapsed
    b = cfg.units
    xb, eb = inputs(cfg, 6, seed + 2, batch=b)
    ref = from_model(model, "reference", np.float64, batch=b)
    want_b = drive(ref, xb, eb)
    for dt in (np.float64, np.float32):
        got_b = drive(from_model(model, "cpu", dt, batch=b), xb, eb)
        np.testing.assert_allclose(got_b, want_b, rtol=0, atol=TOL[dt], err_msg=f"batch {dt.__name__}")
        ran_b = from_model(model, "cpu", dt, batch=b).run(xb, eb)
        np.testing.assert_allclose(ran_b, want_b, rtol=0, atol=TOL[dt], err_msg=f"run_batch {dt.__name__}")


@pytest.mark.parametrize("mode", ["default", "no_gate", "pure"])
@pytest.mark.parametrize("layers", [0, 1, 2])
def test_unwired_modes_backbones(mode, layers):
    act = ACTIVATIONS[layers + 2]  # relu, tanh, gelu
    check(CfCConfig(5, 12, mode=mode, activation=act, backbone_units=20, backbone_layers=layers), seed=layers)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activations(act):
    check(CfCConfig(4, 9, activation=act, backbone_units=33, backbone_layers=1))


@pytest.mark.parametrize("mode", ["default", "no_gate", "pure"])
@pytest.mark.parametrize("sizes", [(11, 6, 2), (4, 3), (7,)])
def test_wired(mode, sizes):
    check(CfCConfig(8, sum(sizes), mode=mode, backbone_layers=0, layer_sizes=sizes), seed=len(sizes))


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("proj", [0, 3])
@pytest.mark.parametrize("kind", ["unwired", "wired", "sparse"])
def test_mixed_memory_and_projection(mixed, proj, kind):
    if kind == "wired":
        cfg = CfCConfig(6, 10, layer_sizes=(5, 3, 2), backbone_layers=0, mixed_memory=mixed, proj_size=proj)
    else:
        cfg = CfCConfig(6, 10, mode="no_gate", activation="silu", backbone_units=16, sparse=kind == "sparse")
        cfg = cfg.replace(mixed_memory=mixed, proj_size=proj)
    check(cfg, seed=3)


def test_sparse_heads_path_equals_dense():
    """The existing-synapses-only path (forced) gives the dense-with-mask results."""
    model = cfc_model(CfCConfig(8, 19, layer_sizes=(11, 6, 2), backbone_layers=0), seed=4)
    xs, es = inputs(model.config, 50)
    outs = []
    for sparse in (False, True):
        pk = CfCPacked(model, np.float64, sparse=sparse)
        work = np.zeros(pk.work_size)
        ys = np.zeros((50, 2))
        assert cfc_kernels.run(xs, es, pk.fp, pk.ip, work, ys) == (0, -1)
        outs.append(ys)
    np.testing.assert_allclose(outs[1], outs[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("dt", [np.float64, np.float32])
def test_long_sequence(dt):
    cfg = CfCConfig(8, 16, backbone_units=32, mixed_memory=True)
    model = cfc_model(cfg, seed=5)
    xs, es = inputs(cfg, 2500, seed=6)
    want = from_model(model, "reference", np.float64).run(xs, es)
    got = from_model(model, "cpu", dt).run(xs, es)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL[dt])
    pol = from_model(model, "cpu", dt)
    np.testing.assert_allclose(drive(pol, xs[:2000], es[:2000]), want[:2000], rtol=0, atol=TOL[dt])


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("batch", [None, 4])
def test_non_finite_input_or_elapsed_leaves_state(backend, batch):
    cfg = CfCConfig(3, 6, backbone_units=8, mixed_memory=True)
    pol = from_model(cfc_model(cfg), backend, np.float32, batch=batch)
    shape = (3,) if batch is None else (batch, 3)
    for _ in range(3):
        pol.step(np.ones(shape), 0.7)
    before = pol.state
    bad_x = np.ones(shape)
    bad_x[..., 1] = np.nan
    with pytest.raises(InputError, match="finite; state unchanged"):
        pol.step(bad_x, 1.0)
    bad_x[..., 1] = np.inf
    with pytest.raises(InputError, match="finite"):
        pol.step(bad_x, 1.0)
    for e in (np.nan, np.inf, 0.0, -1.0):
        with pytest.raises(InputError, match="elapsed"):
            pol.step(np.ones(shape), e)
    with pytest.raises(InputError):
        pol.run(np.ones((5,) + shape) * np.array([1, 1, np.nan])[: shape[-1]], 1.0)
    np.testing.assert_array_equal(pol.state, before)
    assert np.all(np.isfinite(pol.step(np.ones(shape), 1.0)))


def test_batch_bad_row_named_and_state_unchanged():
    cfg = CfCConfig(3, 5, layer_sizes=(3, 2), backbone_layers=0)
    pol = from_model(cfc_model(cfg), "cpu", np.float64, batch=3)
    pol.step(np.ones((3, 3)), 1.0)
    before = pol.state
    x = np.ones((3, 3))
    x[2, 0] = np.nan
    with pytest.raises(InputError, match=r"batch row 2"):
        pol.step(x, 1.0)
    with pytest.raises(InputError, match="elapsed"):
        pol.step(np.ones((3, 3)), np.array([1.0, -1.0, 1.0]))
    np.testing.assert_array_equal(pol.state, before)


@pytest.mark.parametrize("batch", [None, 8])
def test_zero_allocation_per_step(batch):
    cfg = CfCConfig(8, 32)
    pol = from_model(cfc_model(cfg), "cpu", np.float32, batch=batch)
    x = np.ones((8,) if batch is None else (batch, 8), np.float32)
    e = 1.0 if batch is None else np.full(batch, 0.5)
    for _ in range(100):
        pol.step(x, e)
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    for _ in range(10_000):
        pol.step(x, e)
    snap1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in snap1.compare_to(snap0, "filename") if s.size_diff > 0)
    assert grown < 10_000, grown


def test_state_get_set_reset_and_cell_attribute():
    cfg = CfCConfig(4, 7, backbone_units=8)
    model = cfc_model(cfg)
    pol = from_model(model, "cpu", np.float64)
    assert pol.cell == "cfc" and pol.backend == "cpu" and pol.n_state == 7 and pol.n_outputs == 7
    ref = from_model(model, "reference", np.float64)
    s = np.linspace(-0.5, 0.5, 7)
    pol.state = s
    ref.state = s
    x = np.arange(4.0)
    np.testing.assert_allclose(pol.step(x, 0.3), ref.step(x, 0.3), atol=1e-12)
    pol.reset()
    np.testing.assert_array_equal(pol.state, np.zeros(7))
    assert from_model(random_model(np.random.default_rng(0)), "cpu").cell == "ltc"


def test_y_is_policy_buffer():
    pol = from_model(cfc_model(CfCConfig(2, 3, proj_size=2, backbone_units=4)), "cpu", np.float32)
    y = pol.step(np.ones(2), 1.0)
    assert y.shape == (2,) and y.base is not None and int(pol._ip[W_Y]) >= 0


def test_unknown_backend_refuses_cfc_in_one_line():
    with pytest.raises(BackendError) as err:
        from_model(cfc_model(CfCConfig(2, 3)), "tpu")
    msg = str(err.value)
    assert "tpu" in msg and "\n" not in msg


CHUNK_CFGS = {
    "wired": CfCConfig(8, 19, layer_sizes=(11, 6, 2), backbone_layers=0),
    "backbone": CfCConfig(8, 12, backbone_units=24, activation="lecun_tanh", proj_size=3),
    "pure2": CfCConfig(5, 9, mode="pure", backbone_units=16, backbone_layers=2, activation="gelu"),
}


@pytest.mark.parametrize("name", sorted(CHUNK_CFGS))
@pytest.mark.parametrize("b", [1, 7, 37, 1024])
def test_batch_chunks_match_reference(name, b):
    """The chunked batch kernel (CHUNK instances across SIMD lanes) at sizes that are not multiples."""
    cfg = CHUNK_CFGS[name]
    model = cfc_model(cfg, seed=b)
    xb, eb = inputs(cfg, 4, seed=b + 1, batch=b)
    want = drive(from_model(model, "reference", np.float64, batch=b), xb, eb)
    for dt in (np.float64, np.float32):
        got = drive(from_model(model, "cpu", dt, batch=b), xb, eb)
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL[dt], err_msg=f"{name} {b} {dt.__name__}")


def test_batch_chunk_sparse_heads_equal_dense():
    """The chunked kernel's existing-synapses-only heads (forced) give the dense results."""
    model = cfc_model(CfCConfig(8, 19, layer_sizes=(11, 6, 2), backbone_layers=0), seed=4)
    b = 70
    xs, es = inputs(model.config, 3, batch=b)
    outs = []
    for sparse in (False, True):
        pk = CfCPacked(model, np.float64, sparse=sparse)
        work, bad = np.zeros((b, pk.work_size)), np.zeros(b, np.int64)
        scratch = np.zeros((numba.config.NUMBA_NUM_THREADS, cfc_kernels.batch_scratch_size(pk.work_size)))
        for x, e in zip(xs, es):
            assert cfc_kernels.step_batch(x, e, pk.fp, pk.ip, work, bad, scratch) == (0, -1)
        outs.append(work[:, pk.ip[W_Y] : pk.ip[W_Y] + 2].copy())
    np.testing.assert_allclose(outs[1], outs[0], rtol=0, atol=1e-12)


def test_batch_non_finite_row_keeps_its_state_others_commit():
    """A row whose step overflows keeps its state and is named; the other rows of its chunk step."""
    cfg = CfCConfig(4, 6, backbone_units=8, activation="relu")
    model = cfc_model(cfg, seed=2)
    # positive first-layer weights: a huge input overflows float32 to +inf, relu keeps it, and the
    # mixed-sign head weights then sum inf - inf = nan
    model.params["backbone.0.weight"] = 10 * np.abs(model.params["backbone.0.weight"])
    b, row = 37, 20
    pol = from_model(model, "cpu", np.float32, batch=b)
    ref = from_model(model, "reference", np.float64, batch=b)
    x0 = np.random.default_rng(0).normal(0, 1, (b, 4))
    pol.step(x0, 0.5)
    ref.step(x0, 0.5)
    before = pol.state
    x = np.random.default_rng(1).normal(0, 1, (b, 4))
    x[row] = 3e38
    with pytest.raises(InputError, match=rf"batch row {row}\) produced a non-finite state"):
        pol.step(x, 0.7)
    after = pol.state
    np.testing.assert_array_equal(after[row], before[row])
    x[row] = x0[row]
    ref.step(x, 0.7)
    others = np.arange(b) != row
    np.testing.assert_allclose(after[others], ref.state[others], rtol=0, atol=1e-5)
