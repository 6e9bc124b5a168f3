"""The fixed-point variant: int32 Q-format arithmetic for MCUs without an FPU.

Why int32 (one Q format, F fractional bits) rather than int16: the semi-implicit
update divides by ``cm/dt + gleak + sum(w s)``, and ``cm/dt`` grows as 1/elapsed
(about 600 for a driving NCP at elapsed 0.01), while the state needs ~1e-4
resolution to stay within 1e-3 of the float result; int16 cannot hold both.
Products and quotients use 64-bit intermediates (Cortex-M0 does them in libgcc).

Solvers: the fused one as above; explicit Euler without any division (h/cm from a
constant 1/(cm*unfolds)), for elapsed up to ``explicit_euler_limit`` where every sub-step
is a convex combination (so Theorem 2's bound still sizes F); rk4 is refused
(``RK4_REFUSAL``). See docs/firmware.md "Solvers".

F comes from bounds, not guesses (:func:`choose_q`): the state bound of Theorem 2
(``edgeliquid.model.guarantees``), the input range, the largest ``cm/dt`` for the
smallest elapsed time allowed, and the worst-case numerator and denominator of
the update. With M the largest magnitude, F = 30 - ceil(log2(M + 1)) (one guard
bit), so no intermediate can overflow inside those ranges. Inputs are saturated
to the range at conversion.

The logistic is a 513-entry table of sigmoid on [0, 16] (uint16, 1.0 = 32768)
with linear interpolation and sigmoid(-x) = 1 - sigmoid(x): interpolation error
<= h^2/8 * max|sigma''| = 1.2e-5 (h = 1/32), table rounding 1.5e-5, tail beyond 16
1.1e-7. The worst output error measured against the float64 reference is recorded
in the manifest (``measured_max_abs_error``) by tests/test_firmware.py's harness.
"""

from __future__ import annotations

import math
from string import Template

import numpy as np

from edgeliquid.model.guarantees import guarantees

from .cgen import CodegenError, banner, c_array, c_float
from .channels import Channels, channels_of, header_doc, normalize_c
from .float_c import HEADER, LTC_STEP_DOC, solver_note
from .layout import FirmwareModel

LUT_N = 512
LUT_RANGE = 16.0


def choose_q(fm: FirmwareModel, min_elapsed: float, max_elapsed: float, input_range: float) -> dict:
    """Fractional bits F and the bounds they were derived from."""
    cfg, p = fm.cfg, fm.p
    g = guarantees(fm.model)
    vb = float(max(np.abs(g.v_min).max(), np.abs(g.v_max).max()))
    xb = float(input_range * np.abs(p["input_w"]).max() + np.abs(p["input_b"]).max())
    cmt = float(p["cm"].max() * cfg.ode_unfolds / min_elapsed)
    w_in = np.zeros(cfg.units)
    we_in = np.zeros(cfg.units)
    for syn in (fm.rec, fm.sens):
        np.add.at(w_in, syn.dst, np.abs(syn.w))
        np.add.at(we_in, syn.dst, np.abs(syn.w * syn.erev))
    if cfg.solver == "fused_semi_implicit_euler":
        num = float((cmt * vb + np.abs(p["gleak"] * p["vleak"]) + we_in).max())
        den = float((cmt + p["gleak"] + w_in).max() + cfg.epsilon)
    else:  # explicit Euler: N - D v, no cm/dt term (see explicit_euler_limit)
        num = float((np.abs(p["gleak"] * p["vleak"]) + we_in + (p["gleak"] + w_in) * vb).max())
        den = float((p["gleak"] + w_in).max())
    pre = max(vb, xb)
    arg = 0.0
    for syn in (fm.rec, fm.sens):
        if syn.count:
            arg = max(arg, float((np.abs(syn.sigma) * (pre + np.abs(syn.mu))).max()))
    y = float((vb * np.abs(p["output_w"]) + np.abs(p["output_b"])).max())
    params = max(float(np.abs(v).max()) for k, v in p.items() if not k.startswith("lstm"))
    bounds = {
        "state": vb,
        "inputs_mapped": xb,
        "cm_over_dt": cmt,
        "numerator": num,
        "denominator": den,
        "sigmoid_argument": arg,
        "outputs": y,
        "parameters": params,
        "elapsed": max_elapsed,
    }
    if cfg.solver != "fused_semi_implicit_euler":
        del bounds["cm_over_dt"]  # the explicit update never forms cm/dt
        bounds["h_over_cm"] = float(max_elapsed / (cfg.ode_unfolds * p["cm"].min()))
    m = max(bounds.values())
    int_bits = math.ceil(math.log2(m + 1.0))
    frac = min(24, 30 - int_bits)
    if frac < 8:
        raise CodegenError(
            f"fixed point: values up to {m:.3g} leave only {frac} fractional bits; "
            "raise --min-elapsed or use the float variant"
        )
    return {
        "format": f"Q{31 - frac}.{frac} in int32",
        "frac_bits": frac,
        "bounds": bounds,
        "min_elapsed": min_elapsed,
        "max_elapsed": max_elapsed,
        "input_range": input_range,
        "resolution": 2.0**-frac,
        "sigmoid_table": f"{LUT_N + 1} x uint16 on [0, {LUT_RANGE:g}]",
        "sigmoid_error_bound": 1.2e-5 + 1.5e-5 + 1.1e-7,
    }


