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

import contextlib
import math
import os
import re
import stat
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from .. import __version__
from ..errors import ModelFormatError
from .cell import LSTM_PARAMS, SOLVER_NAMES, CellConfig, LTCModel, expected_shapes
from .cfc import CfCConfig, CfCModel, cfc_expected_shapes
from .cfc_file import (
    CFC_DERIVED_KEYS,
    build_cfc_graph,
    cfc_config_from_metadata,
    cfc_metadata_for,
    check_cfc_declared,
)
from .checks import (
    FORMAT_VERSION,
    MAX_FILE_BYTES,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY,
    MAX_METADATA_VALUE,
    check_cell,
    check_cfc_config,
    check_cfc_shapes,
    check_config,
    check_format_version,
    check_model,
    check_shapes,
    metadata_count,
    short,
    synapse_counts,
)
from .graph import PREFIX, GraphBuilder, explicit_substeps, step_model

# ------------------------------------------------------------------------- metadata

#: The keys :func:`metadata_for` derives from the model; every other key is ``LTCModel.info``.
DERIVED_KEYS = (
    "format_version",
    "cell",
    "solver",
    "ode_unfolds",
    "epsilon",
    "positivity",
    "input_mapping",
    "output_mapping",
    "mixed_memory",
    "n_inputs",
    "units",
    "motor_neurons",
    "n_outputs",
    "n_state",
    "neuron_roles",
    "synapses",
    "sensory_synapses",
    "exporter_version",
    "mixed_memory_coupling",
)


def metadata_for(model: LTCModel | CfCModel) -> dict[str, str]:
    """All ``edgeliquid.*`` metadata keys (without the prefix) for a model."""
    if isinstance(model, CfCModel):
        return cfc_metadata_for(model)
    cfg = model.config
    packed_counts = synapse_counts(model.params)
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
    meta["mixed_memory_coupling"] = cfg.mixed_memory_coupling  # "state" without mixed memory
    for k, v in model.info.items():
        meta.setdefault(k, str(v))
    return meta


def config_from_metadata(meta: dict[str, str], source: str) -> CellConfig:
    """The cell config from the metadata, parsed strictly (limits: :func:`check_config`)."""

    def get(key: str, default: str | None = None) -> str:
        if key not in meta:
            if default is not None:
                return default
            raise ModelFormatError(f"{source}: metadata key {PREFIX}{key} is missing")
        return meta[key]

    def count(key: str) -> int:
        get(key)
        return metadata_count(meta, key, source)

    mixed = get("mixed_memory")
    if mixed not in ("true", "false"):
        raise ModelFormatError(
            f"{source}: {PREFIX}mixed_memory must be 'true' or 'false', got {short(mixed)}"
        )
    try:
        epsilon = float(get("epsilon"))
    except ValueError:
        raise ModelFormatError(
            f"{source}: metadata {PREFIX}epsilon={short(meta['epsilon'])} is not a number"
        ) from None
    return CellConfig(
        n_inputs=count("n_inputs"),
        units=count("units"),
        motor_size=count("motor_neurons"),
        ode_unfolds=count("ode_unfolds"),
        epsilon=epsilon,
        positivity=get("positivity"),
        input_mapping=get("input_mapping"),
        output_mapping=get("output_mapping"),
        mixed_memory=mixed == "true",
        solver=get("solver", "fused_semi_implicit_euler"),
        # Optional: files written before the Keras exporter have ncps.torch's coupling.
        mixed_memory_coupling=get("mixed_memory_coupling", "state"),
    )


# ------------------------------------------------------------------------ the graph


