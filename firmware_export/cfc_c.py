"""The float32 C99 variant for CfC models (ncps ``CfC``/``CfCCell``/``WiredCfCCell``).

Same interface and rules as :mod:`firmware_export.float_c` (NAME_reset/NAME_step, caller-owned
state, no malloc, no mutable globals, weights as exact hex-float ``static const`` arrays). The C
follows :mod:`edgeliquid.runtime.cfc_reference` operation for operation: optional LSTM (mixed
memory) on the raw inputs, the backbone on ``cat[x, h]``, the heads, the closed-form update per
mode, one sub-cell per wiring layer in order, then the optional ``fc`` projection. Sparsity
masks are folded into the ff1/ff2 weights at export (the time heads are never masked, as in ncps).
"""

from __future__ import annotations

from string import Template

import numpy as np

from edgeliquid.model.cfc import CfCModel

from .cgen import RESET_C, CodegenError, banner, c_array, c_float
from .channels import Channels, channels_of, normalize_c
from .float_c import SIGMOID_EXACT, SIGMOID_FAST, render_header

# Why pure mode has no fixed-point variant (one line for the CLI; default and no_gate have one,
# firmware_export.cfc_fixed_c, which raises this).
FIXED_POINT_REFUSAL = (
    "--fixed-point is not supported for CfC mode pure: its update -A exp(-elapsed (|w_tau| + |ff1|)) ff1 "
    "+ A has no tanh head, so unlike default/no_gate (|h| <= 1 resp. 2) its state bound |A| (1 + |ff1|) "
    "depends on ff1's own range, and the exp table's error would be multiplied by |ff1| "
    "(up to 1/(e elapsed)); use the float32 variant"
)

STEP_DOC = """/* One CfC step ($what): x[${UP}_N_INPUTS] model inputs as above (finite), elapsed the time
 * since the previous step in model time units (ncps: 1.0 per sample), state updated in place,
 * y[${UP}_N_OUTPUTS] written. */"""

SOURCE = Template(
    """$banner
#include "$name.h"
#include <math.h>
#include <stdint.h>

#define U $units
#define NI $n_in

$arrays
$sigmoid
/* y[rows] = W[rows, cols] x[cols] + b (row-major W, as torch stores Linear weights) */
static void ${name}_dense(const float *w, const float *b, const float *x, int rows, int cols, float *y)
{
    int i, k;
    for (i = 0; i < rows; ++i) {
        float a = 0.0f;
        for (k = 0; k < cols; ++k) {
            a += w[i * cols + k] * x[k];
        }
        y[i] = a + b[i];
    }
}
$activation
$cells
$normalize
"""
    + RESET_C
    + """
void ${name}_step(const float *x, float *state, float elapsed, float *y)
{
    float v[U], hn[U];
$lstm_decl    int i, j, k;

    (void)i;  /* i and k are used only by some variants */
    (void)k;
$lstm_body$layers
    for (j = 0; j < U; ++j) {
        state[j] = hn[j];
    }
$lstm_commit$output}
"""
)

# One CfC sub-cell: in[n_in] (x, or the previous layer's new h), h[n] its old state -> out[n].
CELL = Template("""
/* CfC sub-cell $l ($mode): $n_in inputs, $n units$bb_doc */
static void ${name}_cell$l(const float *in, const float *h, float ts, float *out)
{
    float z[$cat]$bb_decl, f1[$n]$gate_decl;
    int i;
    for (i = 0; i < $n_in; ++i) {
        z[i] = in[i];
    }
    for (i = 0; i < $n; ++i) {
        z[$n_in + i] = h[i];
    }
$backbone    ${name}_dense(${p}ff1_w, ${p}ff1_b, $head_in, $n, $head_cols, f1);
$update}
""")

UPDATE_PURE = Template("""    for (i = 0; i < $n; ++i) {
        out[i] = -${p}A[i] * expf(-ts * (fabsf(${p}w_tau[i]) + fabsf(f1[i]))) * f1[i] + ${p}A[i];
    }
""")