def explicit_euler_limit(fm: FirmwareModel) -> float:
    """Largest elapsed for which every fixed-point explicit Euler sub-step is a convex combination.

    The sub-step is v' = (1 - h D/cm) v + (h D/cm) (N/D) with D = gleak + sum w s <= gleak + sum w
    (s <= 1) and N/D a weighted average of vleak and the erev: for h D/cm <= 1 v' stays in
    Theorem 2's range. That is h <= tau_min (Theorem 1) for every neuron, i.e.
    elapsed <= ode_unfolds * min(tau_min); half of explicit Euler's stability bound (2 tau_min).
    """
    return float(fm.cfg.ode_unfolds * np.min(guarantees(fm.model).tau_min))


def check_solver(fm: FirmwareModel, max_elapsed: float) -> None:
    """Refuse (one line) what the fixed-point variant cannot bound: rk4, or explicit_euler beyond
    :func:`explicit_euler_limit`."""
    cfg, src = fm.cfg, fm.model.source
    if cfg.solver == "rk4":
        raise CodegenError(f"{src}: {RK4_REFUSAL}")
    if cfg.solver not in FIXED_SOLVERS:
        raise CodegenError(f"{src}: no fixed-point C for solver {cfg.solver!r}")
    if cfg.solver == "explicit_euler":
        limit = explicit_euler_limit(fm)
        if not max_elapsed <= limit:
            shown = _floor_sig(limit)  # rounded down: passing the printed value back works
            raise CodegenError(
                f"{src}: fixed-point explicit_euler needs --max-elapsed <= ode_unfolds x tau_min = {shown} "
                f"(got {max_elapsed:g}): beyond it a sub-step h = elapsed/{cfg.ode_unfolds} has "
                "h (gleak + sum w) / cm > 1 and the Q format's state bound fails; lower --max-elapsed "
                "or convert with more unfolds"
            )


def _floor_sig(x: float, digits: int = 4) -> str:
    """``x`` rounded down to ``digits`` significant digits, as text."""
    if not (math.isfinite(x) and x > 0):
        return f"{x:g}"
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(x)))
    return f"{math.floor(x * scale) / scale:.{digits}g}"


def _e_max_literal(solver: str, max_elapsed: float) -> str:
    """E_MAX in the C: the fused solver keeps its one-decimal literal (files unchanged); explicit
    Euler gets the float32 at or below ``max_elapsed``, so the clamp never exceeds the checked bound."""
    if solver == "fused_semi_implicit_euler":
        return f"{max_elapsed:.1f}f"
    e = np.float32(max_elapsed)
    if float(e) > max_elapsed:
        e = np.nextafter(e, np.float32(0))
    return c_float(float(e))


def _q(values, frac: int) -> np.ndarray:
    q = np.round(np.asarray(values, np.float64) * (1 << frac))
    if np.any(np.abs(q) >= 2**31):
        raise CodegenError("fixed point: a parameter does not fit the chosen Q format")
    return q.astype(np.int64)