def build_graph(model: LTCModel | CfCModel) -> onnx.ModelProto:
    """The ONNX graph of one step, initializers holding the raw parameters (float32)."""
    if isinstance(model, CfCModel):
        return build_cfc_graph(model)
    cfg, p = model.config, model.params
    if cfg.solver not in SOLVER_NAMES:
        raise ModelFormatError(
            f"{model.source}: unknown solver {short(cfg.solver)}; expected one of {sorted(SOLVER_NAMES)}"
        )
    g = GraphBuilder()
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
        h, c = g.slice_cols("state", 0, u), g.slice_cols("state", u, 2 * u)
        v, c_new = g.lstm(x, h, c, u)
        if cfg.mixed_memory_coupling == "input":  # ncps.keras: LSTM output in, own state kept
            x, v = v, h
    else:
        v = "state"
    if cfg.input_mapping in ("affine", "linear"):
        x = g.op("Mul", x, "input_w")
    if cfg.input_mapping == "affine":
        x = g.op("Add", x, "input_b")
    num_s, den_s = synapse_sums(
        x, "sensory_mu", "sensory_sigma", positive("sensory_w"), "sensory_sparsity_mask", "sensory_erev"
    )
    # The sub-step h = elapsed / ode_unfolds, one per batch row ([batch, 1]).
    dt = g.op("Div", "elapsed", g.const("ode_unfolds", float(cfg.ode_unfolds)))
    if cfg.solver == "fused_semi_implicit_euler":
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
    else:
        cm, w_pos, gleak = positive("cm"), positive("w"), positive("gleak")
        leak = g.op("Mul", gleak, "vleak")

        def f(v: str) -> str:
            """dv/dt = (gleak*vleak + (num + num_s) - (gleak + (den + den_s)) v) / cm, no epsilon."""
            num, den = synapse_sums(v, "mu", "sigma", w_pos, "sparsity_mask", "erev")
            numerator = g.op("Add", leak, g.op("Add", num, num_s))
            decay = g.op("Mul", g.op("Add", gleak, g.op("Add", den, den_s)), v)
            return g.op("Div", g.op("Sub", numerator, decay), cm)

        v = explicit_substeps(g, cfg.solver, f, v, dt, cfg.ode_unfolds)
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

    return step_model(
        g,
        "edgeliquid_ltc_step",
        (cfg.n_inputs, cfg.n_state, cfg.n_outputs),
        metadata_for(model),
        "One step of a liquid time-constant cell (ncps LTC), exported by "
        "edgeliquid. Inputs: x, state, elapsed (model time units).",
    )


def save(model: LTCModel | CfCModel, path: str | os.PathLike) -> None:
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
#
# Every size is checked on the metadata before anything is allocated; tensors are decoded
# here from their own bytes (never by onnx's loaders, which would follow external data).


def read(path: str | os.PathLike) -> LTCModel | CfCModel:
    """Read and check an edgeliquid model file: a :class:`CfCModel` for ``cell = cfc``,
    an :class:`LTCModel` otherwise.

    Raises:
        ModelFormatError: for any unreadable, oversized, malformed or inconsistent file, and
            nothing else; the message names the file and the key.
    """
    source = str(path)
    with _only_model_format_errors(source):
        return _read_bytes(_read_file(path, source), source)


def read_bytes(data: bytes, source: str = "<bytes>") -> LTCModel | CfCModel:
    """Read and check a model file's bytes; ``source`` names it in messages.

    Raises only :class:`ModelFormatError` for bad bytes (a node reloading a model on
    SIGHUP keeps its old policy on exactly this exception).
    """
    with _only_model_format_errors(source):
        return _read_bytes(data, source)


@contextlib.contextmanager
def _only_model_format_errors(source: str):
    """The last line of defence: whatever no check foresaw (MemoryError on a small robot,
    a protobuf oddity) still leaves as a one-line ModelFormatError naming the file."""
    try:
        yield
    except ModelFormatError:
        raise
    except Exception as exc:
        raise ModelFormatError(
            f"{source}: malformed model file ({type(exc).__name__}: {short(str(exc))})"
        ) from exc


