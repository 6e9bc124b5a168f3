"""The ncps.keras CfC formulation (``edgeliquid.formulation = keras``) in every backend.

Random keras-formulation models: the numpy reference is checked against the equations of
``ncps/keras/cfc_cell.py`` written out here; cpu (float32, single and batch), onnxruntime on
the saved file and CUDA (simulator without a GPU) against the reference. Also: old files
without the key load as ``torch``, an unknown value is refused, and inspect's state bound.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

if "NUMBA_ENABLE_CUDASIM" not in os.environ and not os.path.exists("/dev/nvidia0"):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

from edgeliquid import ModelFormatError  # noqa: E402
from edgeliquid.model.cfc import CfCConfig, CfCModel, cfc_expected_shapes  # noqa: E402
from edgeliquid.model.file import read, save  # noqa: E402
from edgeliquid.model.guarantees import cfc_guarantees  # noqa: E402
from edgeliquid.runtime.policy import from_model  # noqa: E402
from edgeliquid.runtime.reference import sigmoid  # noqa: E402

CONFIGS = {
    "default-bb1-lecun": CfCConfig(3, 5, "default", "lecun_tanh", 8, 1, formulation="keras"),
    "nogate-bb0": CfCConfig(3, 4, "no_gate", backbone_layers=0, backbone_units=0, formulation="keras"),
    "wired-default": CfCConfig(
        3, 9, "default", backbone_units=0, backbone_layers=0, layer_sizes=(5, 3, 1), formulation="keras"
    ),  # fmt: skip
    "pure-bb1": CfCConfig(3, 4, "pure", "tanh", 6, 1, formulation="keras"),
    # a keras CfCCell(sparsity_mask=...): the unwired mask on ff1/ff2
    "default-bb0-sparse": CfCConfig(
        3, 4, backbone_units=0, backbone_layers=0, sparse=True, formulation="keras"
    ),
}


def _model(cfg: CfCConfig, seed: int = 0) -> CfCModel:
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


def _inputs(cfg, steps=10, batch=None, seed=1):
    rng = np.random.default_rng(seed)
    shape = (steps, cfg.n_inputs) if batch is None else (steps, batch, cfg.n_inputs)
    return rng.normal(0, 1.0, shape), rng.uniform(0.05, 3.0, shape[:-1])


def _drive(pol, xs, es):
    return np.array([pol.step(x, e).copy() for x, e in zip(xs, es, strict=True)])


def test_reference_is_the_keras_equation():
    """One unwired no-backbone step written out as ncps/keras/cfc_cell.py computes it."""
    cfg = CONFIGS["nogate-bb0"]
    m = _model(cfg)
    p = m.params
    x, h, t = np.array([[0.3, -1.0, 2.0]]), np.array([[0.1, -0.2, 0.5, 0.9]]), 0.7
    z = np.concatenate([x, h], axis=1)
    ff1 = z @ p["ff1.weight"].T + p["ff1.bias"]
    ff2 = z @ p["ff2.weight"].T + p["ff2.bias"]
    ta = z @ p["time_a.weight"].T + p["time_a.bias"]
    tb = z @ p["time_b.weight"].T + p["time_b.bias"]
    want = ff1 + sigmoid(-ta * t + tb) * ff2
    ref = from_model(m, "reference", np.float64)
    ref.state = h[0]
    np.testing.assert_allclose(ref.step(x[0], t), want[0], rtol=1e-12)
    torch_like = from_model(_model(cfg.replace(formulation="torch")), "reference", np.float64)
    torch_like.state = h[0]
    assert not np.allclose(torch_like.step(x[0], t), want[0])  # the key changes the equations


@pytest.mark.parametrize("cid", list(CONFIGS))
def test_cpu_onnxruntime_cuda_match_reference(tmp_path, cid):
    cfg = CONFIGS[cid]
    path = tmp_path / f"{cid}.onnx"
    save(_model(cfg), path)
    m = read(path)
    assert m.config.formulation == "keras"
    xs, es = _inputs(cfg)
    want = _drive(from_model(m, "reference", np.float64), xs, es)
    got = _drive(from_model(m, "cpu", np.float32), xs, es)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = from_model(m, "reference", np.float64)
    for x, e in zip(xs, es, strict=True):
        s = ref.state.astype(np.float32)[None]
        y, _ = sess.run(
            None, {"x": x[None].astype(np.float32), "state": s, "elapsed": np.array([[e]], np.float32)}
        )
        np.testing.assert_allclose(y[0], ref.step(x, e), rtol=0, atol=2e-5)
    if cid not in ("default-bb1-lecun", "wired-default"):  # batch and CUDA: two configs keep CI time low
        return
    xb, eb = _inputs(cfg, 4, batch=70)  # more than one SIMD chunk of the batch kernel
    want_b = _drive(from_model(m, "reference", np.float64, batch=70), xb, eb)
    got_b = _drive(from_model(m, "cpu", np.float32, batch=70), xb, eb)
    np.testing.assert_allclose(got_b, want_b, rtol=0, atol=2e-5)
    gpu = from_model(m, "cuda", np.float32, batch=2)
    xg, eg = _inputs(cfg, 3, batch=2)
    np.testing.assert_allclose(
        _drive(gpu, xg, eg), _drive(from_model(m, "reference", np.float64, batch=2), xg, eg), atol=2e-5
    )


def test_old_files_load_as_torch_and_unknown_values_are_refused(tmp_path):
    path = tmp_path / "m.onnx"
    save(_model(CONFIGS["default-bb1-lecun"].replace(formulation="torch")), path)
    proto = onnx.load(path)
    keys = [p.key for p in proto.metadata_props]
    assert "edgeliquid.formulation" in keys
    del proto.metadata_props[keys.index("edgeliquid.formulation")]
    onnx.save(proto, path)
    assert read(path).config.formulation == "torch"
    proto.metadata_props.add(key="edgeliquid.formulation", value="tensorflow")
    onnx.save(proto, path)
    with pytest.raises(ModelFormatError, match="formulation"):
        read(path)


def test_state_bound_without_tanh():
    """Keras formulation: no |h| <= 1; with a tanh-bounded backbone a bound from the heads, which holds."""
    m = _model(CONFIGS["default-bb1-lecun"])
    g = cfc_guarantees(m)
    assert np.all(np.isfinite(g.h_bound)) and np.any(g.h_bound > 1.0)
    xs, es = _inputs(m.config, 300, seed=4)
    xs *= 10
    ys = _drive(from_model(m, "reference", np.float64), xs, es)
    assert np.all(np.abs(ys) <= g.h_bound + 1e-9)
    assert np.all(np.isinf(cfc_guarantees(_model(CONFIGS["wired-default"])).h_bound))
