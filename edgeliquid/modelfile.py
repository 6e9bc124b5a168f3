"""The model file: one ONNX graph computing ONE step of the cell, plus metadata.

Layout (see docs/model-format.md for the full contract):
    inputs   x [batch, n_inputs], state [batch, n_state], elapsed [batch, 1]   float32
    outputs  y [batch, n_outputs], next_state [batch, n_state]                 float32
    initializers: the raw trained parameters under ncps' names
    metadata_props: ``edgeliquid.*`` keys (config, roles, provenance)

The graph uses plain ops only (the ODE unfolds are unrolled), so onnxruntime
and any other ONNX runtime compute the same step as edgeliquid's backends.
edgeliquid's own loader reads the initializers and metadata, not the graph.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import __version__
from .checks import FORMAT_VERSION, check_cell, check_format_version, check_model
from .errors import ModelFormatError
from .model import CellConfig, LTCModel

OPSET = 17
PREFIX = "edgeliquid."


# ------------------------------------------------------------------------- metadata


def metadata_for(model: LTCModel) -> dict[str, str]:
    """All ``edgeliquid.*`` metadata keys (without the prefix) for a model."""
    cfg = model.config
    packed_counts = _synapse_counts(model)
    meta = {
        "format_version": str(FORMAT_VERSION),
        "cell": "ltc",
        "solver": cfg.solver,
        "ode_unfolds": str(cfg.ode_unfolds),
        "epsilon": repr(float(cfg.epsilon)),
        "positivity": cfg.positivity,
        "input_mapping": cfg.input_mapping,
        "output_mapping": cfg.output_mapping,
        "mixed_memory": "true" if cfg.mixed_memory else "false",
        "n_inputs": str(cfg.n_inputs),
        "units": str(cfg.units),
        "motor_neurons": str(cfg.motor_size),
        "n_outputs": str(cfg.n_outputs),
        "n_state": str(cfg.n_state),
        "neuron_roles": ",".join(model.roles),
        "synapses": str(packed_counts[0]),
        "sensory_synapses": str(packed_counts[1]),
        "exporter_version": __version__,
    }
    for k, v in model.info.items():
        meta.setdefault(k, str(v))
    return meta


def _synapse_counts(model: LTCModel) -> tuple[int, int]:
    p = model.params
    return int(np.count_nonzero(p["sparsity_mask"])), int(np.count_nonzero(p["sensory_sparsity_mask"]))


def config_from_metadata(meta: dict[str, str], source: str) -> CellConfig:
    def get(key: str, conv=str, default=None):
        if key not in meta:
            if default is not None:
                return default
            raise ModelFormatError(f"{source}: metadata key {PREFIX}{key} is missing")
        try:
            return conv(meta[key])
        except ValueError:
            raise ModelFormatError(
                f"{source}: metadata {PREFIX}{key}={meta[key]!r} is not a valid {conv.__name__}"
            ) from None

    mixed = get("mixed_memory")
    if mixed not in ("true", "false"):
        raise ModelFormatError(f"{source}: {PREFIX}mixed_memory must be 'true' or 'false', got {mixed!r}")
    cfg = CellConfig(
        n_inputs=get("n_inputs", int),
        units=get("units", int),
        motor_size=get("motor_neurons", int),
        ode_unfolds=get("ode_unfolds", int),
        epsilon=get("epsilon", float),
        positivity=get("positivity"),
        input_mapping=get("input_mapping"),
        output_mapping=get("output_mapping"),
        mixed_memory=mixed == "true",
        solver=get("solver", str, "fused_semi_implicit_euler"),
    )
    return cfg


# ------------------------------------------------------------------------ the graph


class _GraphBuilder:
    """Appends ONNX nodes with unique names; each helper returns its output's name."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        self._n += 1
        name = out or f"{op_type.lower()}_{self._n}"
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [name], name=f"n{self._n}_{op_type}", **attrs)
        )
        return name

    def const(self, name: str, value, dtype=np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name


def build_graph(model: LTCModel) -> onnx.ModelProto:
    """The ONNX graph of one step, initializers holding the raw parameters (float32)."""
    cfg, p = model.config, model.params
    g = _GraphBuilder()
    for name, arr in p.items():
        g.const(name, arr)
    u, m = cfg.units, cfg.motor_size
    ax1 = g.const("axes_1", [1], np.int64)
    ax2 = g.const("axes_2", [2], np.int64)

    def positive(name: str) -> str:
        return g.op("Softplus", name) if cfg.positivity == "softplus" else name

    def synapse_sums(pre, mu, sigma, w_pos, mask, erev):
        mues = g.op("Sub", g.op("Unsqueeze", pre, ax2), mu)
        act = g.op("Mul", w_pos, g.op("Sigmoid", g.op("Mul", sigma, mues)))
        act = g.op("Mul", act, mask)
        rev = g.op("Mul", act, erev)
        return (g.op("ReduceSum", rev, ax1, keepdims=0), g.op("ReduceSum", act, ax1, keepdims=0))

    x = "x"
    if cfg.mixed_memory:
        h = g.op("Slice", "state", g.const("s0", [0], np.int64), g.const("su", [u], np.int64), ax1)
        c = g.op("Slice", "state", "su", g.const("s2u", [2 * u], np.int64), ax1)
        z = g.op(
            "Add",
            g.op("Gemm", x, "lstm.input_map.weight", "lstm.input_map.bias", transB=1),
            g.op("Gemm", h, "lstm.recurrent_map.weight", transB=1),
        )
        gates = [f"lstm_gate_{k}" for k in range(4)]
        g.nodes.append(
            helper.make_node(
                "Split", [z, g.const("split4", [u] * 4, np.int64)], gates, axis=1, name="lstm_split"
            )
        )
        one = g.const("one", 1.0)
        c_new = g.op(
            "Add",
            g.op("Mul", c, g.op("Sigmoid", g.op("Add", gates[2], one))),
            g.op("Mul", g.op("Tanh", gates[0]), g.op("Sigmoid", gates[1])),
        )
        v = g.op("Mul", g.op("Tanh", c_new), g.op("Sigmoid", gates[3]))
    else:
        v = "state"
    if cfg.input_mapping in ("affine", "linear"):
        x = g.op("Mul", x, "input_w")
    if cfg.input_mapping == "affine":
        x = g.op("Add", x, "input_b")
    num_s, den_s = synapse_sums(
        x, "sensory_mu", "sensory_sigma", positive("sensory_w"), "sensory_sparsity_mask", "sensory_erev"
    )
    dt = g.op("Div", "elapsed", g.const("ode_unfolds", float(cfg.ode_unfolds)))
    cm_t = g.op("Div", positive("cm"), dt)
    w_pos, gleak = positive("w"), positive("gleak")
    eps = g.const("epsilon", cfg.epsilon)
    for _ in range(cfg.ode_unfolds):
        num, den = synapse_sums(v, "mu", "sigma", w_pos, "sparsity_mask", "erev")
        numerator = g.op(
            "Add", g.op("Add", g.op("Mul", cm_t, v), g.op("Mul", gleak, "vleak")), g.op("Add", num, num_s)
        )
        denominator = g.op("Add", g.op("Add", cm_t, gleak), g.op("Add", den, den_s))
        v = g.op("Div", numerator, g.op("Add", denominator, eps))
    y = v if m == u else g.op("Slice", v, g.const("y0", [0], np.int64), g.const("ym", [m], np.int64), ax1)
    if cfg.output_mapping in ("affine", "linear"):
        y = g.op("Mul", y, "output_w")
    if cfg.output_mapping == "affine":
        y = g.op("Add", y, "output_b")
    g.op("Identity", y, out="y")
    if cfg.mixed_memory:
        g.op("Concat", v, c_new, out="next_state", axis=1)
    else:
        g.op("Identity", v, out="next_state")

    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("x", f32, ["batch", cfg.n_inputs]),
        helper.make_tensor_value_info("state", f32, ["batch", cfg.n_state]),
        helper.make_tensor_value_info("elapsed", f32, ["batch", 1]),
    ]
    outputs = [
        helper.make_tensor_value_info("y", f32, ["batch", cfg.n_outputs]),
        helper.make_tensor_value_info("next_state", f32, ["batch", cfg.n_state]),
    ]
    graph = helper.make_graph(g.nodes, "edgeliquid_ltc_step", inputs, outputs, g.inits)
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgeliquid",
        producer_version=__version__,
    )
    onnx_model.ir_version = 8  # readable by onnxruntime >= 1.15
    helper.set_model_props(onnx_model, {PREFIX + k: v for k, v in metadata_for(model).items()})
    onnx_model.doc_string = (
        "One step of a liquid time-constant cell (ncps LTC), exported by "
        "edgeliquid. Inputs: x, state, elapsed (model time units)."
    )
    return onnx_model


