"""The numba kernels (cpu backend) run every solver exactly as the numpy reference defines it.

Elapsed times are irregular but kept inside each explicit scheme's stability bound
(``guarantees.stability``), where the parity tolerance means something; the fused solver
gets the full 0.05..3 range.
"""

from functools import cache
from pathlib import Path

import numpy as np
import pytest
from helpers import irregular_elapsed, random_model

from edgeliquid import BackendError, InputError
from edgeliquid.model.cell import SOLVER_NAMES, LTCModel
from edgeliquid.model.file import read
from edgeliquid.model.guarantees import stability
from edgeliquid.runtime import kernels
from edgeliquid.runtime.packing import SOLVER, SOLVER_CODES, Packed
from edgeliquid.runtime.policy import from_model

ROOT = Path(__file__).resolve().parents[1]
EXPLICIT = ("explicit_euler", "rk4")
TOL = {np.float64: 1e-10, np.float32: 1e-5}

CASES = {
    "dense": dict(
        units=8, n_in=3, motors=2, density=1.0, input_mapping="none", output_mapping="none", unfolds=1
    ),
    "sparse_mixed": dict(
        units=10,
        n_in=4,
        motors=3,
        density=0.3,
        mixed=True,
        input_mapping="linear",
        output_mapping="linear",
        unfolds=4,
    ),
    "sparse": dict(units=12, n_in=2, motors=2, density=0.3, positivity="none", unfolds=6),
    "dense_mixed": dict(units=6, n_in=5, motors=1, density=1.0, mixed=True, unfolds=3),
}


def with_solver(model: LTCModel, solver: str) -> LTCModel:
    return LTCModel(model.config.replace(solver=solver), model.params, model.roles, model.info, model.source)


@cache
def case_model(case: str, solver: str) -> LTCModel:
    seed = list(CASES).index(case)
    return with_solver(random_model(np.random.default_rng(seed), **CASES[case]), solver)


def elapsed_for(rng, model: LTCModel, shape) -> np.ndarray:
    """Irregular elapsed within the model's stability bound (the fused one has none)."""
    bound = stability(model)[model.config.solver]["max_elapsed"]
    if not np.isfinite(bound):
        return irregular_elapsed(rng, int(np.prod(shape))).reshape(shape)
    return rng.uniform(0.2, 1.0, shape) * bound


def assert_close(got, want, dtype):
    scale = max(1.0, float(np.abs(want).max()))
    assert float(np.abs(np.asarray(got, np.float64) - want).max()) / scale <= TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("solver", SOLVER_NAMES)
@pytest.mark.parametrize("case", list(CASES))
def test_single_step_matches_reference(case, solver, dtype):
    model = case_model(case, solver)
    rng = np.random.default_rng(11)
    n_in = model.config.n_inputs
    xs = rng.normal(0, 2, (40, n_in))
    el = elapsed_for(rng, model, 40)
    ref = from_model(model, "reference", np.float64)
    cpu = from_model(model, "cpu", dtype)
    want = ref.run(xs, el)
    got = np.stack([cpu.step(x, e).copy() for x, e in zip(xs, el)])
    assert_close(got, want, dtype)
    assert_close(cpu.state, ref.state, dtype)


def test_each_solver_is_the_one_that_runs():
    """The tolerance above separates the solvers: a kernel running another scheme would fail."""
    rng = np.random.default_rng(2)
    base = case_model("sparse", "rk4")
    xs = rng.normal(0, 2, (20, base.config.n_inputs))
    el = elapsed_for(rng, with_solver(base, "explicit_euler"), 20)  # inside both bounds
    outs = {s: from_model(with_solver(base, s), "cpu", np.float64).run(xs, el) for s in SOLVER_NAMES}
    for a in SOLVER_NAMES:
        for b in SOLVER_NAMES:
            if a < b:
                assert np.abs(outs[a] - outs[b]).max() > 1e3 * TOL[np.float32], (a, b)


@cache
def long_sequence(solver: str):
    model = case_model("sparse_mixed", solver)
    rng = np.random.default_rng(5)
    xs = rng.normal(0, 1, (2000, model.config.n_inputs))
    el = elapsed_for(rng, model, 2000)
    return model, xs, el, from_model(model, "reference", np.float64).run(xs, el)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_run_long_sequence_matches_reference(solver, dtype):
    model, xs, el, want = long_sequence(solver)
    cpu = from_model(model, "cpu", dtype)
    got = cpu.run(xs, el)
    assert_close(got, want, dtype)
    # run() is the step loop compiled: same numbers to the bit
    again = from_model(model, "cpu", dtype)
    steps = np.stack([again.step(x, e).copy() for x, e in zip(xs[:200], el[:200])])
    np.testing.assert_array_equal(got[:200], steps)


