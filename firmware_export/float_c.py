"""The float32 variant: C99, no malloc, no mutable globals; weights as static const (flash)."""

from __future__ import annotations

from string import Template

import numpy as np

from .cgen import CodegenError, banner, c_array, c_float
from .channels import Channels, channels_of, header_doc, normalize_c
from .fastexp_c import SIGMOID_FAST as FAST_SIGMOID
from .layout import FirmwareModel

#: The step's comment in HEADER for LTC models (``step_doc``; ${UP} is the name in capitals).
LTC_STEP_DOC = (
    "/* One LTC step: x[${UP}_N_INPUTS] model inputs as above (finite), elapsed > 0 in model time units\n"
    " * (ncps: 1.0 per sample), state updated in place, y[${UP}_N_OUTPUTS] written. */"
)

#: The header of every float and fixed-point variant, LTC and CfC alike.
HEADER = Template("""$banner
#ifndef ${UP}_H
#define ${UP}_H

#define ${UP}_N_INPUTS $n_in
#define ${UP}_N_OUTPUTS $n_out
#define ${UP}_STATE_SIZE $n_state

#ifdef __cplusplus
extern "C" {
#endif

$inputs_doc
/* Zero the state (ncps' initial state). state: ${UP}_STATE_SIZE floats, owned by the caller. */
void ${name}_reset(float *state);

$step_doc
void ${name}_step(const float *x, float *state, float elapsed, float *y);
$extra_decl
#ifdef __cplusplus
}
#endif
#endif
""")

SOURCE = Template("""$banner
#include "$name.h"
#include <math.h>
#include <stdint.h>

#define U $units
#define NI $n_in
#define NM $n_out
#define UNFOLDS $unfolds
#define NNZ $nnz
#define SNNZ $snnz

$arrays
$sigmoid$deriv
$normalize
void ${name}_reset(float *state)
{
    int i;
    for (i = 0; i < ${UP}_STATE_SIZE; ++i) {
        state[i] = 0.0f;
    }
}

void ${name}_step(const float *x, float *state, float elapsed, float *y)
{
$buffers$lstm_decl$scalars    int i, j, k, t;

$lstm_body    for (i = 0; i < NI; ++i) {
        xm[i] = x[i] * $in_w + $in_b;
    }
    for (j = 0; j < U; ++j) {
        ns[j] = 0.0f;
        ds[j] = 0.0f;
    }
    /* sensory synapses do not depend on v: once per step */
    for (k = 0; k < SNNZ; ++k) {
        float a = s_w[k] * ${name}_sigmoid(s_sigma[k] * (xm[s_src[k]] - s_mu[k]));
        ns[s_dst[k]] += a * s_erev[k];
        ds[s_dst[k]] += a;
    }
$ode    for (j = 0; j < U; ++j) {
        state[j] = v[j];
    }
$lstm_commit    for (k = 0; k < NM; ++k) {
        y[k] = v[k] * $out_w + $out_b;
    }
}
""")

#: Per solver: the step's buffers, scalars, the sub-step loop ($ode) and the derivative function
#: ($deriv; '' for the fused solver). The fused pieces are ncps' update, text unchanged.
FUSED = {
    "buffers": "    float v[U], vn[U], xm[NI], ns[U], ds[U], nr[U], dr[U], cmt[U];\n",
    "scalars": "    float dt;\n",
    "deriv": "",
    "ode": """    /* cm / dt is loop invariant */
    dt = elapsed / (float)UNFOLDS;
    for (j = 0; j < U; ++j) {
        cmt[j] = cm[j] / dt;
    }
    for (t = 0; t < UNFOLDS; ++t) {
        for (j = 0; j < U; ++j) {
            nr[j] = 0.0f;
            dr[j] = 0.0f;
        }
        for (k = 0; k < NNZ; ++k) {
            float a = r_w[k] * ${name}_sigmoid(r_sigma[k] * (v[r_src[k]] - r_mu[k]));
            nr[r_dst[k]] += a * r_erev[k];
            dr[r_dst[k]] += a;
        }
        for (j = 0; j < U; ++j) {
            vn[j] = (cmt[j] * v[j] + gleak_vleak[j] + (nr[j] + ns[j]))
                    / (cmt[j] + gleak[j] + (dr[j] + ds[j]) + EPSILON);
        }
        for (j = 0; j < U; ++j) {
            v[j] = vn[j];
        }
    }
""",
}