def save(model: LTCModel, path: str | os.PathLike) -> None:
    """Check ``model`` and write it as an edgeliquid ONNX file (atomically)."""
    model.params = {k: np.asarray(v, np.float32).astype(np.float64) for k, v in model.params.items()}
    check_model(model)
    onnx_model = build_graph(model)
    onnx.checker.check_model(onnx_model, full_check=True)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(onnx_model.SerializeToString())
    os.replace(tmp, path)


# ------------------------------------------------------------------------- reading


def read(path: str | os.PathLike) -> LTCModel:
    """Read and check an edgeliquid model file; raises ModelFormatError naming the file."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelFormatError(f"{source}: cannot read model file ({exc.strerror})") from None
    return read_bytes(data, source)


def read_bytes(data: bytes, source: str = "<bytes>") -> LTCModel:
    try:
        onnx_model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelFormatError(f"{source}: not an ONNX file ({type(exc).__name__})") from None
    if not onnx_model.graph.node and not onnx_model.graph.initializer:
        raise ModelFormatError(f"{source}: not an ONNX model (empty graph)")
    meta = {p.key[len(PREFIX) :]: p.value for p in onnx_model.metadata_props if p.key.startswith(PREFIX)}
    check_format_version(meta, source)
    check_cell(meta, source)
    cfg = config_from_metadata(meta, source)
    params = {}
    for init in onnx_model.graph.initializer:
        arr = numpy_helper.to_array(init)
        params[init.name] = arr.astype(np.float64)
    params = {k: v for k, v in params.items() if k in _param_names(cfg)}
    _check_signature(onnx_model, cfg, source)
    roles = [r for r in meta.get("neuron_roles", "").split(",") if r]
    known = set(
        metadata_for(
            LTCModel(
                cfg,
                {"sparsity_mask": np.zeros((1, 1)), "sensory_sparsity_mask": np.zeros((1, 1))},
                roles=["inter"],
            )
        )
    )
    info = {k: v for k, v in meta.items() if k not in known}
    model = LTCModel(cfg, params, roles=roles or [], info=info, source=source)
    check_model(model)
    return model


def _param_names(cfg: CellConfig) -> set[str]:
    from .model import expected_shapes

    # Missing ones are reported by check_parameters; unknown initializers are graph helpers.
    return set(expected_shapes(cfg)) | {
        "input_w",
        "input_b",
        "output_w",
        "output_b",
        "lstm.input_map.weight",
        "lstm.input_map.bias",
        "lstm.recurrent_map.weight",
    }


def _check_signature(onnx_model: onnx.ModelProto, cfg: CellConfig, source: str) -> None:
    def dims(vi):
        return [
            d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim
        ]

    want_in = {"x": cfg.n_inputs, "state": cfg.n_state, "elapsed": 1}
    want_out = {"y": cfg.n_outputs, "next_state": cfg.n_state}
    for kind, values, want in (
        ("input", onnx_model.graph.input, want_in),
        ("output", onnx_model.graph.output, want_out),
    ):
        got = {vi.name: dims(vi) for vi in values}
        for name, size in want.items():
            if name not in got:
                raise ModelFormatError(f"{source}: graph {kind} {name!r} missing (has {sorted(got)})")
            d = got[name]
            if len(d) != 2 or d[1] != size:
                raise ModelFormatError(
                    f"{source}: graph {kind} {name!r} has dims {d}, expected "
                    f"[batch, {size}] from the metadata"
                )


__all__ = ["read", "read_bytes", "save", "build_graph", "metadata_for"]