#: Per solver: the division helper ($qdiv), the step's buffers and its sub-step loop ($ode).
#: The fused pieces are the update as it always was (qdiv: 64-bit division, U x UNFOLDS per step).
FIXED_FUSED = {
    "qdiv": """static int32_t qdiv(int32_t a, int32_t b)
{
    if (b < 1) {
        b = 1; /* only reachable when cm, gleak and every synapse are 0: eps below 1 LSB */
    }
    return (int32_t)(((int64_t)a * QONE) / b);
}

""",
    "buffers": "    int32_t v[U], vn[U], xm[NI], ns[U], ds[U], nr[U], dr[U], cmt[U];\n    int32_t dt;\n",
    "ode": """    dt = elapsed_q / UNFOLDS;
    for (j = 0; j < U; ++j) {
        cmt[j] = qdiv(cm[j], dt);
    }
    for (t = 0; t < UNFOLDS; ++t) {
        for (j = 0; j < U; ++j) {
            nr[j] = 0;
            dr[j] = 0;
        }
        for (k = 0; k < NNZ; ++k) {
            int32_t a = qmul(r_w[k], qsigmoid(qmul(r_sigma[k], v[r_src[k]] - r_mu[k])));
            nr[r_dst[k]] += qmul(a, r_erev[k]);
            dr[r_dst[k]] += a;
        }
        for (j = 0; j < U; ++j) {
            vn[j] = qdiv(qmul(cmt[j], v[j]) + gleak_vleak[j] + (nr[j] + ns[j]),
                         cmt[j] + gleak[j] + (dr[j] + ds[j]) + EPSILON_Q);
        }
        for (j = 0; j < U; ++j) {
            v[j] = vn[j];
        }
    }
""",
}

# Explicit Euler without a division: hc = h / cm = elapsed_q * inv_cm_u (inv_cm_u = 1/(cm UNFOLDS),
# a Q constant made at export), once per step; then v += hc (N - D v) per neuron per sub-step.
# Each sub-step is the convex combination (1 - hc D) v + hc D (N / D) when hc D <= 1, which
# choose_q checks for the whole elapsed range: Theorem 2's state bound then holds.
FIXED_EXPLICIT_EULER = {
    "qdiv": "",
    "buffers": "    int32_t v[U], xm[NI], ns[U], ds[U], nr[U], dr[U], hc[U];\n",
    "ode": """    /* h / cm = elapsed / (cm UNFOLDS): a multiply by a constant, no division */
    for (j = 0; j < U; ++j) {
        hc[j] = qmul(elapsed_q, inv_cm_u[j]);
    }
    for (t = 0; t < UNFOLDS; ++t) {
        for (j = 0; j < U; ++j) {
            nr[j] = 0;
            dr[j] = 0;
        }
        for (k = 0; k < NNZ; ++k) {
            int32_t a = qmul(r_w[k], qsigmoid(qmul(r_sigma[k], v[r_src[k]] - r_mu[k])));
            nr[r_dst[k]] += qmul(a, r_erev[k]);
            dr[r_dst[k]] += a;
        }
        for (j = 0; j < U; ++j) {
            v[j] += qmul(hc[j], gleak_vleak[j] + (nr[j] + ns[j]) - qmul(gleak[j] + (dr[j] + ds[j]), v[j]));
        }
    }
""",
}

FIXED_SOLVERS = {"fused_semi_implicit_euler": FIXED_FUSED, "explicit_euler": FIXED_EXPLICIT_EULER}

#: Why there is no fixed-point RK4 (docs/firmware.md, "Solvers in fixed point").
RK4_REFUSAL = (
    "fixed point does not support solver rk4: its stages v + h k are not convex combinations, "
    "so Theorem 2's state bound (which sizes the Q format) does not hold; use the float variant "
    "or convert the model to explicit_euler"
)