# f(v) of edgeliquid.runtime.reference.ltc_derivative, grouped the same way; 1/cm is folded in
# at export (inv_cm), so the explicit schemes multiply where the fused update divides.
DERIV = Template("""
/* dv/dt of the LTC ODE at v (sensory sums ns, ds held over the step); f[U] written */
static void ${name}_deriv(const float *v, const float *ns, const float *ds, float *f)
{
    float nr[U], dr[U];
    int j, k;
    for (j = 0; j < U; ++j) {
        nr[j] = 0.0f;
        dr[j] = 0.0f;
    }
    for (k = 0; k < NNZ; ++k) {
        float a = r_w[k] * ${name}_sigmoid(r_sigma[k] * (v[r_src[k]] - r_mu[k]));
        nr[r_dst[k]] += a * r_erev[k];
        dr[r_dst[k]] += a;
    }
    for (j = 0; j < U; ++j) {
        f[j] = (gleak_vleak[j] + (nr[j] + ns[j]) - (gleak[j] + (dr[j] + ds[j])) * v[j]) * inv_cm[j];
    }
}
""")

EXPLICIT_EULER = {
    "buffers": "    float v[U], xm[NI], ns[U], ds[U], k1[U];\n",
    "scalars": "    float h;\n",
    "ode": """    /* explicit Euler: UNFOLDS sub-steps of h = elapsed / UNFOLDS, v += h f(v) */
    h = elapsed / (float)UNFOLDS;
    for (t = 0; t < UNFOLDS; ++t) {
        ${name}_deriv(v, ns, ds, k1);
        for (j = 0; j < U; ++j) {
            v[j] = v[j] + h * k1[j];
        }
    }
""",
}

RK4 = {
    "buffers": "    float v[U], vt[U], xm[NI], ns[U], ds[U], k1[U], k2[U], k3[U], k4[U];\n",
    "scalars": "    float h, hh, h6;\n",
    "ode": """    /* classic RK4: UNFOLDS sub-steps of h = elapsed / UNFOLDS */
    h = elapsed / (float)UNFOLDS;
    hh = 0.5f * h;
    h6 = h / 6.0f;
    for (t = 0; t < UNFOLDS; ++t) {
        ${name}_deriv(v, ns, ds, k1);
        for (j = 0; j < U; ++j) {
            vt[j] = v[j] + hh * k1[j];
        }
        ${name}_deriv(vt, ns, ds, k2);
        for (j = 0; j < U; ++j) {
            vt[j] = v[j] + hh * k2[j];
        }
        ${name}_deriv(vt, ns, ds, k3);
        for (j = 0; j < U; ++j) {
            vt[j] = v[j] + h * k3[j];
        }
        ${name}_deriv(vt, ns, ds, k4);
        for (j = 0; j < U; ++j) {
            v[j] = v[j] + h6 * (k1[j] + 2.0f * k2[j] + 2.0f * k3[j] + k4[j]);
        }
    }
""",
}

SOLVER_C = {"fused_semi_implicit_euler": FUSED, "explicit_euler": EXPLICIT_EULER, "rk4": RK4}


def solver_pieces(solver: str, name: str) -> dict[str, str]:
    """The template pieces of ``solver`` with NAME filled in; raises CodegenError for an unknown one."""
    if solver not in SOLVER_C:
        raise CodegenError(f"no C for solver {solver!r}; expected one of {sorted(SOLVER_C)}")
    pieces = {k: Template(v).substitute(name=name) for k, v in SOLVER_C[solver].items() if k != "deriv"}
    pieces["deriv"] = "" if solver == "fused_semi_implicit_euler" else DERIV.substitute(name=name)
    return pieces


def solver_note(solver: str) -> str:
    """The banner's solver remark: nothing for ncps' fused solver (files stay as they were)."""
    return "" if solver == "fused_semi_implicit_euler" else f", solver {solver}"


def check_cm(fm: FirmwareModel) -> None:
    """The explicit schemes divide by cm (folded into inv_cm): every cm must be > 0."""
    if fm.cfg.solver != "fused_semi_implicit_euler" and not np.all(fm.p["cm"] > 0):
        raise CodegenError(
            f"{fm.model.source}: solver {fm.cfg.solver} needs cm > 0 for every neuron "
            "(dv/dt = .../cm; no sub-step is stable otherwise)"
        )


SIGMOID_EXACT = Template("""static float ${name}_sigmoid(float x)
{
    return 1.0f / (1.0f + expf(-x));
}
""")

# Fast sigmoid (--fast-sigmoid): numba's exp32 in C, <= 2 ulp, no libm (fastexp_c.py).
SIGMOID_FAST = FAST_SIGMOID


