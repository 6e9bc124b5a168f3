"""CfC model files (issue 14, model file part): the graph onnxruntime runs equals the numpy
reference, metadata and parameters round-trip, hostile files are refused with one-line
ModelFormatErrors naming the file and the key, `inspect` reports bounds that hold, and
firmware refuses CfC."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeliquid
from edgeliquid import ModelFormatError
from edgeliquid.model.cell import LTCModel
from edgeliquid.model.cfc import ACTIVATIONS, CFC_MODES, CfCConfig, CfCModel, cfc_expected_shapes
from edgeliquid.model.cfc_file import CFC_DERIVED_KEYS
from edgeliquid.model.file import metadata_for, read, read_bytes, save
from edgeliquid.model.guarantees import cfc_guarantees
from edgeliquid.model.inspect import describe, format_text
from edgeliquid.runtime.cfc_reference import CfCReferenceCell

SHIPPED_LTC = Path(edgeliquid.__file__).parent / "data" / "cartpole_ncp.onnx"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "model-format.md"


def random_cfc(cfg: CfCConfig, seed: int = 0, scale: float = 0.5) -> CfCModel:
    """A CfC model with random parameters; wired masks as ncps builds them (random input
    synapses, full recurrence within the layer)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in cfc_expected_shapes(cfg).items():
        if name.endswith("sparsity_mask"):
            mask = (rng.random(shape) < 0.6).astype(np.float64)
            if cfg.wired:
                n = shape[0]
                mask[:, shape[1] - n :] = 1.0
            params[name] = mask
        else:
            params[name] = rng.normal(0.0, scale, shape)
    return CfCModel(cfg, params, info={"training": "random"})


def _saved(tmp_path: Path, model: CfCModel, name: str = "cfc.onnx") -> Path:
    path = tmp_path / name
    save(model, path)
    return path


def _ort_matches_reference(path: Path, steps: int = 40, batch: int = 4, seed: int = 1) -> float:
    """onnxruntime on the file vs the float64 reference, step by step from the same states
    (the reference's own trajectory), per-row irregular elapsed; returns the worst error."""
    model = read(path)
    cfg = model.config
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = CfCReferenceCell(model, np.float64)
    rng = np.random.default_rng(seed)
    state = np.zeros((batch, cfg.n_state))
    worst = 0.0
    for _ in range(steps):
        x = rng.normal(0.0, 1.5, (batch, cfg.n_inputs)).astype(np.float32)
        elapsed = rng.uniform(0.01, 4.0, (batch, 1)).astype(np.float32)
        s32 = state.astype(np.float32)
        y, nxt = sess.run(None, {"x": x, "state": s32, "elapsed": elapsed})
        y_ref, state = ref.step(x, s32, elapsed[:, 0])
        assert y.shape == (batch, cfg.n_outputs) and nxt.shape == (batch, cfg.n_state)
        worst = max(worst, float(np.abs(y - y_ref).max()), float(np.abs(nxt - state).max()))
    return worst


# ------------------------------------------------------------- graph == reference


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backbone_layers", [0, 1, 2])
@pytest.mark.parametrize("mode", CFC_MODES)
def test_onnxruntime_matches_reference_unwired(tmp_path, mode, backbone_layers, activation):
    variants = [
        {},
        {"sparse": True},
        {"mixed_memory": True, "proj_size": 2},
        {"mixed_memory": True, "sparse": True},
    ]
    for i, extra in enumerate(variants):
        cfg = CfCConfig(
            n_inputs=3,
            units=6,
            mode=mode,
            activation=activation,
            backbone_units=12,
            backbone_layers=backbone_layers,
            **extra,
        )
        model = random_cfc(cfg, seed=i)
        path = _saved(tmp_path, model, f"m{i}.onnx")
        back = read(path)
        assert isinstance(back, CfCModel) and back.config == cfg, (back.config, cfg)
        assert back.info == {"training": "random"}
        for k, v in model.params.items():
            np.testing.assert_array_equal(back.params[k], np.float32(v))
        err = _ort_matches_reference(path, seed=i)
        assert err < 1e-5, (extra, err)


