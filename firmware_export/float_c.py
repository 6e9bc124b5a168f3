"""The float32 variant: C99, no malloc, no mutable globals; weights as static const (flash)."""

from __future__ import annotations

from string import Template

import numpy as np

from .cgen import RESET_C, CodegenError, banner, c_array, c_float
from .channels import Channels, channels_of, header_doc, normalize_c
from .fastexp_c import EXP2_N_LIMIT, EXP2_T_LIMIT, LOG2E, exp2_c
from .fastexp_c import SIGMOID_FAST as FAST_SIGMOID
from .layout import FirmwareModel, Synapses

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


def render_header(
    sha: str, what: str, up: str, name: str, cfg, ch: Channels, decl: str, step_doc: str, stdint: bool = False
) -> str:
    """``NAME.h`` for any variant: the shared template filled in; ``stdint``: the fixed-point
    variants' ``int32_t`` declarations need ``<stdint.h>``."""
    header = HEADER.substitute(
        banner=banner(sha, what),
        UP=up,
        name=name,
        n_in=cfg.n_inputs,
        n_out=cfg.n_outputs,
        n_state=cfg.n_state,
        inputs_doc=header_doc(ch, name),
        extra_decl=decl,
        step_doc=step_doc,
    )
    if stdint:
        header = header.replace(f"#define {up}_H\n", f"#define {up}_H\n#include <stdint.h>\n", 1)
    return header


SOURCE = Template(
    """$banner
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
$exp2$sigmoid$act$deriv
$normalize
"""
    + RESET_C
    + """
void ${name}_step(const float *x, float *state, float elapsed, float *y)
{
$buffers$lstm_decl$scalars$locals
$lstm_body    for (i = 0; i < $ncin; ++i) {
        xm[i] = $xm;
    }
$sensory$ode    for (j = 0; j < U; ++j) {
        state[j] = v[j];
    }
$lstm_commit    for (k = 0; k < NM; ++k) {
        y[k] = v[k] * $out_w + $out_b;
    }
}
"""
)

#: One synapse (``p`` = its {a, b, w, erev}, folded at export: a = -sigma, b = sigma mu, times log2(e)
#: for the fast exp2) at presynaptic value u: w sigmoid(sigma (u - mu)) = w / (1 + exp(a u + b)).
ACT_EXACT = Template("""
/* w sigmoid(sigma (u - mu)) of one synapse: p = {a, b, w, erev} with a = -sigma, b = sigma mu
 * folded at export (newlib's exp2f is a powf call: expf here) */
static inline float ${name}_act(const float *p, float u)
{
    return p[2] / (1.0f + expf(p[0] * u + p[1]));
}

/* libm's expf takes any argument: nothing to clamp */
static inline float ${name}_act_c(const float *p, float u)
{
    return ${name}_act(p, u);
}
""")

ACT_FAST = Template("""
/* w sigmoid(sigma (u - mu)) of one synapse: p = {a, b, w, erev} with a = -sigma log2(e),
 * b = sigma mu log2(e) folded at export; u such that |a u + b| < 2^12 */
${UP}_INLINE float ${name}_act(const float *p, float u)
{
    return p[2] / (1.0f + ${name}_exp2(fmaf(p[0], u, p[1])));
}

/* the same for |a u + b| <= 125: no range check in the exp2 */
${UP}_INLINE float ${name}_act_n(const float *p, float u)
{
    return p[2] / (1.0f + ${name}_exp2_n(fmaf(p[0], u, p[1])));
}

/* the same for any u: the argument clamped first */
${UP}_INLINE float ${name}_act_c(const float *p, float u)
{
    return p[2] / (1.0f + ${name}_exp2(${name}_clampf(fmaf(p[0], u, p[1]), $t_limit)));
}
""")

#: The step's locals and its sensory pass ($locals, $sensory): the CSR loop, or unrolled
#: (``unroll="all"``: unroll_c.float_unrolled, no source indices, no counter).
LOCALS_LOOP = "    const float *p;\n    const $idx *src;\n    int i, j, k, t, c;\n"
LOCALS_UNROLLED = "    const float *p;\n    int i, j, k, t;\n"
SENSORY_LOOP = """    /* sensory synapses do not depend on v: once per step (sorted by destination) */
    p = s_par;
    src = s_src;
    for (j = 0; j < U; ++j) {
        float n = 0.0f, d = 0.0f;
        for (c = s_cnt[j]; c > 0; --c, p += 4) {
            float a = ${name}_$sact(p, xm[*src++]);
            n = $mac_n;
            d += a;
        }
        ns[j] = n;
        ds[j] = d;
    }
"""