SOURCE = Template("""$banner
#include "$name.h"
#include <stdint.h>

#define U $units
#define NI $n_in
#define NM $n_out
#define UNFOLDS $unfolds
#define NNZ $nnz
#define SNNZ $snnz
#define QF $frac
#define QONE ((int32_t)1 << QF)
#define X_LIMIT $x_limit
#define E_MIN $e_min
#define E_MAX $e_max

$arrays
static int32_t qmul(int32_t a, int32_t b)
{
    return (int32_t)(((int64_t)a * b + ((int64_t)1 << (QF - 1))) >> QF);
}

$qdiv/* sigmoid in Q(QF): table on [0, $lut_range] with linear interpolation, odd symmetry */
static int32_t qsigmoid(int32_t x)
{
    int32_t ax = x < 0 ? -x : x;
    int32_t s;
    if (ax >= (int32_t)$lut_range * QONE) {
        s = (int32_t)1 << 15;
    } else {
        int64_t pos = (int64_t)ax * $lut_per_unit;
        int32_t i = (int32_t)(pos >> QF);
        int32_t f = (int32_t)(pos & (QONE - 1));
        int32_t a = lut[i], b = lut[i + 1];
        s = a + (int32_t)(((int64_t)(b - a) * f) >> QF);
    }
    s = $lut_shift;
    return x < 0 ? QONE - s : s;
}

static int32_t to_q(float f, float limit)
{
    if (!(f == f)) {
        return 0;
    }
    if (f > limit) {
        f = limit;
    }
    if (f < -limit) {
        f = -limit;
    }
    return (int32_t)(f * (float)QONE + (f >= 0.0f ? 0.5f : -0.5f));
}
$normalize
void ${name}_reset(float *state)
{
    int i;
    for (i = 0; i < ${UP}_STATE_SIZE; ++i) {
        state[i] = 0.0f;
    }
}

void ${name}_step_q(const int32_t *xq, int32_t *sq, int32_t elapsed_q, int32_t *yq)
{
$buffers    int i, j, k, t;
    for (j = 0; j < U; ++j) {
        v[j] = sq[j];
    }
    for (i = 0; i < NI; ++i) {
        xm[i] = qmul(xq[i], in_w[i]) + in_b[i];
    }
    for (j = 0; j < U; ++j) {
        ns[j] = 0;
        ds[j] = 0;
    }
    for (k = 0; k < SNNZ; ++k) {
        int32_t a = qmul(s_w[k], qsigmoid(qmul(s_sigma[k], xm[s_src[k]] - s_mu[k])));
        ns[s_dst[k]] += qmul(a, s_erev[k]);
        ds[s_dst[k]] += a;
    }
$ode    for (j = 0; j < U; ++j) {
        sq[j] = v[j];
    }
    for (k = 0; k < NM; ++k) {
        yq[k] = qmul(v[k], out_w[k]) + out_b[k];
    }
}

void ${name}_step(const float *x, float *state, float elapsed, float *y)
{
    int32_t xq[NI], sq[U], yq[NM];
    int i;
    float e = elapsed < E_MIN ? E_MIN : (elapsed > E_MAX ? E_MAX : elapsed);
    for (i = 0; i < NI; ++i) {
        xq[i] = to_q(x[i], X_LIMIT);
    }
    for (i = 0; i < U; ++i) {
        sq[i] = to_q(state[i], 1.0e6f);
    }
    ${name}_step_q(xq, sq, to_q(e, E_MAX), yq);
    for (i = 0; i < U; ++i) {
        state[i] = (float)sq[i] / (float)QONE;
    }
    for (i = 0; i < NM; ++i) {
        y[i] = (float)yq[i] / (float)QONE;
    }
}
""")