@pytest.mark.parametrize("mode", CFC_MODES)
@pytest.mark.parametrize("layer_sizes", [(5,), (4, 3, 2), (6, 4, 2, 1)])
@pytest.mark.parametrize("extra", [{}, {"mixed_memory": True}, {"proj_size": 3}])
def test_onnxruntime_matches_reference_wired(tmp_path, mode, layer_sizes, extra):
    cfg = CfCConfig(n_inputs=4, units=sum(layer_sizes), mode=mode, layer_sizes=layer_sizes, **extra)
    path = _saved(tmp_path, random_cfc(cfg, seed=len(layer_sizes)))
    assert read(path).config == cfg
    assert _ort_matches_reference(path, batch=5) < 1e-5


def test_batch_equal_to_units_and_long_sequence(tmp_path):
    """batch == units (where ncps' squeeze goes wrong), 2000 steps, each row its own elapsed."""
    cfg = CfCConfig(n_inputs=3, units=8, backbone_units=16, activation="gelu")
    path = _saved(tmp_path, random_cfc(cfg, seed=3))
    assert _ort_matches_reference(path, steps=2000, batch=8, seed=4) < 1e-5


def test_per_row_elapsed_is_per_row(tmp_path):
    """Each batch row of the file's graph equals that row stepped alone with its own elapsed."""
    cfg = CfCConfig(n_inputs=2, units=4, backbone_units=8)
    path = _saved(tmp_path, random_cfc(cfg, seed=5))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 2)).astype(np.float32)
    s = rng.uniform(-0.5, 0.5, (4, 4)).astype(np.float32)
    el = np.array([[0.01], [0.5], [2.0], [30.0]], np.float32)
    y, _ = sess.run(None, {"x": x, "state": s, "elapsed": el})
    for r in range(4):
        yr, _ = sess.run(None, {"x": x[r : r + 1], "state": s[r : r + 1], "elapsed": el[r : r + 1]})
        np.testing.assert_allclose(y[r], yr[0], atol=1e-6)
    assert np.abs(y[0] - y[3]).max() > 1e-3  # elapsed matters


def test_gelu_is_computed_with_erf_and_the_file_passes_the_checker(tmp_path):
    cfg = CfCConfig(n_inputs=2, units=3, activation="gelu", backbone_layers=2, backbone_units=4)
    path = _saved(tmp_path, random_cfc(cfg))
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    ops = {n.op_type for n in m.graph.node}
    assert "Erf" in ops and "Gelu" not in ops
    assert m.opset_import[0].version == 17
    assert [i.name for i in m.graph.input] == ["x", "state", "elapsed"]
    assert [o.name for o in m.graph.output] == ["y", "next_state"]


def test_metadata_keys(tmp_path):
    cfg = CfCConfig(
        n_inputs=3, units=9, mode="no_gate", layer_sizes=(4, 3, 2), proj_size=2, mixed_memory=True
    )
    model = random_cfc(cfg)
    assert set(metadata_for(model)) - {"training"} == set(CFC_DERIVED_KEYS)
    meta = {p.key: p.value for p in onnx.load(_saved(tmp_path, model)).metadata_props}
    assert meta["edgeliquid.cell"] == "cfc"
    assert meta["edgeliquid.mode"] == "no_gate"
    assert meta["edgeliquid.layer_sizes"] == "4,3,2"
    assert meta["edgeliquid.n_state"] == "18" and meta["edgeliquid.n_outputs"] == "2"
    assert meta["edgeliquid.motor_neurons"] == "2"
    assert meta["edgeliquid.training"] == "random"


def test_ltc_files_still_load_as_ltc():
    assert isinstance(read(SHIPPED_LTC), LTCModel)


def test_docs_name_every_cfc_key_and_parameter():
    text = DOCS.read_text()
    section = text[text.index("## CfC") :]
    for key in CFC_DERIVED_KEYS:
        assert f"`{key}`" in section, key
    for name in ("ff1.weight", "time_a.weight", "w_tau", "backbone.{k}.weight", "sparsity_mask", "fc.weight"):
        assert name in section, name


# ------------------------------------------------------------------ hostile files

BASE = CfCConfig(n_inputs=3, units=5, backbone_units=8, backbone_layers=1)


