"""The ONNX graph of the explicit solvers: onnxruntime on the written file agrees with the
float64 reference (``edgeliquid.runtime.reference``) to float32 accuracy, step after step."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import random_model

from edgeliquid.errors import ModelFormatError
from edgeliquid.model.cell import LTCModel
from edgeliquid.model.file import build_graph, read, save
from edgeliquid.model.guarantees import stability
from edgeliquid.runtime.reference import ReferenceCell

EXPLICIT = ("explicit_euler", "rk4")
STEPS, BATCH = 4, 5

# (units, motors, density, mixed, positivity, input_mapping, output_mapping, unfolds)
MODELS = {
    "sparse_affine": (8, 2, 0.3, False, "softplus", "affine", "affine", 3),
    "dense_linear": (6, 2, 1.0, False, "none", "linear", "none", 2),
    "mixed_none": (7, 2, 0.5, True, "softplus", "none", "linear", 4),
    "mixed_dense_all_motor": (5, 5, 1.0, True, "none", "affine", "affine", 1),
}


def variant(model: LTCModel, solver: str, unfolds: int) -> LTCModel:
    cfg = model.config.replace(solver=solver, ode_unfolds=unfolds)
    return LTCModel(cfg, dict(model.params), model.roles, model.info, model.source)


def session(path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def make(seed: int, spec) -> LTCModel:
    units, motors, density, mixed, positivity, inmap, outmap, unfolds = spec
    return random_model(
        np.random.default_rng(seed),
        units=units,
        n_in=3,
        motors=motors,
        density=density,
        positivity=positivity,
        input_mapping=inmap,
        output_mapping=outmap,
        mixed=mixed,
        unfolds=unfolds,
    )


@pytest.mark.parametrize("solver", EXPLICIT)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnxruntime_matches_reference_over_chained_irregular_steps(tmp_path, name, solver):
    seed = sorted(MODELS).index(name) * 2 + EXPLICIT.index(solver)
    base = make(seed, MODELS[name])
    model = variant(base, solver, base.config.ode_unfolds)
    path = tmp_path / f"{name}_{solver}.onnx"
    save(model, path)
    back = read(path)
    assert back.config == model.config and back.config.solver == solver

    rng = np.random.default_rng(100 + seed)
    cfg = back.config
    # Irregular per row and per step, inside the stability bound of this solver.
    max_elapsed = stability(back)[solver]["max_elapsed"]
    elapsed = (rng.uniform(0.2, 1.0, (STEPS, BATCH)) * max_elapsed).astype(np.float32)
    xs = rng.normal(0.0, 1.0, (STEPS, BATCH, cfg.n_inputs)).astype(np.float32)
    state0 = rng.uniform(-0.5, 0.5, (BATCH, cfg.n_state)).astype(np.float32)

    sess, ref = session(path), ReferenceCell(back, np.float64)
    s_ort, s_ref = state0, state0.astype(np.float64)
    for x, el in zip(xs, elapsed):
        y_ort, s_ort = sess.run(None, {"x": x, "state": s_ort, "elapsed": el[:, None]})
        y_ref, s_ref = ref.step(x, s_ref, el)
        np.testing.assert_allclose(y_ort, y_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s_ort, s_ref, rtol=1e-5, atol=1e-5)
    # The trajectory moved: a graph that returned its input state would have failed above.
    assert np.abs(s_ref - state0).max() > 1e-2


def test_explicit_graph_is_not_the_fused_one(tmp_path):
    """Same weights, same elapsed: each solver's file computes its own scheme (a graph that
    silently ran the fused solver would agree with the fused reference instead)."""
    base = make(7, MODELS["sparse_affine"])
    rng = np.random.default_rng(7)
    x = rng.normal(0.0, 1.0, (BATCH, 3)).astype(np.float32)
    s = rng.uniform(-0.5, 0.5, (BATCH, 8)).astype(np.float32)
    el = np.full(BATCH, 0.5 * stability(base)["explicit_euler"]["max_elapsed"], np.float32)
    results = {}
    for solver in ("fused_semi_implicit_euler", *EXPLICIT):
        save(variant(base, solver, 3), tmp_path / f"{solver}.onnx")
        results[solver] = session(tmp_path / f"{solver}.onnx").run(
            None, {"x": x, "state": s, "elapsed": el[:, None]}
        )[1]
        want = ReferenceCell(variant(base, solver, 3)).step(x, s, el)[1]
        np.testing.assert_allclose(results[solver], want, rtol=1e-5, atol=1e-5)
    for a, b in (("fused_semi_implicit_euler", "explicit_euler"), ("explicit_euler", "rk4")):
        assert np.abs(results[a] - results[b]).max() > 1e-3


def test_explicit_graph_has_no_epsilon_and_no_loops():
    model = variant(make(3, MODELS["sparse_affine"]), "rk4", 2)
    g = build_graph(model).graph
    assert "epsilon" not in {i.name for i in g.initializer}
    assert not {"Loop", "Scan", "If"} & {n.op_type for n in g.node}
    onnx.checker.check_model(build_graph(model), full_check=True)


def test_graph_of_an_unknown_solver_is_refused():
    model = variant(make(3, MODELS["sparse_affine"]), "midpoint", 2)
    model.source = "m.onnx"
    with pytest.raises(ModelFormatError, match=r"m.onnx: .*solver 'midpoint'"):
        build_graph(model)


def test_file_with_unknown_solver_metadata_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    save(variant(make(4, MODELS["dense_linear"]), "rk4", 2), path)
    m = onnx.load(path)
    for prop in m.metadata_props:
        if prop.key == "edgeliquid.solver":
            prop.value = "midpoint"
    path.write_bytes(m.SerializeToString())
    with pytest.raises(ModelFormatError, match=r"m.onnx: edgeliquid.solver 'midpoint' unknown; expected one"):
        read(path)