def _read_file(path: str | os.PathLike, source: str) -> bytes:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ModelFormatError(f"{source}: cannot read model file ({why})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelFormatError(f"{source}: cannot read model file (not a regular file)")
        if st.st_size > MAX_FILE_BYTES:
            raise ModelFormatError(_too_big(source, st.st_size))
        parts, size = [], 0
        with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
            # read(n) allocates n bytes up front: ask for what fstat said (+1 to see EOF), then
            # in small steps should the file have grown since, never past the limit.
            while size <= MAX_FILE_BYTES:
                want = max(st.st_size + 1 - size, 2**20)
                part = f.read(min(want, MAX_FILE_BYTES + 1 - size))
                if not part:
                    break
                parts.append(part)
                size += len(part)
    except OSError as exc:
        raise ModelFormatError(f"{source}: cannot read model file ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if size > MAX_FILE_BYTES:
        raise ModelFormatError(_too_big(source, size))
    return b"".join(parts)


def _too_big(source: str, size: int) -> str:
    return (
        f"{source}: file size {size} bytes exceeds the limit {MAX_FILE_BYTES} bytes "
        "(docs/model-format.md, Limits)"
    )


def _read_bytes(data: bytes, source: str) -> LTCModel | CfCModel:
    if len(data) > MAX_FILE_BYTES:
        raise ModelFormatError(_too_big(source, len(data)))
    try:
        onnx_model = onnx.load_from_string(bytes(data))  # parses only; follows nothing
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelFormatError(f"{source}: not an ONNX file ({type(exc).__name__})") from None
    graph = onnx_model.graph
    if not graph.node and not graph.initializer:
        raise ModelFormatError(f"{source}: not an ONNX model (empty graph)")
    meta = _metadata(onnx_model, source)
    check_format_version(meta, source)
    check_cell(meta, source)
    if meta["cell"] == "cfc":
        return _read_cfc(onnx_model, meta, source)
    cfg = config_from_metadata(meta, source)
    check_config(cfg, source)  # every size bounded before anything is allocated or run
    declared = _declared_sizes(meta, cfg, source)
    _check_self_contained(onnx_model, source)
    params = _parameters(graph, _param_names(cfg), lambda shapes: check_shapes(cfg, shapes, source), source)
    _check_signature(onnx_model, cfg, source)
    roles = meta["neuron_roles"].split(",") if meta.get("neuron_roles") else []
    info = {k: v for k, v in meta.items() if k not in DERIVED_KEYS}
    model = LTCModel(cfg, params, roles=roles, info=info, source=source)
    check_model(model)
    actual = synapse_counts(params)
    for key, mask, want, got in zip(
        ("synapses", "sensory_synapses"), ("sparsity_mask", "sensory_sparsity_mask"), declared, actual
    ):
        if want is not None and want != got:
            raise ModelFormatError(f"{source}: metadata {PREFIX}{key}={want}, but {mask} has {got}")
    return model


_CFC_NAME = re.compile(
    r"(layer_[0-9]+\.)?((ff1|ff2|time_a|time_b)\.(weight|bias)|w_tau|A|sparsity_mask)"
    r"|backbone\.[0-9]+\.(weight|bias)|lstm\.(input_map|recurrent_map)\.(weight|bias)|fc\.(weight|bias)"
)


def _read_cfc(onnx_model: onnx.ModelProto, meta: dict[str, str], source: str) -> CfCModel:
    cfg = cfc_config_from_metadata(meta, source)
    check_cfc_config(cfg, source)  # every size bounded before anything is allocated or run
    check_cfc_declared(meta, cfg, source)
    _check_self_contained(onnx_model, source)
    # Initializers named like a CfC parameter of any config are parameters (those this config
    # does not have are refused: the metadata and the weights disagree); others are helpers.
    named = {
        t.name
        for t in onnx_model.graph.initializer
        if isinstance(t.name, str) and _CFC_NAME.fullmatch(t.name)
    }
    params = _parameters(
        onnx_model.graph,
        set(cfc_expected_shapes(cfg)) | named,
        lambda shapes: check_cfc_shapes(cfg, shapes, source),
        source,
    )
    _check_signature(onnx_model, cfg, source)
    info = {k: v for k, v in meta.items() if k not in CFC_DERIVED_KEYS}
    model = CfCModel(cfg, params, info=info, source=source)
    check_model(model)
    return model


def _metadata(onnx_model: onnx.ModelProto, source: str) -> dict[str, str]:
    """The ``edgeliquid.*`` keys (prefix removed), every entry within the limits."""
    props = onnx_model.metadata_props
    if len(props) > MAX_METADATA_ENTRIES:
        raise ModelFormatError(
            f"{source}: {len(props)} metadata_props entries exceed the limit {MAX_METADATA_ENTRIES}"
        )
    meta: dict[str, str] = {}
    for i, prop in enumerate(props):
        key, value = prop.key, prop.value
        if not (isinstance(key, str) and isinstance(value, str)):
            # protobuf hands back bytes for a string field that is not valid UTF-8
            raise ModelFormatError(f"{source}: metadata_props entry {i} ({short(key)}) is not valid UTF-8")
        if len(key) > MAX_METADATA_KEY:
            raise ModelFormatError(
                f"{source}: metadata key {short(key)} is {len(key)} characters long; "
                f"the limit is {MAX_METADATA_KEY}"
            )
        if len(value) > MAX_METADATA_VALUE:
            raise ModelFormatError(
                f"{source}: metadata {short(key)} has a {len(value)}-character value; "
                f"the limit is {MAX_METADATA_VALUE}"
            )
        if key.startswith(PREFIX):
            if key[len(PREFIX) :] in meta:
                raise ModelFormatError(f"{source}: metadata key {short(key)} appears twice")
            meta[key[len(PREFIX) :]] = value
    return meta


def _declared_sizes(meta: dict[str, str], cfg: CellConfig, source: str) -> tuple[int | None, int | None]:
    """Check the derived sizes the metadata declares; return the declared synapse counts
    (None where absent), which must later equal the masks'."""
    for key, want in (("n_outputs", cfg.n_outputs), ("n_state", cfg.n_state)):
        if key in meta and metadata_count(meta, key, source) != want:
            raise ModelFormatError(
                f"{source}: metadata {PREFIX}{key}={short(meta[key])} disagrees with {want} from "
                f"units={cfg.units}, motor_neurons={cfg.motor_size}, mixed_memory={cfg.mixed_memory}"
            )
    counts: list[int | None] = []
    for key, most in (("synapses", cfg.units**2), ("sensory_synapses", cfg.cell_inputs * cfg.units)):
        n = metadata_count(meta, key, source) if key in meta else None
        if n is not None and n > most:
            raise ModelFormatError(
                f"{source}: metadata {PREFIX}{key}={n} exceeds the {most} a mask of this size holds"
            )
        counts.append(n)
    return counts[0], counts[1]


def _tensors(onnx_model: onnx.ModelProto):
    """(where, TensorProto) for every tensor in the model, subgraphs and functions included."""
    graphs = [onnx_model.graph]
    nodes = [n for f in onnx_model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            g = graphs.pop()
            for t in g.initializer:
                yield f"initializer {short(t.name)}", t
            for st in g.sparse_initializer:
                yield f"sparse initializer {short(st.values.name)}", st.values
                yield f"sparse initializer {short(st.values.name)}", st.indices
            nodes.extend(n for n in g.node if n.attribute)
            continue
        node = nodes.pop()
        for a in node.attribute:
            at = f"node {short(node.name)} attribute {short(a.name)}"
            for t in [a.t] * a.HasField("t") + list(a.tensors):
                yield at, t
            for st in [a.sparse_tensor] * a.HasField("sparse_tensor") + list(a.sparse_tensors):
                yield at, st.values
                yield at, st.indices
            graphs.extend([a.g] * a.HasField("g") + list(a.graphs))


def _check_self_contained(onnx_model: onnx.ModelProto, source: str) -> None:
    """Refuse ONNX external data: a model file is one self-contained file, and a relative
    ``location`` would read whatever file the working directory makes of it."""
    for where, t in _tensors(onnx_model):
        if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
            loc = next((e.value for e in t.external_data if e.key == "location"), "?")
            raise ModelFormatError(
                f"{source}: {where} keeps its values in external data (location {short(loc)}); "
                "an edgeliquid model file must be self-contained (save without external data)"
            )


_FLOAT_TYPES = {TensorProto.FLOAT: np.dtype("<f4"), TensorProto.DOUBLE: np.dtype("<f8")}


def _parameters(graph: onnx.GraphProto, wanted: set[str], check, source: str) -> dict[str, np.ndarray]:
    """The parameters as float64, each checked (names, dims, type, size) before decoding;
    ``check(shapes)`` checks the declared dims of the ``wanted`` initializers."""
    seen: set[str] = set()
    for name in [t.name for t in graph.initializer] + [t.values.name for t in graph.sparse_initializer]:
        if name in seen:
            # onnxruntime and edgeliquid could each take a different one.
            raise ModelFormatError(f"{source}: initializer {short(name)} appears more than once")
        seen.add(name)
    inits = {t.name: t for t in graph.initializer if t.name in wanted}
    check({name: tuple(t.dims) for name, t in inits.items()})
    return {name: _decode(t, source) for name, t in inits.items()}


def _decode(t: onnx.TensorProto, source: str) -> np.ndarray:
    """One float32/float64 initializer whose dims are known to be the expected shape."""
    dtype = _FLOAT_TYPES.get(t.data_type)
    if dtype is None:
        known = t.data_type in TensorProto.DataType.values()
        kind = TensorProto.DataType.Name(t.data_type) if known else t.data_type
        raise ModelFormatError(
            f"{source}: parameter {t.name!r} has data type {kind}; "
            "expected FLOAT (float32) or DOUBLE (float64)"
        )
    if t.HasField("segment"):
        raise ModelFormatError(f"{source}: parameter {t.name!r} is a segment of a tensor; not supported")
    shape = tuple(t.dims)
    n = math.prod(shape)
    if t.HasField("raw_data"):
        if len(t.raw_data) != n * dtype.itemsize:
            raise ModelFormatError(
                f"{source}: parameter {t.name!r} has {len(t.raw_data)} bytes of raw_data; "
                f"shape {shape} of {dtype.name} needs {n * dtype.itemsize}"
            )
        arr = np.frombuffer(t.raw_data, dtype)
    else:
        values = t.float_data if t.data_type == TensorProto.FLOAT else t.double_data
        if len(values) != n:
            raise ModelFormatError(
                f"{source}: parameter {t.name!r} has {len(values)} values; shape {shape} needs {n}"
            )
        arr = np.array(values, dtype)
    with np.errstate(invalid="ignore"):  # NaN payloads; check_finite reports them by name
        arr = arr.reshape(shape).astype(np.float64)
    if dtype.itemsize == 8:
        # The backends run in float32: a finite float64 beyond its range would become inf.
        with np.errstate(over="ignore", invalid="ignore"):
            over = np.isfinite(arr) & ~np.isfinite(arr.astype(np.float32))
        if over.any():
            raise ModelFormatError(
                f"{source}: parameter {t.name!r} holds {float(arr[over][0])!r}, beyond float32's range "
                f"(±{float(np.finfo(np.float32).max):.4g})"
            )
    return arr


def _param_names(cfg: CellConfig) -> set[str]:
    # Missing ones are reported by check_shapes; unknown initializers are graph helpers.
    return set(expected_shapes(cfg)) | {
        "input_w",
        "input_b",
        "output_w",
        "output_b",
        *LSTM_PARAMS,
    }


def _check_signature(onnx_model: onnx.ModelProto, cfg: CellConfig | CfCConfig, source: str) -> None:
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
        got = {vi.name: vi for vi in values}
        for name, size in want.items():
            if name not in got:
                names = sorted(got, key=str)  # an invalid UTF-8 name comes back as bytes
                listed = short(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
                raise ModelFormatError(f"{source}: graph {kind} {name!r} missing (has {listed})")
            d = dims(got[name])
            if len(d) != 2 or d[1] != size:
                shown = short(d) if len(d) <= 8 else f"<{len(d)} dims>"
                raise ModelFormatError(
                    f"{source}: graph {kind} {name!r} has dims {shown}, expected "
                    f"[batch, {size}] from the metadata"
                )


__all__ = ["read", "read_bytes", "save", "build_graph", "metadata_for"]
