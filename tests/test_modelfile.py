"""Model file: round trip, onnx checker, and every kind of bad file rejected by name."""

import numpy as np
import onnx
import pytest
from helpers import random_model
from onnx import numpy_helper

import edgeliquid
from edgeliquid import ModelFormatError
from edgeliquid.model.file import build_graph, read, save


@pytest.fixture()
def model_path(tmp_path):
    path = tmp_path / "m.onnx"
    save(random_model(np.random.default_rng(0), mixed=True), path)
    return path


def test_round_trip_keeps_parameters_and_config(tmp_path):
    m = random_model(
        np.random.default_rng(1),
        units=7,
        n_in=4,
        motors=3,
        positivity="none",
        input_mapping="linear",
        output_mapping="none",
        unfolds=3,
    )
    save(m, tmp_path / "a.onnx")
    back = read(tmp_path / "a.onnx")
    assert back.config == m.config
    assert set(back.params) == set(m.params)
    for k in m.params:
        np.testing.assert_array_equal(back.params[k], m.params[k])
    onnx.checker.check_model(onnx.load(tmp_path / "a.onnx"), full_check=True)


def test_metadata_keys(model_path):
    meta = {p.key: p.value for p in onnx.load(model_path).metadata_props}
    for key in (
        "format_version",
        "cell",
        "ode_unfolds",
        "epsilon",
        "positivity",
        "input_mapping",
        "output_mapping",
        "motor_neurons",
        "neuron_roles",
        "mixed_memory",
        "exporter_version",
    ):
        assert "edgeliquid." + key in meta
    assert meta["edgeliquid.cell"] == "ltc"
    pol = edgeliquid.load(model_path, backend="reference")
    assert pol.metadata["mixed_memory"] == "true"


def test_graph_has_symbolic_batch_and_no_loops(model_path):
    g = onnx.load(model_path).graph
    assert g.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not {"Loop", "Scan", "If"} & {n.op_type for n in g.node}
    names = {i.name for i in g.initializer}
    assert {"gleak", "sensory_erev", "lstm.input_map.weight"} <= names


def _rewrite(path, mutate):
    m = onnx.load(path)
    mutate(m)
    path.write_bytes(m.SerializeToString())
    return path


def test_not_onnx(tmp_path):
    p = tmp_path / "junk.onnx"
    p.write_bytes(b"\x00\xffnot a protobuf at all" * 10)
    with pytest.raises(ModelFormatError, match=r"junk.onnx: not an ONNX"):
        edgeliquid.load(p)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFormatError, match=r"nope.onnx: cannot read model file"):
        edgeliquid.load(tmp_path / "nope.onnx")


def test_plain_onnx_without_metadata(tmp_path):
    p = tmp_path / "plain.onnx"
    g = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["a"], ["b"])],
        "g",
        [onnx.helper.make_tensor_value_info("a", 1, [1])],
        [onnx.helper.make_tensor_value_info("b", 1, [1])],
    )
    onnx.save(onnx.helper.make_model(g), p)
    with pytest.raises(ModelFormatError, match="not an edgeliquid model"):
        edgeliquid.load(p)


def _set_meta(key, value):
    def mutate(m):
        for prop in m.metadata_props:
            if prop.key == "edgeliquid." + key:
                prop.value = value

    return mutate


def test_unknown_format_version(model_path):
    _rewrite(model_path, _set_meta("format_version", "99"))
    with pytest.raises(ModelFormatError, match=r"m.onnx: unknown format version '99'"):
        edgeliquid.load(model_path)


def test_inconsistent_sizes(model_path):
    _rewrite(model_path, _set_meta("units", "7"))
    with pytest.raises(ModelFormatError, match=r"m.onnx: .*(dims|shape|n_state.* disagrees)"):
        edgeliquid.load(model_path)


def _replace_init(name, arr):
    def mutate(m):
        for i, init in enumerate(m.graph.initializer):
            if init.name == name:
                m.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), name))

    return mutate


def test_missing_parameter(model_path):
    def drop(m):
        keep = [i for i in m.graph.initializer if i.name != "sigma"]
        del m.graph.initializer[:]
        m.graph.initializer.extend(keep)

    _rewrite(model_path, drop)
    with pytest.raises(ModelFormatError, match=r"m.onnx: missing parameter 'sigma'"):
        edgeliquid.load(model_path)


def test_misshaped_parameter(model_path):
    _rewrite(model_path, _replace_init("gleak", np.ones(5)))
    with pytest.raises(ModelFormatError, match=r"parameter 'gleak' has shape \(5,\), expected \(6,\)"):
        edgeliquid.load(model_path)


def test_nan_parameter(model_path):
    bad = np.ones((6, 6))
    bad[2, 3] = np.nan
    _rewrite(model_path, _replace_init("mu", bad))
    with pytest.raises(ModelFormatError, match=r"parameter 'mu' has 1 NaN/Inf"):
        edgeliquid.load(model_path)


def test_inf_parameter(model_path):
    _rewrite(model_path, _replace_init("vleak", np.full(6, np.inf)))
    with pytest.raises(ModelFormatError, match=r"parameter 'vleak' has 6 NaN/Inf"):
        edgeliquid.load(model_path)


def test_negative_capacitance_without_constraint(tmp_path):
    m = random_model(np.random.default_rng(3), positivity="none")
    m.params["cm"][0] = -0.5
    with pytest.raises(ModelFormatError, match=r"cm must be >= 0 after the 'none' constraint"):
        save(m, tmp_path / "x.onnx")


def test_graph_signature_checked(model_path):
    def rename(m):
        m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 99

    _rewrite(model_path, rename)
    with pytest.raises(ModelFormatError, match=r"graph input 'x' has dims \['batch', 99\]"):
        edgeliquid.load(model_path)


def test_build_graph_passes_full_checker():
    m = random_model(np.random.default_rng(5), mixed=False, output_mapping="none")
    onnx.checker.check_model(build_graph(m), full_check=True)