def _mutated(tmp_path: Path, mutate, cfg: CfCConfig = BASE, name: str = "bad.onnx") -> Path:
    path = _saved(tmp_path, random_cfc(cfg), "good_" + name)
    m = onnx.load(path)
    mutate(m)
    bad = tmp_path / name
    bad.write_bytes(m.SerializeToString())
    return bad


def _refused(path: Path, *keys: str) -> str:
    with pytest.raises(ModelFormatError) as info:
        read(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    for key in keys:
        assert key in msg, f"{key!r} not in {msg!r}"
    assert "\n" not in msg and len(msg) < 600, msg
    return msg


def set_meta(**values):
    def mutate(m):
        props = {p.key: p.value for p in m.metadata_props}
        for key, value in values.items():
            if value is None:
                props.pop("edgeliquid." + key, None)
            else:
                props["edgeliquid." + key] = value
        del m.metadata_props[:]
        helper.set_model_props(m, props)

    return mutate


def drop_init(name: str):
    def mutate(m):
        keep = [t for t in m.graph.initializer if t.name != name]
        assert len(keep) < len(m.graph.initializer), name
        del m.graph.initializer[:]
        m.graph.initializer.extend(keep)

    return mutate


def replace_init(name: str, array: np.ndarray):
    def mutate(m):
        for i, t in enumerate(m.graph.initializer):
            if t.name == name:
                m.graph.initializer[i].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))
                return
        raise AssertionError(name)

    return mutate


@pytest.mark.parametrize(
    "mutate, keys",
    [
        (set_meta(mode="bogus"), ["mode 'bogus'", "default"]),
        (set_meta(mode=None), ["edgeliquid.mode is missing"]),
        (set_meta(activation="swish"), ["activation 'swish'", "lecun_tanh"]),
        (set_meta(activation=None), ["edgeliquid.activation is missing"]),
        (set_meta(mixed_memory="yes"), ["edgeliquid.mixed_memory", "'yes'"]),
        (set_meta(sparse="1"), ["edgeliquid.sparse"]),
        (set_meta(backbone_units="8.0"), ["edgeliquid.backbone_units='8.0'", "not a non-negative integer"]),
        (set_meta(backbone_layers="-1"), ["edgeliquid.backbone_layers='-1'"]),
        (set_meta(proj_size="1e3"), ["edgeliquid.proj_size"]),
        (set_meta(layer_sizes="4,x"), ["edgeliquid.layer_sizes='x'"]),
        (set_meta(layer_sizes="3,1"), ["layer_sizes (3, 1) sum to 4, but units=5"]),
        (set_meta(layer_sizes="0,5"), ["layer_sizes entries must be integers >= 1"]),
        (set_meta(layer_sizes=",".join(["1"] * 65)), ["layer_sizes has 65 layers; the limit is 64"]),
        (set_meta(n_state="10"), ["edgeliquid.n_state='10' disagrees with 5"]),
        (set_meta(n_outputs="2"), ["edgeliquid.n_outputs='2' disagrees with 5"]),
        (set_meta(cell="gru"), ["edgeliquid.cell is 'gru'", "'cfc'"]),
        (set_meta(units="0"), ["units must be >= 1"]),
        (set_meta(backbone_units="0"), ["backbone_units must be >= 1 when backbone_layers=1"]),
        (set_meta(backbone_units="1000000000"), ["backbone_units=1000000000 exceeds the limit 16384"]),
        (set_meta(backbone_layers="100000"), ["backbone_layers=100000 exceeds the limit 64"]),
        (set_meta(units="100000000"), ["units=100000000 exceeds the limit 4096"]),
        (drop_init("time_a.weight"), ["missing parameter 'time_a.weight'"]),
        (drop_init("ff2.bias"), ["missing parameter 'ff2.bias'"]),
        (drop_init("backbone.0.weight"), ["missing parameter 'backbone.0.weight'"]),
        (
            replace_init("ff1.weight", np.zeros((5, 9))),
            ["parameter 'ff1.weight' has shape (5, 9), expected (5, 8)"],
        ),
        (replace_init("backbone.0.weight", np.zeros((8, 7))), ["'backbone.0.weight' has shape (8, 7)"]),
        (replace_init("time_b.bias", np.full(5, np.nan)), ["parameter 'time_b.bias' has 5 NaN/Inf"]),
        (set_meta(backbone_layers="2"), ["missing parameter 'backbone.1.weight'"]),
        (set_meta(mode="pure"), ["missing parameter 'w_tau'"]),
        (set_meta(sparse="true"), ["missing parameter 'sparsity_mask'"]),
        (set_meta(proj_size="2", n_outputs="2"), ["missing parameter 'fc.weight'"]),
    ],
)
def test_hostile_cfc_files_are_refused(tmp_path, mutate, keys):
    _refused(_mutated(tmp_path, mutate), *keys)