#: The recurrent sweep of the fused solver: vn from v; ``clamp`` 1 clamps every sigmoid argument.
SWEEP = Template("""
/* one fused sub-step: vn[j] = ((cm/dt) v[j] + gleak vleak + sum w s erev) / ((cm/dt) + gleak + sum w s
 * + eps); ns, ds hold gleak vleak + the sensory sums and cm/dt + gleak + eps + the sensory sums */
${UP}_INLINE void ${name}_sweep(const float *v, float *vn, const float *cmt, const float *ns,
                                 const float *ds, int clamp)
{
    const float *p = r_par;
    const $idx *src = r_src;
    int j, c;
    for (j = 0; j < U; ++j) {
        float n = $mac_nv, d = ds[j];
        for (c = r_cnt[j]; c > 0; --c, p += 4) {
            float a = clamp ? ${name}_act_c(p, v[*src++]) : ${name}_${bact}(p, v[*src++]);
            n = $mac_n;
            d += a;
        }
        vn[j] = n / d;
    }
}
""")

#: Per solver: the step's buffers, scalars, the sub-step loop ($ode) and the derivative function
#: ($deriv; '' for the fused solver).
FUSED = {
    "buffers": "    float va[U], vb[U], xm[NI], ns[U], ds[U], cmt[U];\n    float *v = va, *vn = vb, *sw;\n",
    "scalars": "    float dt;\n",
    "deriv": "",
    "ode": """    /* cm / dt and the sensory terms are fixed over the step */
    dt = elapsed / (float)UNFOLDS;
    for (j = 0; j < U; ++j) {
        cmt[j] = cm[j] / dt;
        ns[j] = gleak_vleak[j] + ns[j];
        ds[j] = cmt[j] + gleak[j] + ds[j] + EPSILON;
    }
$bounded    for (t = 0; t < UNFOLDS; ++t) {
$sweep        sw = v;
        v = vn;
        vn = sw;
    }
""",
}

