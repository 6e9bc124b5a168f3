"""The CfC model file: its metadata (written and parsed strictly) and its ONNX step graph.

The graph computes exactly :func:`edgeliquid.runtime.cfc_reference.cfc_reference_step`
with plain opset-17 ops (GELU as ``Erf``), so onnxruntime runs a CfC file as it runs an
LTC one. See docs/model-format.md, "CfC".
"""

from __future__ import annotations

import math

import onnx

from .. import __version__
from ..errors import ModelFormatError
from .cfc import CfCConfig, CfCModel
from .checks import FORMAT_VERSION, MAX_WIRED_LAYERS, metadata_count, short
from .graph import PREFIX, GraphBuilder, step_model

#: The keys :func:`cfc_metadata_for` derives from the model; every other key is ``CfCModel.info``.
CFC_DERIVED_KEYS = (
    "format_version",
    "cell",
    "mode",
    "activation",
    "backbone_units",
    "backbone_layers",
    "layer_sizes",
    "mixed_memory",
    "proj_size",
    "sparse",
    "formulation",
    "n_inputs",
    "units",
    "motor_neurons",
    "n_outputs",
    "n_state",
    "exporter_version",
    "mixed_memory_coupling",
)


def _flag(value: bool) -> str:
    return "true" if value else "false"


def cfc_metadata_for(model: CfCModel) -> dict[str, str]:
    """All ``edgeliquid.*`` metadata keys (without the prefix) of a CfC model."""
    cfg = model.config
    meta = {
        "format_version": str(FORMAT_VERSION),
        "cell": "cfc",
        "mode": cfg.mode,
        "activation": cfg.activation,
        "backbone_units": str(cfg.backbone_units),
        "backbone_layers": str(cfg.backbone_layers),
        "layer_sizes": ",".join(str(n) for n in cfg.layer_sizes),
        "mixed_memory": _flag(cfg.mixed_memory),
        "proj_size": str(cfg.proj_size),
        "sparse": _flag(cfg.sparse),
        "formulation": cfg.formulation,
        "n_inputs": str(cfg.n_inputs),
        "units": str(cfg.units),
        "motor_neurons": str(cfg.motor_size),
        "n_outputs": str(cfg.n_outputs),
        "n_state": str(cfg.n_state),
        "exporter_version": __version__,
    }
    meta["mixed_memory_coupling"] = cfg.mixed_memory_coupling  # "state" without mixed memory
    for k, v in model.info.items():
        meta.setdefault(k, str(v))
    return meta


def cfc_config_from_metadata(meta: dict[str, str], source: str) -> CfCConfig:
    """The CfC config from the metadata, parsed strictly; sizes are bounded as they are
    read (the rest of the limits: :func:`edgeliquid.model.checks.check_cfc_config`)."""

    def get(key: str) -> str:
        if key not in meta:
            raise ModelFormatError(f"{source}: metadata key {PREFIX}{key} is missing")
        return meta[key]

    def count(key: str) -> int:
        get(key)
        return metadata_count(meta, key, source)

    def flag(key: str) -> bool:
        value = get(key)
        if value not in ("true", "false"):
            raise ModelFormatError(f"{source}: {PREFIX}{key} must be 'true' or 'false', got {short(value)}")
        return value == "true"

    raw = get("layer_sizes")
    parts = raw.split(",") if raw else []
    if len(parts) > MAX_WIRED_LAYERS:
        raise ModelFormatError(
            f"{source}: {PREFIX}layer_sizes has {len(parts)} layers; the limit is {MAX_WIRED_LAYERS} "
            "(docs/model-format.md, Limits)"
        )
    layer_sizes = tuple(metadata_count({"layer_sizes": s}, "layer_sizes", source) for s in parts)
    return CfCConfig(
        n_inputs=count("n_inputs"),
        units=count("units"),
        mode=get("mode"),
        activation=get("activation"),
        backbone_units=count("backbone_units"),
        backbone_layers=count("backbone_layers"),
        layer_sizes=layer_sizes,
        mixed_memory=flag("mixed_memory"),
        proj_size=count("proj_size"),
        sparse=flag("sparse"),
        # Optional: files written before the Keras exporter follow the torch equations.
        formulation=meta.get("formulation", "torch"),
        # Optional too: absent, ncps.torch's coupling (the LSTM output replaces the state).
        mixed_memory_coupling=meta.get("mixed_memory_coupling", "state"),
    )


def check_cfc_declared(meta: dict[str, str], cfg: CfCConfig, source: str) -> None:
    """The derived sizes the metadata declares must agree with the config."""
    for key, want in (
        ("motor_neurons", cfg.motor_size),
        ("n_outputs", cfg.n_outputs),
        ("n_state", cfg.n_state),
    ):
        if key in meta and metadata_count(meta, key, source) != want:
            raise ModelFormatError(
                f"{source}: metadata {PREFIX}{key}={short(meta[key])} disagrees with {want} from "
                f"units={cfg.units}, layer_sizes={cfg.layer_sizes}, proj_size={cfg.proj_size}, "
                f"mixed_memory={cfg.mixed_memory}"
            )


# ------------------------------------------------------------------------ the graph