UPDATE_GATED = Template("""    ${name}_dense(${p}ff2_w, ${p}ff2_b, $head_in, $n, $head_cols, f2);
    ${name}_dense(${p}ta_w, ${p}ta_b, $head_in, $n, $head_cols, ta);
    ${name}_dense(${p}tb_w, ${p}tb_b, $head_in, $n, $head_cols, tb);
    for (i = 0; i < $n; ++i) {
        float a = $fa, b = $fb;
        float g = ${name}_sigmoid($gate);
        out[i] = $combine;
    }
""")

# The backbone activations of ncps CfCCell (torch defaults; gelu exact, with erf).
ACTIVATION_C = {
    "lecun_tanh": f"{c_float(1.7159)} * tanhf({c_float(0.666)} * x)",
    "silu": "x * NAME_sigmoid(x)",
    "relu": "x > 0.0f ? x : 0.0f",
    "tanh": "tanhf(x)",
    "gelu": f"0.5f * x * (1.0f + erff(x * {c_float(2**-0.5)}))",
}

LSTM_BODY = Template("""    /* mixed memory: ncps LSTMCell on the raw inputs, h -> v, new c -> cn */
    for (i = 0; i < 4 * U; ++i) {
        float a = 0.0f, r = 0.0f;
        for (k = 0; k < NI; ++k) {
            a += lstm_wi[i * NI + k] * x[k];
        }
        for (k = 0; k < U; ++k) {
            r += lstm_wr[i * U + k] * state[k];
        }
        zl[i] = (a + lstm_bi[i]) + r;
    }
    for (j = 0; j < U; ++j) {
        cn[j] = state[U + j] * ${name}_sigmoid(zl[2 * U + j] + 1.0f)
                + tanhf(zl[j]) * ${name}_sigmoid(zl[U + j]);
        v[j] = tanhf(cn[j]) * ${name}_sigmoid(zl[3 * U + j]);
    }
""")


def _layer_arrays(p: dict, prefix: str, cp: str, mode: str) -> list[str]:
    """Head arrays of one sub-cell, C prefix ``cp``; the mask folded into ff1/ff2."""
    mask = p.get(f"{prefix}sparsity_mask")
    heads = (
        [("ff1", "ff1")]
        if mode == "pure"
        else [("ff1", "ff1"), ("ff2", "ff2"), ("time_a", "ta"), ("time_b", "tb")]
    )
    out = []
    for head, short in heads:
        w = p[f"{prefix}{head}.weight"]
        if mask is not None and head in ("ff1", "ff2"):
            w = w * mask
        out += [
            c_array("float", f"{cp}{short}_w", w),
            c_array("float", f"{cp}{short}_b", p[f"{prefix}{head}.bias"]),
        ]
    if mode == "pure":
        out += [
            c_array("float", f"{cp}A", p[f"{prefix}A"]),
            c_array("float", f"{cp}w_tau", p[f"{prefix}w_tau"]),
        ]
    return out


