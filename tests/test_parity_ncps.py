"""Parity with ncps itself, the oracle: reference, cpu and onnxruntime on random models.

Tolerances: float32 within 1e-5 of the output scale (max |y| over the run, at
least 1), float64 within 1e-10 of it, over 500 steps of irregular elapsed time.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ncps_torch = pytest.importorskip("ncps.torch")
from helpers import irregular_elapsed, perturbed_ncps, run_ncps  # noqa: E402
from ncps import wirings  # noqa: E402

import edgeliquid  # noqa: E402
from edgeliquid.model.export import export_module  # noqa: E402

STEPS = 500
TOL = {np.float32: 1e-5, np.float64: 1e-10}


def _wiring(kind: str, n_in: int):
    if kind == "fc8":
        return wirings.FullyConnected(8, 3)
    if kind == "fc16":
        return wirings.FullyConnected(16)
    if kind == "random":
        return wirings.Random(12, 2, sparsity_level=0.6)
    if kind == "ncp":
        return wirings.NCP(6, 4, 2, 3, 2, 2, 2)
    if kind == "autoncp19":
        return wirings.AutoNCP(19, 1)
    if kind == "autoncp32":
        return wirings.AutoNCP(32, 4)
    raise ValueError(kind)


CASES = [
    # (wiring, constraints, in_map, out_map, unfolds, mixed)
    ("fc8", True, "affine", "affine", 6, False),
    ("fc16", False, "linear", "none", 1, False),
    ("random", True, "none", "linear", 12, False),
    ("ncp", False, "affine", "affine", 6, False),
    ("autoncp19", True, "affine", "affine", 6, False),
    ("autoncp32", True, "linear", "affine", 12, False),
    ("autoncp19", True, "affine", "affine", 6, True),
    ("fc8", False, "none", "none", 1, True),
    ("random", False, "affine", "linear", 6, True),
]


@pytest.fixture(
    scope="module",
    params=range(len(CASES)),
    ids=[
        f"{c[0]}-{'softplus' if c[1] else 'noconstraint'}-{c[2]}-{c[3]}-u{c[4]}{'-mixed' if c[5] else ''}"
        for c in CASES
    ],
)
def case(request, tmp_path_factory):
    kind, implicit, in_map, out_map, unfolds, mixed = CASES[request.param]
    torch.manual_seed(request.param)
    n_in = 5
    module = ncps_torch.LTC(
        n_in,
        _wiring(kind, n_in),
        mixed_memory=mixed,
        input_mapping=in_map,
        output_mapping=out_map,
        ode_unfolds=unfolds,
        implicit_param_constraints=implicit,
    )
    perturbed_ncps(module, seed=request.param)
    path = tmp_path_factory.mktemp("m") / "model.onnx"
    export_module(module, path)
    rng = np.random.default_rng(request.param)
    xs = rng.normal(0, 1.5, (STEPS, n_in))
    el = irregular_elapsed(rng, STEPS)
    # float32 inputs so that both dtypes start from the same numbers
    xs = xs.astype(np.float32).astype(np.float64)
    el = el.astype(np.float32).astype(np.float64)
    oracle = {dt: run_ncps(module, xs, el, mixed, dt) for dt in (np.float32, np.float64)}
    return dict(path=path, xs=xs, el=el, oracle=oracle, mixed=mixed)


def _err(y, oracle):
    scale = max(1.0, float(np.max(np.abs(oracle))))
    return float(np.max(np.abs(np.asarray(y, np.float64) - oracle))) / scale


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_step_matches_ncps(case, backend, dtype):
    pol = edgeliquid.load(case["path"], backend=backend, dtype=dtype)
    ys = np.stack([pol.step(x, e).copy() for x, e in zip(case["xs"], case["el"])])
    assert _err(ys, case["oracle"][dtype]) <= TOL[dtype]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_run_matches_ncps(case, backend, dtype):
    pol = edgeliquid.load(case["path"], backend=backend, dtype=dtype)
    ys = pol.run(case["xs"], case["el"])
    assert _err(ys, case["oracle"][dtype]) <= TOL[dtype]


def test_onnxruntime_matches_ncps(case):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(case["path"]), providers=["CPUExecutionProvider"])
    pol = edgeliquid.load(case["path"], backend="reference")
    state = np.zeros((1, pol.n_state), np.float32)
    ys = []
    for x, e in zip(case["xs"], case["el"]):
        y, state = sess.run(
            None, {"x": x[None].astype(np.float32), "state": state, "elapsed": np.array([[e]], np.float32)}
        )
        ys.append(y[0])
    assert _err(np.array(ys), case["oracle"][np.float32]) <= TOL[np.float32]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_batch_rows_each_use_their_own_elapsed(case, backend, dtype):
    """Batch == units (where ncps' broadcast bug would silently pass) and per-row dt."""
    ref = edgeliquid.load(case["path"], backend="reference", dtype=np.float64)
    b = ref.config.units
    pol = edgeliquid.load(case["path"], backend=backend, dtype=dtype, batch=b)
    rng = np.random.default_rng(7)
    xs = rng.normal(0, 1, (40, b, ref.n_inputs)).astype(np.float32)
    el = rng.uniform(0.1, 2.0, (40, b)).astype(np.float32)
    got = np.stack([pol.step(xs[t], el[t]).copy() for t in range(40)])
    want = np.empty_like(got, dtype=np.float64)
    for row in range(b):
        ref.reset()
        want[:, row] = ref.run(xs[:, row], el[:, row])
    assert _err(got, want) <= TOL[dtype] * 10
    pol.reset()
    assert _err(pol.run(xs, el), want) <= TOL[dtype] * 10