@pytest.mark.parametrize(
    "case,batch,dtype",
    [
        ("sparse", 1, np.float64),
        ("sparse", 63, np.float64),
        ("sparse", 64, np.float64),
        ("sparse", 130, np.float64),
        ("dense", 130, np.float32),
        ("sparse_mixed", 63, np.float32),
        ("dense_mixed", 5, np.float64),
    ],
)
@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_batch_per_row_elapsed_matches_reference(case, batch, dtype, solver):
    model = case_model(case, solver)
    rng = np.random.default_rng(batch)
    n_in = model.config.n_inputs
    ref = from_model(model, "reference", np.float64, batch=batch)
    cpu = from_model(model, "cpu", dtype, batch=batch)
    # step_batch (chunks of kernels.CHUNK lanes; mixed memory: row by row) ...
    xs = rng.normal(0, 2, (4, batch, n_in))
    el = elapsed_for(rng, model, (4, batch))
    for x, e in zip(xs, el):
        assert_close(cpu.step(x, e), ref.step(x, e), dtype)
    assert_close(cpu.state, ref.state, dtype)
    # ... then run_batch, carrying the state on
    xs = rng.normal(0, 2, (6, batch, n_in))
    el = elapsed_for(rng, model, (6, batch))
    assert_close(cpu.run(xs, el), ref.run(xs, el), dtype)
    assert_close(cpu.state, ref.state, dtype)