def _cell(name: str, cfg, l: int, cp: str, n_in: int, n: int, backbone: bool) -> str:
    cat = n_in + n
    bb_decl = bb_doc = backbone_code = ""
    head_in, head_cols = "z", cat
    if backbone:
        bu = cfg.backbone_units
        bb_decl = f", bb0[{bu}]" + (f", bb1[{bu}]" if cfg.backbone_layers > 1 else "")
        bb_doc = f", backbone {cfg.backbone_layers} x {bu} {cfg.activation}"
        lines = []
        src, cols = "z", cat
        for k in range(cfg.backbone_layers):
            dst = f"bb{k % 2}"
            lines.append(f"    {name}_dense(bb{k}_w, bb{k}_b, {src}, {bu}, {cols}, {dst});\n")
            lines.append(
                f"    for (i = 0; i < {bu}; ++i) {{\n        {dst}[i] = {name}_act({dst}[i]);\n    }}\n"
            )
            src, cols = dst, bu
        backbone_code = "".join(lines)
        head_in, head_cols = src, bu
    if cfg.mode == "pure":
        gate_decl = ""
        update = UPDATE_PURE.substitute(n=n, p=cp)
    else:
        gate_decl = f", f2[{n}], ta[{n}], tb[{n}]"
        combine = "a + g * b" if cfg.mode == "no_gate" else "a * (1.0f - g) + g * b"
        # ncps.keras (formulation keras): gate sigmoid(-time_a * ts + time_b), no tanh on the heads.
        keras = cfg.formulation == "keras"
        update = UPDATE_GATED.substitute(
            name=name,
            p=cp,
            n=n,
            head_in=head_in,
            head_cols=head_cols,
            combine=combine,
            fa="f1[i]" if keras else "tanhf(f1[i])",
            fb="f2[i]" if keras else "tanhf(f2[i])",
            gate="tb[i] - ta[i] * ts" if keras else "ta[i] * ts + tb[i]",
        )
    return CELL.substitute(
        name=name,
        l=l,
        mode=cfg.mode,
        n_in=n_in,
        n=n,
        cat=cat,
        bb_decl=bb_decl,
        bb_doc=bb_doc,
        gate_decl=gate_decl,
        backbone=backbone_code,
        p=cp,
        head_in=head_in,
        head_cols=head_cols,
        update=update,
    )


def describe(cfg) -> str:
    """Short words for the variant, for the header and banner."""
    if cfg.wired:
        arch = f"wired {'/'.join(map(str, cfg.layer_sizes))}"
    elif cfg.backbone_layers:
        arch = f"backbone {cfg.backbone_layers} x {cfg.backbone_units} {cfg.activation}"
    else:
        arch = "no backbone"
    extra = (
        (", mixed memory" if cfg.mixed_memory else "")
        + (f", fc {cfg.proj_size}" if cfg.proj_size else "")
        + (", ncps.keras formulation" if cfg.formulation == "keras" else "")
    )
    return f"mode {cfg.mode}, {arch}{extra}"