def generate_float(
    fm: FirmwareModel, name: str, sha: str, fast_sigmoid: bool = False, channels: Channels | None = None
) -> tuple[str, str]:
    """(header, source) of the float32 variant; ``channels`` documents and normalises the inputs."""
    cfg, p = fm.cfg, fm.p
    ch = channels or channels_of(fm.model)
    norm_decl, norm_def = normalize_c(ch, name)
    up = name.upper()
    idx = fm.index_type()
    check_cm(fm)
    pieces = solver_pieces(cfg.solver, name)
    if cfg.solver == "fused_semi_implicit_euler":
        ode_consts = [f"#define EPSILON {c_float(cfg.epsilon)}\n", c_array("float", "cm", p["cm"])]
    else:  # 1/cm once here: the explicit schemes multiply (no division per neuron per sub-step)
        ode_consts = [c_array("float", "inv_cm", 1.0 / p["cm"])]
    arrays = [
        *ode_consts,
        c_array("float", "gleak", p["gleak"]),
        c_array("float", "gleak_vleak", p["gleak"] * p["vleak"]),
    ]
    affine = {}
    for side in ("in", "out"):
        w, b = p[f"{side}put_w"], p[f"{side}put_b"]
        var = "i" if side == "in" else "k"
        if np.all(w == 1.0) and np.all(b == 0.0):
            affine[f"{side}_w"], affine[f"{side}_b"] = "1.0f", "0.0f"
        else:
            arrays += [c_array("float", f"{side}_w", w), c_array("float", f"{side}_b", b)]
            affine[f"{side}_w"], affine[f"{side}_b"] = f"{side}_w[{var}]", f"{side}_b[{var}]"
    for prefix, syn in (("s", fm.sens), ("r", fm.rec)):
        arrays += [
            c_array(idx, f"{prefix}_src", syn.src),
            c_array(idx, f"{prefix}_dst", syn.dst),
            c_array("float", f"{prefix}_w", syn.w),
            c_array("float", f"{prefix}_sigma", syn.sigma),
            c_array("float", f"{prefix}_mu", syn.mu),
            c_array("float", f"{prefix}_erev", syn.erev),
        ]
    lstm_decl = lstm_body = lstm_commit = ""
    if cfg.mixed_memory:
        arrays += [
            c_array("float", "lstm_wi", p["lstm.input_map.weight"]),
            c_array("float", "lstm_bi", p["lstm.input_map.bias"]),
            c_array("float", "lstm_wr", p["lstm.recurrent_map.weight"]),
        ]
        lstm_decl = "    float z[4 * U], cn[U];\n"
        lstm_body = f"""    /* mixed memory: ncps LSTMCell on the raw inputs, h -> v, new c -> cn */
    for (i = 0; i < 4 * U; ++i) {{
        float a = 0.0f, r = 0.0f;
        for (k = 0; k < NI; ++k) {{
            a += lstm_wi[i * NI + k] * x[k];
        }}
        for (k = 0; k < U; ++k) {{
            r += lstm_wr[i * U + k] * state[k];
        }}
        z[i] = (a + lstm_bi[i]) + r;
    }}
    for (j = 0; j < U; ++j) {{
        cn[j] = state[U + j] * {name}_sigmoid(z[2 * U + j] + 1.0f)
                + tanhf(z[j]) * {name}_sigmoid(z[U + j]);
        v[j] = tanhf(cn[j]) * {name}_sigmoid(z[3 * U + j]);
    }}
"""
        lstm_commit = "    for (j = 0; j < U; ++j) {\n        state[U + j] = cn[j];\n    }\n"
    else:
        lstm_body = "    for (j = 0; j < U; ++j) {\n        v[j] = state[j];\n    }\n"
    sig = (SIGMOID_FAST if fast_sigmoid else SIGMOID_EXACT).substitute(name=name)
    what = f"{name}: LTC policy, float32{' (fast sigmoid)' if fast_sigmoid else ''}{solver_note(cfg.solver)}"
    header = HEADER.substitute(
        banner=banner(sha, what),
        UP=up,
        name=name,
        n_in=cfg.n_inputs,
        n_out=cfg.n_outputs,
        n_state=cfg.n_state,
        inputs_doc=header_doc(ch, name),
        extra_decl=norm_decl,
        step_doc=Template(LTC_STEP_DOC).substitute(UP=up),
    )
    source = SOURCE.substitute(
        banner=banner(sha, what),
        name=name,
        UP=up,
        units=cfg.units,
        n_in=cfg.n_inputs,
        n_out=cfg.n_outputs,
        unfolds=cfg.ode_unfolds,
        nnz=fm.rec.count,
        snnz=fm.sens.count,
        arrays="\n".join(arrays),
        sigmoid=sig,
        normalize=norm_def,
        lstm_decl=lstm_decl,
        lstm_body=lstm_body,
        lstm_commit=lstm_commit,
        **pieces,
        **affine,
    )
    return header, source