def generate_fixed(
    fm: FirmwareModel,
    name: str,
    sha: str,
    min_elapsed: float = 0.01,
    max_elapsed: float = 100.0,
    input_range: float = 10.0,
    channels: Channels | None = None,
) -> tuple[str, str, dict]:
    """(header, source, Q-format info) of the int32 fixed-point variant."""
    cfg, p = fm.cfg, fm.p
    ch = channels or channels_of(fm.model)
    if cfg.mixed_memory:
        raise CodegenError(
            "fixed point does not support mixed_memory (LSTM) models yet; use the float variant"
        )
    check_solver(fm, max_elapsed)
    info = choose_q(fm, min_elapsed, max_elapsed, input_range)
    if cfg.solver == "explicit_euler":
        info["convexity_max_elapsed"] = explicit_euler_limit(fm)
    pieces = {k: Template(v).substitute(name=name) for k, v in FIXED_SOLVERS[cfg.solver].items()}
    f = info["frac_bits"]
    idx = fm.index_type()
    xs = np.linspace(0.0, LUT_RANGE, LUT_N + 1)
    lut = np.round(1.0 / (1.0 + np.exp(-xs)) * 32768).astype(np.int64)
    if cfg.solver == "fused_semi_implicit_euler":
        ode_consts = [
            f"#define EPSILON_Q ((int32_t){max(1, int(round(cfg.epsilon * (1 << f))))})\n",
            c_array("uint16_t", "lut", lut, per_line=12),
            c_array("int32_t", "cm", _q(p["cm"], f)),
        ]
    else:  # 1/(cm UNFOLDS) at export: the step multiplies instead of dividing
        ode_consts = [
            c_array("uint16_t", "lut", lut, per_line=12),
            c_array("int32_t", "inv_cm_u", _q(1.0 / (p["cm"] * cfg.ode_unfolds), f)),
        ]
    arrays = [
        *ode_consts,
        c_array("int32_t", "gleak", _q(p["gleak"], f)),
        c_array("int32_t", "gleak_vleak", _q(p["gleak"] * p["vleak"], f)),
        c_array("int32_t", "in_w", _q(p["input_w"], f)),
        c_array("int32_t", "in_b", _q(p["input_b"], f)),
        c_array("int32_t", "out_w", _q(p["output_w"], f)),
        c_array("int32_t", "out_b", _q(p["output_b"], f)),
    ]
    for prefix, syn in (("s", fm.sens), ("r", fm.rec)):
        arrays += [
            c_array(idx, f"{prefix}_src", syn.src),
            c_array(idx, f"{prefix}_dst", syn.dst),
            c_array("int32_t", f"{prefix}_w", _q(syn.w, f)),
            c_array("int32_t", f"{prefix}_sigma", _q(syn.sigma, f)),
            c_array("int32_t", f"{prefix}_mu", _q(syn.mu, f)),
            c_array("int32_t", f"{prefix}_erev", _q(syn.erev, f)),
        ]
    what = f"{name}: LTC policy, fixed point {info['format']}{solver_note(cfg.solver)}"
    up = name.upper()
    norm_decl, norm_def = normalize_c(ch, name, fixed_frac=f, input_range=input_range)
    decl = norm_decl + (
        f"\n/* {name}_step saturates each x[i] to +-{input_range:g} (the Q format's input range). */\n"
        f"\n/* Native fixed-point step: Q{31 - f}.{f} int32 values (x, state, elapsed, y). */\n"
        f"#define {up}_Q_FRAC_BITS {f}\n"
        f"void {name}_step_q(const int32_t *xq, int32_t *sq, int32_t elapsed_q, int32_t *yq);\n"
    )
    header = HEADER.substitute(
        banner=banner(sha, what),
        UP=up,
        name=name,
        n_in=cfg.n_inputs,
        n_out=cfg.n_outputs,
        n_state=cfg.n_state,
        inputs_doc=header_doc(ch, name),
        extra_decl=decl,
        step_doc=Template(LTC_STEP_DOC).substitute(UP=up),
    )
    header = header.replace(f"#define {up}_H\n", f"#define {up}_H\n#include <stdint.h>\n", 1)
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
        frac=f,
        normalize=norm_def,
        arrays="\n".join(arrays),
        lut_range=int(LUT_RANGE),
        lut_per_unit=int(LUT_N / LUT_RANGE),
        lut_shift="s << (QF - 15)" if f >= 15 else "s >> (15 - QF)",
        x_limit=f"{input_range:.1f}f",
        e_min=f"{min_elapsed!r}f",
        e_max=_e_max_literal(cfg.solver, max_elapsed),
        **pieces,
    )
    return header, source, info