def test_unexpected_heads_for_the_mode(tmp_path):
    """A pure-mode file that also carries default-mode heads: which graph is meant?"""
    cfg = BASE.replace(mode="pure")

    def add_ff2(m):
        m.graph.initializer.append(numpy_helper.from_array(np.zeros((5, 8), np.float32), "ff2.weight"))

    _refused(_mutated(tmp_path, add_ff2, cfg), "unexpected parameters ['ff2.weight']", "mode='pure'")

    def add_lstm(m):
        w = np.zeros((20, 3), np.float32)
        m.graph.initializer.append(numpy_helper.from_array(w, "lstm.input_map.weight"))

    _refused(
        _mutated(tmp_path, add_lstm), "unexpected parameters ['lstm.input_map.weight']", "mixed_memory=False"
    )


def test_wired_masks_must_be_zero_or_one(tmp_path):
    cfg = CfCConfig(n_inputs=3, units=5, layer_sizes=(3, 2))
    bad = np.full((2, 5), 0.5)
    _refused(
        _mutated(tmp_path, replace_init("layer_1.sparsity_mask", bad), cfg), "layer_1.sparsity_mask", "0.5"
    )
    _refused(
        _mutated(tmp_path, drop_init("layer_0.sparsity_mask"), cfg),
        "missing parameter 'layer_0.sparsity_mask'",
    )
    wrong = np.zeros((2, 4))
    _refused(
        _mutated(tmp_path, replace_init("layer_1.ff1.weight", wrong), cfg),
        "'layer_1.ff1.weight' has shape (2, 4)",
    )


def test_signature_must_agree(tmp_path):
    def widen(m):
        m.graph.input[1].type.tensor_type.shape.dim[1].dim_value = 7

    _refused(_mutated(tmp_path, widen), "graph input 'state' has dims", "[batch, 5]")


def test_external_data_is_refused_in_cfc_files(tmp_path):
    def external(m):
        t = next(t for t in m.graph.initializer if t.name == "ff1.weight")
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value="../../etc/passwd")

    _refused(_mutated(tmp_path, external), "initializer 'ff1.weight' keeps its values in external data")


def test_save_refuses_bad_models(tmp_path):
    with pytest.raises(ModelFormatError, match="activation 'swish'"):
        save(
            random_cfc(BASE).__class__(BASE.replace(activation="swish"), random_cfc(BASE).params),
            tmp_path / "a",
        )
    m = random_cfc(BASE)
    del m.params["time_a.bias"]
    with pytest.raises(ModelFormatError, match="missing parameter 'time_a.bias'"):
        save(m, tmp_path / "b.onnx")
    assert not (tmp_path / "b.onnx").exists()


def test_corrupted_cfc_bytes_raise_only_model_format_error(tmp_path):
    data = _saved(tmp_path, random_cfc(BASE)).read_bytes()
    rng = np.random.default_rng(0)
    for i in range(150):
        b = bytearray(data)
        for pos in rng.integers(0, len(b), size=rng.integers(1, 8)):
            b[pos] = int(rng.integers(0, 256))
        if i % 3 == 0:
            b = b[: int(rng.integers(1, len(b)))]
        try:
            read_bytes(bytes(b), "fuzz.onnx")
        except ModelFormatError as exc:
            assert str(exc).startswith("fuzz.onnx: ") and "\n" not in str(exc)


CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    limit = 1024 * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from edgeliquid import ModelFormatError
    from edgeliquid.model.file import read
    cpu0 = time.process_time()
    cap = int(cpu0) + 30
    resource.setrlimit(resource.RLIMIT_CPU, (cap, cap + 5))
    try:
        read(sys.argv[1])
        out = {"error": None}
    except ModelFormatError as exc:
        out = {"error": str(exc)}
    out["cpu_s"] = time.process_time() - cpu0
    print(json.dumps(out))
    """
)


def replace_tensor(name: str, tensor: TensorProto):
    def mutate(m):
        next(t for t in m.graph.initializer if t.name == name).CopyFrom(tensor)

    return mutate


HUGE = {
    "backbone_1e9": (
        set_meta(backbone_units="1000000000"),
        "backbone_units=1000000000 exceeds the limit 16384",
    ),
    "backbone_params": (
        set_meta(backbone_units="16384", backbone_layers="64"),
        "parameters (units=5, n_inputs=3, backbone_units=16384, backbone_layers=64, mixed_memory=False) "
        "exceed the limit 67108864",
    ),
    "wide_cell": (
        set_meta(units="4096", n_state="4096", n_outputs="4096", motor_neurons="4096", backbone_units="4096"),
        "exceed the limit 67108864",
    ),
    "layers_1e4": (set_meta(layer_sizes=",".join(["1"] * 10000)), "layer_sizes has 10000 layers"),
    "dims_1e12": (
        replace_tensor(
            "ff1.bias", TensorProto(name="ff1.bias", data_type=1, dims=[10**12], raw_data=b"\0" * 4)
        ),
        "parameter 'ff1.bias' has shape (1000000000000,)",
    ),
}


@pytest.mark.parametrize("case", sorted(HUGE))
def test_huge_sizes_refused_before_allocation(tmp_path, case):
    """Refused in a child limited to 1 GiB of address space, in bounded CPU time."""
    mutate, expected = HUGE[case]
    path = _mutated(tmp_path, mutate, name=f"{case}.onnx")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] is not None and out["error"].startswith(f"{path}: "), out
    assert expected in out["error"], out
    assert out["cpu_s"] < 5.0, out


# --------------------------------------------------------------------- inspect


def _bounded_cases():
    yield CfCConfig(n_inputs=3, units=6, backbone_units=10, activation="relu")
    yield CfCConfig(n_inputs=3, units=6, mode="no_gate", backbone_layers=0)
    yield CfCConfig(
        n_inputs=3, units=6, mode="no_gate", backbone_layers=2, activation="gelu", mixed_memory=True
    )
    yield CfCConfig(n_inputs=3, units=9, layer_sizes=(4, 3, 2), proj_size=2)
    yield CfCConfig(n_inputs=3, units=6, mode="pure", activation="tanh", backbone_units=10)
    yield CfCConfig(n_inputs=3, units=6, mode="pure", activation="lecun_tanh", backbone_units=10, proj_size=3)


@pytest.mark.parametrize("case", range(6))
def test_state_bounds_hold_over_long_random_inputs(case):
    """2000 steps of wild inputs (scale up to 100) and elapsed times (1e-3 .. 100): every
    step's |h| and |y| stay within what inspect reports."""
    cfg = list(_bounded_cases())[case]
    model = random_cfc(cfg, seed=10 + case, scale=1.5)
    g = cfc_guarantees(model)
    assert np.all(np.isfinite(g.h_bound)) and np.all(np.isfinite(g.y_bound))
    if cfg.mode == "default":
        assert np.all(g.h_bound == 1.0)
    if cfg.mode == "no_gate":
        assert np.all(g.h_bound == 2.0)
    ref = CfCReferenceCell(model, np.float64)
    rng = np.random.default_rng(case)
    batch, u = 16, cfg.units
    state = rng.uniform(-1, 1, (batch, cfg.n_state))  # any start: the bound holds after one step
    peak_h, peak_y = np.zeros(u), np.zeros(cfg.n_outputs)
    for _ in range(2000):
        scale = 10.0 ** rng.integers(-1, 3)
        x = rng.normal(0.0, scale, (batch, cfg.n_inputs))
        elapsed = 10.0 ** rng.uniform(-3, 2, batch)
        with np.errstate(over="ignore"):  # the reference's sigmoid saturates on wild inputs
            y, state = ref.step(x, state, elapsed)
        peak_h = np.maximum(peak_h, np.abs(state[:, :u]).max(axis=0))
        peak_y = np.maximum(peak_y, np.abs(y).max(axis=0))
    assert np.all(peak_h <= g.h_bound + 1e-12), (peak_h, g.h_bound)
    assert np.all(peak_y <= g.y_bound + 1e-12), (peak_y, g.y_bound)
    # the bounds are not vacuous: default/no_gate get close to them
    if cfg.mode != "pure":
        assert peak_h.max() > 0.5 * g.h_bound.max()