def _activation(g: GraphBuilder, name: str, z: str) -> str:
    """The backbone activations of ncps ``CfCCell`` in plain ops (opset 17 has no Gelu)."""
    if name == "lecun_tanh":
        inner = g.op("Mul", z, g.const("lecun_a", 0.666))
        return g.op("Mul", g.op("Tanh", inner), g.const("lecun_b", 1.7159))
    if name == "tanh":
        return g.op("Tanh", z)
    if name == "relu":
        return g.op("Relu", z)
    if name == "silu":
        return g.op("Mul", z, g.op("Sigmoid", z))
    if name == "gelu":  # torch nn.GELU(): 0.5 x (1 + erf(x / sqrt 2))
        erf = g.op("Erf", g.op("Mul", z, g.const("inv_sqrt2", 1.0 / math.sqrt(2.0))))
        return g.op("Mul", g.op("Mul", z, g.const("half", 0.5)), g.op("Add", erf, g.const("one", 1.0)))
    raise ValueError(f"unknown activation {name!r}")


def _cfc_cell(g: GraphBuilder, cfg: CfCConfig, prefix: str, x: str, h: str, backbone: bool) -> str:
    """ncps ``CfCCell.forward``: the new hidden state of one (sub-)cell; ``elapsed`` is ts."""
    z = g.op("Concat", x, h, axis=1)
    if backbone:
        for k in range(cfg.backbone_layers):
            lin = g.op("Gemm", z, f"backbone.{k}.weight", f"backbone.{k}.bias", transB=1)
            z = _activation(g, cfg.activation, lin)
    masked = cfg.wired or cfg.sparse

    def head(name: str, mask: bool = False) -> str:
        w = f"{prefix}{name}.weight"
        if mask and masked:
            w = g.op("Mul", w, f"{prefix}sparsity_mask")
        return g.op("Gemm", z, w, f"{prefix}{name}.bias", transB=1)

    ff1 = head("ff1", mask=True)
    ts = "elapsed"  # [batch, 1]: broadcasts per row
    if cfg.mode == "pure":
        a = f"{prefix}A"
        rate = g.op("Add", g.op("Abs", f"{prefix}w_tau"), g.op("Abs", ff1))
        decay = g.op("Exp", g.op("Neg", g.op("Mul", ts, rate)))
        return g.op("Add", g.op("Neg", g.op("Mul", g.op("Mul", a, decay), ff1)), a)
    ff2 = head("ff2", mask=True)
    t_a, t_b = head("time_a"), head("time_b")
    if cfg.keras:  # ncps.keras: sigmoid(-t_a * ts + t_b), no tanh on the heads
        t_interp = g.op("Sigmoid", g.op("Sub", t_b, g.op("Mul", t_a, ts)))
    else:
        ff1, ff2 = g.op("Tanh", ff1), g.op("Tanh", ff2)
        t_interp = g.op("Sigmoid", g.op("Add", g.op("Mul", t_a, ts), t_b))
    if cfg.mode == "no_gate":
        return g.op("Add", ff1, g.op("Mul", t_interp, ff2))
    one = g.const("one", 1.0)
    return g.op("Add", g.op("Mul", ff1, g.op("Sub", one, t_interp)), g.op("Mul", t_interp, ff2))


def build_cfc_graph(model: CfCModel) -> onnx.ModelProto:
    """The ONNX graph of one CfC step, initializers holding the raw parameters (float32)."""
    cfg = model.config
    g = GraphBuilder()
    for name, arr in model.params.items():
        g.const(name, arr)
    u = cfg.units
    h, x = "state", "x"
    if cfg.mixed_memory:
        h_old = g.slice_cols("state", 0, u)
        h, c_new = g.lstm("x", h_old, g.slice_cols("state", u, 2 * u), u)
        if cfg.mixed_memory_coupling == "input":  # ncps.keras: LSTM output in, own state kept
            x, h = h, h_old
    if cfg.wired:
        outs, start, inp = [], 0, x
        for prefix, _, n in cfg.layers():
            h_l = h if len(cfg.layer_sizes) == 1 else g.slice_cols(h, start, start + n)
            inp = _cfc_cell(g, cfg, prefix, inp, h_l, backbone=False)
            outs.append(inp)
            start += n
        h_new = outs[0] if len(outs) == 1 else g.op("Concat", *outs, axis=1)
        out = inp
    else:
        h_new = out = _cfc_cell(g, cfg, "", x, h, backbone=cfg.backbone_layers > 0)
    if cfg.proj_size:
        g.op("Gemm", out, "fc.weight", "fc.bias", transB=1, out="y")
    else:
        g.op("Identity", out, out="y")
    if cfg.mixed_memory:
        g.op("Concat", h_new, c_new, out="next_state", axis=1)
    else:
        g.op("Identity", h_new, out="next_state")
    return step_model(
        g,
        "edgeliquid_cfc_step",
        (cfg.n_inputs, cfg.n_state, cfg.n_outputs),
        cfc_metadata_for(model),
        f"One step of a closed-form continuous-time cell (ncps CfC, mode {cfg.mode}, "
        f"{cfg.formulation} formulation), exported by "
        "edgeliquid. Inputs: x, state, elapsed (model time units).",
    )