def generate_cfc_float(
    model: CfCModel, name: str, sha: str, fast_sigmoid: bool = False, channels: Channels | None = None
) -> tuple[str, str]:
    """(header, source) of the float32 C for a CfC model; ``channels`` documents and normalises inputs."""
    cfg, p = model.config, model.params
    ch = channels or channels_of(model)
    norm_decl, norm_def = normalize_c(ch, name)
    up = name.upper()
    arrays: list[str] = []
    cells: list[str] = []
    layers: list[str] = []
    start = 0
    # ncps.keras coupling: the LSTM output mo is the first cell's input (its own state is kept)
    mm_input = cfg.mixed_memory and cfg.mixed_memory_coupling == "input"
    x_in = "mo" if mm_input else "x"
    for l, (prefix, n_in, n) in enumerate(cfg.layers()):
        cp = f"l{l}_"
        backbone = not cfg.wired and cfg.backbone_layers > 0
        arrays += _layer_arrays(p, prefix, cp, cfg.mode)
        cells.append(_cell(name, cfg, l, cp, n_in, n, backbone))
        src = x_in if l == 0 else f"&hn[{start - cfg.layer_sizes[l - 1]}]"
        layers.append(f"    {name}_cell{l}({src}, &v[{start}], elapsed, &hn[{start}]);\n")
        start += n
    if start != cfg.units:
        raise CodegenError(f"{model.source}: layer sizes add up to {start}, not units {cfg.units}")
    uses_act = not cfg.wired and cfg.backbone_layers > 0
    if uses_act:
        for k in range(cfg.backbone_layers):
            arrays += [
                c_array("float", f"bb{k}_w", p[f"backbone.{k}.weight"]),
                c_array("float", f"bb{k}_b", p[f"backbone.{k}.bias"]),
            ]
    act = ""
    if uses_act:
        body = ACTIVATION_C[cfg.activation].replace("NAME", name)
        act = f"\nstatic float {name}_act(float x)\n{{\n    return {body};\n}}\n"
    needs_sigmoid = cfg.mode != "pure" or cfg.mixed_memory or (uses_act and cfg.activation == "silu")
    sig = (SIGMOID_FAST if fast_sigmoid else SIGMOID_EXACT).substitute(name=name) if needs_sigmoid else ""
    lstm_decl = lstm_commit = ""
    if cfg.mixed_memory:
        arrays += [
            c_array("float", "lstm_wi", p["lstm.input_map.weight"]),
            c_array("float", "lstm_bi", p["lstm.input_map.bias"]),
            c_array("float", "lstm_wr", p["lstm.recurrent_map.weight"]),
        ]
        lstm_decl = "    float zl[4 * U], cn[U];\n"
        lstm_body = LSTM_BODY.substitute(name=name)
        lstm_commit = "    for (j = 0; j < U; ++j) {\n        state[U + j] = cn[j];\n    }\n"
        if mm_input:
            lstm_decl = lstm_decl.replace("cn[U];", "cn[U], mo[U];")
            lstm_body = lstm_body.replace("h -> v,", "h -> mo (the cell's input),")
            lstm_body = lstm_body.replace("        v[j] = tanhf", "        mo[j] = tanhf")
            lstm_body += "    for (j = 0; j < U; ++j) {\n        v[j] = state[j];\n    }\n"
    else:
        lstm_body = "    for (j = 0; j < U; ++j) {\n        v[j] = state[j];\n    }\n"
    motor = f"&hn[{cfg.units - cfg.motor_size}]"
    if cfg.proj_size:
        arrays += [c_array("float", "fc_w", p["fc.weight"]), c_array("float", "fc_b", p["fc.bias"])]
        output = f"    {name}_dense(fc_w, fc_b, {motor}, {cfg.proj_size}, {cfg.motor_size}, y);\n"
    else:
        output = (
            f"    for (i = 0; i < {cfg.motor_size}; ++i) {{\n"
            f"        y[i] = hn[{cfg.units - cfg.motor_size} + i];\n    }}\n"
        )
    what = f"{name}: CfC policy ({describe(cfg)}), float32{' (fast sigmoid)' if fast_sigmoid else ''}"
    step_doc = Template(STEP_DOC).substitute(UP=up, what=describe(cfg))
    header = render_header(sha, what, up, name, cfg, ch, norm_decl, step_doc)
    source = SOURCE.substitute(
        banner=banner(sha, what),
        name=name,
        UP=up,
        units=cfg.units,
        n_in=cfg.n_inputs,
        arrays="\n".join(arrays),
        sigmoid=sig,
        activation=act,
        cells="".join(cells),
        normalize=norm_def,
        lstm_decl=lstm_decl,
        lstm_body=lstm_body,
        layers="".join(layers),
        lstm_commit=lstm_commit,
        output=output,
    )
    return header, source


def estimate_cfc_memory(model: CfCModel) -> dict:
    """Flash of the stored weights and the step's stack buffers (exact: arm-none-eabi-size)."""
    cfg, p = model.config, model.params
    word = 4
    floats = sum(int(np.asarray(v).size) for k, v in p.items() if not k.endswith("sparsity_mask"))
    stack = 2 * cfg.units + (5 * cfg.units if cfg.mixed_memory else 0)
    cell = max(
        (n_in + n)
        + n * (1 if cfg.mode == "pure" else 4)
        + (2 * cfg.backbone_units if not cfg.wired and cfg.backbone_layers else 0)
        for _, n_in, n in cfg.layers()
    )
    return {
        "flash_params_bytes_estimate": floats * word,
        "ram_static_bytes": 0,
        "state_bytes_caller_owned": cfg.n_state * word,
        "stack_bytes_estimate": (stack + cell) * word,
    }