def test_gate_is_half_open_at_the_reported_elapsed():
    """Backbone 0, zero input and state: the head input is 0, the gate is sigmoid(b_a ts + b_b),
    and h' = tanh(b1)(1 - s) + s tanh(b2) is the midpoint exactly at half_open_elapsed."""
    cfg = CfCConfig(n_inputs=2, units=4, backbone_layers=0)
    model = random_cfc(cfg, seed=7)
    p = model.params
    p["time_a.bias"] = np.array([0.5, -0.5, 2.0, 1.0])
    p["time_b.bias"] = np.array([-1.0, -1.0, -0.5, 1.0])
    d = describe(model)
    half = [n["half_open_elapsed"] for n in d["neurons"]]
    assert half[0] == pytest.approx(2.0) and half[2] == pytest.approx(0.25)
    assert half[1] is None and half[3] is None  # never half open for ts > 0
    ref = CfCReferenceCell(model)
    mid = (np.tanh(p["ff1.bias"]) + np.tanh(p["ff2.bias"])) / 2
    for i in (0, 2):
        _, h = ref.step(np.zeros((1, 2)), np.zeros((1, 4)), np.array([half[i]]))
        assert h[0, i] == pytest.approx(mid[i], abs=1e-12)
    row = np.linalg.norm(p["time_a.weight"], axis=1)
    assert [n["gate_time_scale"] for n in d["neurons"]] == pytest.approx(list(1 / row))


def test_pure_decay_rates():
    cfg = CfCConfig(n_inputs=2, units=3, mode="pure", activation="tanh", backbone_units=4)
    model = random_cfc(cfg, seed=8)
    g = cfc_guarantees(model)
    p = model.params
    np.testing.assert_allclose(g.decay_rate_min, np.abs(p["w_tau"][0]))
    f = np.abs(p["ff1.weight"]).sum(axis=1) + np.abs(p["ff1.bias"])
    np.testing.assert_allclose(g.decay_rate_max, np.abs(p["w_tau"][0]) + f)
    unbounded = cfc_guarantees(random_cfc(cfg.replace(activation="relu"), seed=8))
    assert np.all(np.isinf(unbounded.decay_rate_max)) and np.all(np.isinf(unbounded.h_bound))
    assert np.all(np.isnan(g.gate_time_scale))


def test_inspect_cli_on_a_cfc_file(tmp_path):
    cfg = CfCConfig(n_inputs=3, units=9, mode="no_gate", layer_sizes=(4, 3, 2), mixed_memory=True)
    path = _saved(tmp_path, random_cfc(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "edgeliquid", "inspect", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["cell"] == "cfc" and d["mode"] == "no_gate" and d["layer_sizes"] == [4, 3, 2]
    assert [n["layer"] for n in d["neurons"]] == [0] * 4 + [1] * 3 + [2] * 2
    assert all(n["h_bound"] == 2.0 for n in d["neurons"])
    text = format_text(d)
    assert "CfC, mode no_gate" in text and "c, the state's second half, has no bound" in text
    proc = subprocess.run(
        [sys.executable, "-m", "edgeliquid", "inspect", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "gate_ts" in proc.stdout, proc.stderr


# -------------------------------------------------------------------- firmware


def test_firmware_refuses_cfc_fixed_point(tmp_path):
    from firmware_export.cfc_c import FIXED_POINT_REFUSAL

    path = _saved(tmp_path, random_cfc(BASE.replace(mode="pure")))  # default/no_gate have fixed point
    out = tmp_path / "fw"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeliquid",
            "firmware",
            str(path),
            "-o",
            str(out),
            "--name",
            "pol",
            "--fixed-point",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.strip().splitlines() == [f"edgeliquid firmware: error: {path}: {FIXED_POINT_REFUSAL}"]
    assert not out.exists() or not any(out.iterdir())