# f(v) of edgeliquid.runtime.reference.ltc_derivative, grouped the same way; 1/cm is folded in
# at export (inv_cm), so the explicit schemes multiply where the fused update divides.
DERIV = Template("""
/* dv/dt of the LTC ODE at v (sensory sums ns, ds held over the step); f[U] written */
static void ${name}_deriv(const float *v, const float *ns, const float *ds, float *f)
{
    const float *p = r_par;
    const $idx *src = r_src;
    int j, c;
    for (j = 0; j < U; ++j) {
        float n = 0.0f, d = 0.0f;
        for (c = r_cnt[j]; c > 0; --c, p += 4) {
            float a = ${name}_$ract(p, v[*src++]);
            n = $mac_n;
            d += a;
        }
        f[j] = (gleak_vleak[j] + (n + ns[j]) - (gleak[j] + (d + ds[j])) * v[j]) * inv_cm[j];
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


def solver_pieces(solver: str, name: str, **subs: str) -> dict[str, str]:
    """The template pieces of ``solver`` with NAME and ``subs`` filled in; raises CodegenError for an
    unknown one."""
    if solver not in SOLVER_C:
        raise CodegenError(f"no C for solver {solver!r}; expected one of {sorted(SOLVER_C)}")
    pieces = {
        k: Template(v).substitute(name=name, **subs) for k, v in SOLVER_C[solver].items() if k != "deriv"
    }
    pieces["deriv"] = "" if solver == "fused_semi_implicit_euler" else DERIV.substitute(name=name, **subs)
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


#: The exact sigmoid (shared with cfc_c.py: keep its text).
SIGMOID_EXACT = Template("""static float ${name}_sigmoid(float x)
{
    return 1.0f / (1.0f + expf(-x));
}
""")

# Fast sigmoid (--fast-sigmoid): numba's exp32 in C, <= 2 ulp, no libm (fastexp_c.py); cfc_c.py's.
SIGMOID_FAST = FAST_SIGMOID

# The LTC's own sigmoids (the LSTM gates of mixed memory, and tests): static inline, so a model
# without mixed memory, whose synapses use _act, compiles without an unused function.
LTC_SIGMOID_EXACT = Template("""static inline float ${name}_sigmoid(float x)
{
    return 1.0f / (1.0f + expf(-x));
}
""")
LTC_SIGMOID_FAST = Template("""
/* the logistic through the fast exp2 (<= 1e-6 absolute) */
${UP}_INLINE float ${name}_sigmoid(float x)
{
    return 1.0f / (1.0f + ${name}_exp2(${name}_clampf(x * $mlog2e, $t_limit)));
}
""")

#: Saturation margin: a sigmoid whose argument is >= SATURATED in log2 units is exactly 0 or 1 in
#: float32 for this purpose (2^-150 is below the smallest subnormal).
SATURATED = 150.0


def _input_limit(syn: Synapses) -> float | None:
    """A bound X on the mapped inputs such that |a x + b| < 2^12 (EXP2_T_LIMIT) for |x| <= X and every sensory
    sigmoid is saturated (to float32) at +-X, so clamping the inputs to +-X changes nothing; None
    when no such X exists (then each sensory argument is clamped)."""
    if syn.count == 0:
        return None
    a, b = np.abs(syn.sigma) * LOG2E, np.abs(syn.sigma * syn.mu) * LOG2E
    x = 0.99 * (EXP2_T_LIMIT - b.max()) / a.max()
    ok = x > 0 and np.all(a * x - b >= SATURATED)
    return float(np.float32(x)) if ok else None


def _state_limit(fm: FirmwareModel) -> tuple[float, str] | None:
    """(V, act): a bound V on |v| at the step's entry under which every recurrent sigmoid argument
    stays in the range of ``act`` (``act_n``: |t| <= 125, else ``act``: |t| < 2^12); V is at least
    the largest |vleak| and |erev| (a fused sub-step is their convex combination with v, so |v| <= V
    at entry holds through the step, rounding aside: 0.1 % margin). None: every argument clamped."""
    syn = fm.rec
    if syn.count == 0:
        return None
    a, b = np.abs(syn.sigma) * LOG2E, np.abs(syn.sigma * syn.mu) * LOG2E
    erev = np.abs(np.concatenate([fm.rec.erev, fm.sens.erev]))
    hull = 1.001 * max(float(np.abs(fm.p["vleak"]).max()), float(erev.max()))
    if np.all(a * hull + b <= EXP2_N_LIMIT):
        return float(np.float32(hull)), "act_n"
    v = 0.99 * (EXP2_T_LIMIT - b.max()) / a.max()
    return (float(np.float32(v)), "act") if v >= hull else None


def _packed(prefix: str, syn: Synapses, units: int, idx: str, unit: float) -> list[str]:
    """CSR arrays of one layer: PREFIX_cnt[U] synapses per destination, PREFIX_src, and PREFIX_par
    with {a, b, w, erev} per synapse (a = -sigma unit, b = sigma mu unit; unit log2(e) for the fast
    exp2, 1 for expf)."""
    par = np.stack([-syn.sigma * unit, syn.sigma * syn.mu * unit, syn.w, syn.erev], axis=1)
    return [
        c_array(idx, f"{prefix}_cnt", np.bincount(syn.dst, minlength=units)),
        c_array(idx, f"{prefix}_src", syn.src),
        c_array("float", f"{prefix}_par", par, per_line=4),
    ]


def generate_float(
    fm: FirmwareModel,
    name: str,
    sha: str,
    fast_sigmoid: bool = False,
    channels: Channels | None = None,
    unroll: str = "none",
) -> tuple[str, str]:
    """(header, source) of the float32 variant; ``channels`` documents and normalises the inputs;
    ``unroll``: "substeps" (the recurrent passes) or "all" (the sensory pass too) as straight-line
    code instead of the CSR loops (firmware_export/unroll_c.py); "none" keeps the loops."""
    unroll_sensory = unroll == "all"
    unroll = unroll in ("all", "substeps")
    cfg, p = fm.cfg, fm.p
    ch = channels or channels_of(fm.model)
    norm_decl, norm_def = normalize_c(ch, name)
    up = name.upper()
    idx = fm.index_type()
    check_cm(fm)
    fused = cfg.solver == "fused_semi_implicit_euler"
    if fast_sigmoid:  # fmaf: one vfma on the M4 (-std=c99 contracts nothing), the same bits anywhere
        mac_n, mac_nv = "fmaf(a, p[3], n)", "fmaf(cmt[j], v[j], ns[j])"
    else:
        mac_n, mac_nv = "n + a * p[3]", "ns[j] + cmt[j] * v[j]"
    t_limit = c_float(EXP2_T_LIMIT)
    x_lim = _input_limit(fm.sens) if fast_sigmoid else None
    v_lim, bact = (_state_limit(fm) if fast_sigmoid and fused else None) or (None, "act")
    sact = "act_c" if fast_sigmoid and x_lim is None else "act"
    ract = "act_c" if fast_sigmoid else "act"
    bounded = sweep = ""
    if fused:
        call = "        {name}_sweep(v, vn, cmt, ns, ds, {c});\n"
        if not fast_sigmoid:
            sweep = call.format(name=name, c=0)
        elif v_lim is None:
            sweep = call.format(name=name, c=1)
        else:
            bounded = (
                "    /* |v| <= V_LIMIT at entry (and elapsed > 0) bounds v through the step (convex\n"
                "     * combinations of v, vleak, erev): no sigmoid argument needs clamping */\n"
                "    bounded = elapsed > 0.0f;\n"
                "    for (j = 0; j < U; ++j) {\n"
                f"        bounded &= fabsf(v[j]) <= {c_float(v_lim)};\n"
                "    }\n"
            )
            sweep = (
                "        if (bounded) {\n    "
                + call.format(name=name, c=0)
                + "        } else {\n    "
                + call.format(name=name, c=1)
                + "        }\n"
            )
    # unrolled: the loop sweep stays only as the clamping fallback of a bounded step
    loop_sweep = fused and (not unroll or bool(bounded))
    if unroll:
        call_u = f"{name}_sweep_u(v, vn, cmt, ns, ds)"
        sweep = sweep.replace(f"{name}_sweep(v, vn, cmt, ns, ds, 0)", call_u)
        if not loop_sweep:
            sweep = sweep.replace(f"{name}_sweep(v, vn, cmt, ns, ds, 1)", call_u)
    subs = {"idx": idx, "mac_n": mac_n, "ract": ract, "bounded": bounded, "sweep": sweep}
    pieces = solver_pieces(cfg.solver, name, **subs)
    unrolled = {
        "locals": Template(LOCALS_LOOP).substitute(idx=idx),
        "sensory": Template(SENSORY_LOOP).substitute(name=name, sact=sact, mac_n=mac_n),
        "defs": "",
    }
    if unroll:
        from .unroll_c import float_unrolled

        uact = bact if bounded else ("act_c" if fast_sigmoid else "act")
        inline = f"{up}_INLINE" if fast_sigmoid else "static inline"
        unrolled = float_unrolled(
            fm, name, fused=fused, sact=sact, uact=uact, ract=ract, mac_n=mac_n, mac_nv=mac_nv, inline=inline
        )
        pieces["deriv"] = unrolled.pop("deriv", pieces["deriv"])
        if not unroll_sensory:
            unrolled["locals"] = Template(LOCALS_LOOP).substitute(idx=idx)
            unrolled["sensory"] = Template(SENSORY_LOOP).substitute(name=name, sact=sact, mac_n=mac_n)
    if bounded:
        pieces["scalars"] += "    int bounded;\n"
    if fused:
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
    xm = f"x[i] * {affine['in_w']} + {affine['in_b']}"
    if x_lim is not None:  # beyond +-X_LIMIT every sensory sigmoid is saturated: clamping is exact
        xm = f"{name}_clampf({xm}, {c_float(x_lim)})"
    for prefix, syn in (("s", fm.sens), ("r", fm.rec)):
        packed = _packed(prefix, syn, cfg.units, idx, LOG2E if fast_sigmoid else 1.0)
        # unrolled passes need only the parameters (the loop fallback of the sweep also the CSR)
        loop = not unroll or (prefix == "r" and loop_sweep) or (prefix == "s" and not unroll_sensory)
        arrays += packed if loop else packed[2:]
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
    ncin = "NI"
    if cfg.mixed_memory and cfg.mixed_memory_coupling == "input":
        # ncps.keras coupling: the LSTM output mo (U values) is the cell's input; v keeps the state
        ncin = "U"
        lstm_decl = lstm_decl.replace("cn[U];", "cn[U], mo[U];")
        lstm_body = lstm_body.replace("h -> v,", "h -> mo (the cell's input),")
        lstm_body = lstm_body.replace("        v[j] = tanhf", "        mo[j] = tanhf")
        lstm_body += "    for (j = 0; j < U; ++j) {\n        v[j] = state[j];\n    }\n"
        xm = xm.replace("x[i]", "mo[i]", 1)
        pieces["buffers"] = pieces["buffers"].replace("xm[NI]", "xm[U]")
    fills = {"name": name, "UP": up, "idx": idx, "mac_n": mac_n, "mac_nv": mac_nv, "t_limit": t_limit}
    fills["bact"] = bact
    if fast_sigmoid:
        exp2 = exp2_c(name)
        sig = LTC_SIGMOID_FAST.substitute(fills, mlog2e=c_float(-LOG2E))
        act = ACT_FAST.substitute(fills)
    else:
        exp2, sig, act = "", LTC_SIGMOID_EXACT.substitute(name=name), ACT_EXACT.substitute(name=name)
    if loop_sweep:
        act += (
            SWEEP.substitute(fills)
            if fast_sigmoid
            else SWEEP.substitute(fills).replace(f"{up}_INLINE void", "static inline void")
        )
    act += unrolled.pop("defs")
    what = f"{name}: LTC policy, float32{' (fast sigmoid)' if fast_sigmoid else ''}{solver_note(cfg.solver)}"
    header = render_header(sha, what, up, name, cfg, ch, norm_decl, Template(LTC_STEP_DOC).substitute(UP=up))
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
        exp2=exp2,
        sigmoid=sig,
        act=act,
        normalize=norm_def,
        lstm_decl=lstm_decl,
        lstm_body=lstm_body,
        lstm_commit=lstm_commit,
        xm=xm,
        ncin=ncin,
        idx=idx,
        sact=sact,
        mac_n=mac_n,
        **unrolled,
        **pieces,
        **affine,
    )
    return header, source