@pytest.mark.parametrize("solver", EXPLICIT)
def test_fused_control_step_with_explicit_solver(solver):
    """The node's fused kernel (clip/scale -> step -> rate limit) against the reference."""
    from edgeliquid.node.channels import ChannelMaps
    from edgeliquid.node.config import load_config
    from edgeliquid.node.fastpath import fast_arrays, fused_kernel

    cfg = load_config(ROOT / "configs" / "cartpole_demo.yaml")
    model = with_solver(read(ROOT / "edgeliquid" / "data" / "cartpole_ncp.onnx"), solver)
    policy = from_model(model, "cpu", np.float64)
    ref = from_model(model, "reference", np.float64)
    kernel = fused_kernel(policy)
    fp, ip, work = fast_arrays(policy)
    a = ChannelMaps(cfg.inputs, cfg.outputs, policy.dtype)
    b = ChannelMaps(cfg.inputs, cfg.outputs, ref.dtype)
    rng = np.random.default_rng(0)
    bound = stability(model)[solver]["max_elapsed"]
    for _ in range(300):
        raw = rng.normal(0, 0.3, 4) * np.array([1.0, 1.0, 0.2, 1.0])
        elapsed, dt_s = rng.uniform(0.2, 1.0) * bound, rng.uniform(0.005, 0.02)
        assert kernel(raw, elapsed, dt_s, a.chan, a.xbuf, fp, ip, work) == 0
        assert b.apply_numpy(ref, raw, elapsed, dt_s) == 0
        np.testing.assert_allclose(a.u, b.u, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(policy.state, ref.state, rtol=1e-10, atol=1e-12)
    before = policy.state
    bad = np.array([0.0, np.nan, 0.0, 0.0])
    assert kernel(bad, bound / 2, 0.01, a.chan, a.xbuf, fp, ip, work) == kernels.STATUS_BAD_INPUT
    np.testing.assert_array_equal(policy.state, before)


@pytest.mark.parametrize("batch", [None, 3])
@pytest.mark.parametrize("solver", EXPLICIT)
def test_rejected_steps_leave_the_state_untouched(solver, batch):
    model = case_model("dense", solver)
    pol = from_model(model, "cpu", np.float32, batch=batch)
    rows = 1 if batch is None else batch
    x = np.ones((rows, model.config.n_inputs), np.float32)
    x = x[0] if batch is None else x
    bound = stability(model)[solver]["max_elapsed"]
    pol.step(x, bound / 2)
    before = pol.state
    bad = x.copy()
    bad[..., 1] = np.nan
    with pytest.raises(InputError, match="finite"):
        pol.step(bad, bound / 2)
    np.testing.assert_array_equal(pol.state, before)
    for e in (0.0, -1.0, np.inf):
        with pytest.raises(InputError, match="elapsed"):
            pol.step(x, e)
        np.testing.assert_array_equal(pol.state, before)
    # Far beyond the stability bound the explicit step blows up: refused, nothing committed.
    for _ in range(20):
        before = pol.state
        try:
            pol.step(x, 1e30)
        except InputError as exc:
            assert "non-finite state" in str(exc)
            break
    else:
        pytest.fail("an elapsed of 1e30 never produced a non-finite state")
    np.testing.assert_array_equal(pol.state, before)
    assert np.all(np.isfinite(pol.state))


def test_unknown_solver_is_refused():
    model = with_solver(case_model("dense", "rk4"), "leapfrog")
    with pytest.raises(BackendError, match="'leapfrog'"):
        Packed(model)
    with pytest.raises(BackendError, match="leapfrog"):
        from_model(model, "cpu")
    assert sorted(SOLVER_CODES) == sorted(SOLVER_NAMES)


@pytest.mark.parametrize("batch", [None, 70])
def test_kernel_refuses_an_unknown_solver_code(batch):
    """A corrupt ip (no Packed makes one) is refused before anything is written."""
    pol = from_model(case_model("dense", "rk4"), "cpu", np.float64, batch=batch)
    ip = pol._ip.copy()
    ip[SOLVER] = 7
    work = pol._work2d.copy()
    work[:, : pol.n_state] = 0.25
    before = work.copy()
    n_in = pol.n_inputs
    if batch is None:
        status = kernels.step(np.ones(n_in), 0.1, pol._fp, ip, work[0])
    else:
        e = np.full(batch, 0.1)
        status, _ = kernels.step_batch(np.ones((batch, n_in)), e, pol._fp, ip, work, pol._bad, pol._scratch)
    assert status == kernels.STATUS_BAD_SOLVER
    np.testing.assert_array_equal(work, before)


@pytest.mark.parametrize("case", ["sparse", "sparse_mixed", "dense"])
def test_synapse_blocks_are_padded_with_null_synapses(case):
    """Whole SIMD vectors per block; the padding is w = 0 past the real count; sparse blocks
    interleave destinations but keep every neuron's own synapses in CSR (source) order."""
    from edgeliquid.runtime import packing as P

    model = case_model(case, "fused_semi_implicit_euler")
    pk = Packed(model, np.float64)
    fp, ip = pk.fp, pk.ip
    p = model.params
    for base, nnz, count, src, dst, mask in (
        (P.SYN, P.NNZ, P.SYN_COUNT, P.SYN_SRC, P.SYN_DST, p["sparsity_mask"]),
        (P.SSYN, P.SNNZ, P.SSYN_COUNT, P.SSYN_SRC, P.SSYN_DST, p["sensory_sparsity_mask"]),
    ):
        n, c = ip[nnz], ip[count]
        assert c == int(np.count_nonzero(mask)) and n % P.SYN_PAD == 0 and 0 <= n - c < P.SYN_PAD
        w = fp[ip[base] : ip[base] + n]
        assert np.all(w[c:] == 0.0)
        s, d = ip[ip[src] : ip[src] + c], ip[ip[dst] : ip[dst] + c]
        assert sorted(zip(d, s)) == sorted(zip(*np.nonzero(mask.T != 0)))
        for j in np.unique(d):
            assert list(s[d == j]) == sorted(s[d == j])
        assert np.all(ip[ip[dst] : ip[dst] + n] < model.config.units)


def test_padding_changes_no_result_bit():
    """The same model packed without padding (SYN_PAD = 1) steps to the same bits in float64."""
    from edgeliquid.runtime import packing as P

    model = case_model("sparse", "fused_semi_implicit_euler")
    rng = np.random.default_rng(5)
    xs = rng.normal(size=(20, model.config.n_inputs))
    el = irregular_elapsed(rng, 20)
    outs = []
    for pad in (P.SYN_PAD, 1):
        old, P.SYN_PAD = P.SYN_PAD, pad
        try:
            pk = Packed(model, np.float64)
        finally:
            P.SYN_PAD = old
        work = np.zeros(pk.work_size)
        ys = []
        for x, e in zip(xs, el):
            assert kernels.step(x, float(e), pk.fp, pk.ip, work) == kernels.STATUS_OK
            ys.append(work[: model.config.units].copy())
        outs.append(np.array(ys))
        if pad > 1:
            assert pk.ip[P.NNZ] > pk.ip[P.SYN_COUNT]  # this model does get padding
    assert np.array_equal(outs[0], outs[1])
