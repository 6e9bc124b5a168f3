"""The fixed-point variant: int32 Q-format arithmetic for MCUs without an FPU.

Why int32 (one Q format, F fractional bits) rather than int16: the semi-implicit
update divides by ``cm/dt + gleak + sum(w s)``, and ``cm/dt`` grows as 1/elapsed
(about 600 for a driving NCP at elapsed 0.01), while the state needs ~1e-4
resolution to stay within 1e-3 of the float result; int16 cannot hold both.
Products are 32x32->64 (one smull on a Cortex-M4); divisions are 32-bit (``qdiv``).

Solvers: the fused one as an increment, v + r / (cm/dt + G) with one normalised
32-bit division per neuron per sub-step (its relative error scales the increment
only; docs/firmware.md); explicit Euler without any division (h/cm from a constant
1/(cm*unfolds)), for elapsed up to ``explicit_euler_limit`` where every sub-step is a
convex combination (so Theorem 2's bound still sizes F); rk4 is refused
(``RK4_REFUSAL``). See docs/firmware.md "Solvers".

F comes from bounds, not guesses (:func:`choose_q`): the state bound of Theorem 2
(``edgeliquid.model.guarantees``), the input range, the largest ``cm/dt`` for the
smallest elapsed time allowed, and the worst-case numerator, denominator and
residual of the update. With M the largest magnitude, F = 30 - ceil(log2(M + 1))
(one guard bit), so no intermediate can overflow inside those ranges. Inputs are
saturated to the range at conversion.

The logistic is piecewise linear on LUT_N intervals of [-LUT_RANGE, LUT_RANGE], the
minimax line on each (:func:`sigmoid_table`), evaluated without a branch: the interval of the
table coordinate u = (A v) >> US + B is saturated (one usat) and the line is c_i + s_i u in uint32
arithmetic (Q30; the end intervals are flat, so u needs no clamp). The worst output error
measured against the float64 reference is in docs/firmware.md (tests/test_firmware.py asserts
1e-3 of the output scale).

On a Cortex-M4 (gcc, DSP extension, FPU) the C takes the paths docs/firmware.md calls "Cortex-M
paths" (ldmia/ldrd/usat/smmla by inline assembly or builtins, vcvt for the float conversions),
each with the portable C's bits; -DEDGELIQUID_PORTABLE_C selects the portable C.
"""

from __future__ import annotations

import math
from string import Template

import numpy as np

from edgeliquid.model.guarantees import guarantees

from .cgen import RESET_C, CodegenError, banner, c_array, c_float
from .channels import Channels, channels_of, normalize_c
from .float_c import LTC_STEP_DOC, render_header, solver_note
from .layout import FirmwareModel


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
        # the update's increment form v + r / den: r = N - G v has no cm/dt term
        res = float((np.abs(p["gleak"] * p["vleak"]) + we_in + (p["gleak"] + w_in + cfg.epsilon) * vb).max())
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
        **({"residual": res} if cfg.solver == "fused_semi_implicit_euler" else {}),
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


#: Per solver: the per-step terms (k = cm/dt or h/cm), its scalars and the neuron update of a sub-step.
#: Both share the synapse sweep (``${name}_sweep``: sums n, d of one sub-step, Q(QF)) and the
#: residual r = gleak vleak + n - (gleak + d) v; the fused solver divides once per neuron per
#: sub-step with the 32-bit ``qdiv`` (no 64-bit division), explicit Euler multiplies by h/cm.
#: The fused solver's 32-bit division (C).
QDIV_C = """#ifdef __GNUC__
#define QCLZ(x) __builtin_clz(x)
#else
static int QCLZ(uint32_t x)
{
    int n = 0;
    while (!(x & 0x80000000u)) {
        x <<= 1;
        ++n;
    }
    return n;
}
#endif

#ifdef __GNUC__
#define QLIKELY(x) __builtin_expect(!!(x), 1)
#else
#define QLIKELY(x) (x)
#endif

/* qdiv inlined where the division is one instruction (not on a Cortex-M0: a libgcc call anyway) */
#if defined(__GNUC__) && (defined(__ARM_FEATURE_IDIV) || !defined(__arm__))
#define QINLINE static inline __attribute__((always_inline))
#else
#define QINLINE static
#endif

/* r 2^QF / d for d > 0 with one 32-bit division, d cut to at most 15 significant bits (d >> b,
 * b = 17 - clz(d), at least 0; qdiv_b takes b). Where r 2^(QF - b) fits 31 bits (small increments,
 * the usual case) the division is at the result's scale: error <= 1 unit + 2^-14 relative.
 * Otherwise r is shifted up to its headroom (zr), the quotient (>= 15 bits) shifted up by
 * QF - zr - b >= 1: relative error <= 2^-13. */
#if QF >= 16 /* d > 0 has b <= 16 <= QF */
QINLINE int32_t qdiv_b(int32_t r, int32_t d, int b)
{
    /* r << (QF - b) fits exactly where shifting it back gives r (qdiv's range test; one
     * instruction fewer than testing |r| >> (31 - QF + b), and the shifted r is needed anyway) */
    int32_t t = (int32_t)((uint32_t)r << (QF - b));
    int zr;
    if (QLIKELY(t >> (QF - b) == r)) {
        return t / (d >> b);
    }
    zr = QCLZ((uint32_t)(r ^ (r >> 31))) - 1; /* |r|, or |r| - 1 for r < 0: >= 2^(31 - QF + b) here */
    return (int32_t)((uint32_t)((int32_t)((uint32_t)r << zr) / (d >> b)) << (QF - zr - b));
}
#else
QINLINE int32_t qdiv_b(int32_t r, int32_t d, int b)
{
    int c, zr;
    int32_t q;
    zr = QCLZ((uint32_t)(r ^ (r >> 31)) | 1u) - 1;
    c = QF - zr - b;
    q = (int32_t)((uint32_t)r << zr) / (d >> b);
    return c >= 0 ? (int32_t)((uint32_t)q << c) : q >> -c;
}
#endif

QINLINE int32_t qdiv(int32_t r, int32_t d)
{
    int b = 17 - QCLZ((uint32_t)d);
    return qdiv_b(r, d, b < 0 ? 0 : b);
}

/* the update's division: its d = cm/dt + gleak + eps + sum w s is at least gleak + eps (w, s >= 0),
 * and where that is >= 2^15 units for every neuron (QD_GE_2_15, checked at export) b needs no clamp */
#if QD_GE_2_15
#define QDIV_UPDATE(r, d) qdiv_b((r), (d), 17 - QCLZ((uint32_t)(d)))
#else
#define QDIV_UPDATE(r, d) qdiv((r), (d))
#endif

"""

FIXED_FUSED = {
    "qdiv": QDIV_C,
    "per_step": "    ${name}_cm_over_dt(elapsed_q, ngk + 2);\n",
    "helpers": "",  # _cm_over_dt: needs the model's cm
    "scalars": "",
    # vn = (cmt v + N) / (cmt + G) = v + (N - G v) / (cmt + G): the 32-bit division's relative
    # error then scales the increment only (docs/firmware.md)
    "update": "v[j] + QDIV_UPDATE(n - qmul_f(g, v[j]), kj + g)",
}

# Explicit Euler without a division: hc = h / cm = elapsed_q * inv_cm_u (inv_cm_u = 1/(cm UNFOLDS),
# a Q constant made at export), once per step; then v += hc (N - D v) per neuron per sub-step.
# Each sub-step is the convex combination (1 - hc D) v + hc D (N / D) when hc D <= 1, which
# choose_q checks for the whole elapsed range: Theorem 2's state bound then holds.
FIXED_EXPLICIT_EULER = {
    "per_step": """    /* h / cm = elapsed / (cm UNFOLDS): a multiply by a constant, no division */
    for (t = 0; t < U; ++t) {
        ngk[3 * t + 2] = qmul(elapsed_q, inv_cm_u[t]);
    }
""",
    "qdiv": "",
    "helpers": "",
    "scalars": "",
    "update": "v[j] + qmul(kj, n - qmul_f(g, v[j]))",
}

FIXED_SOLVERS = {"fused_semi_implicit_euler": FIXED_FUSED, "explicit_euler": FIXED_EXPLICIT_EULER}

#: Why there is no fixed-point RK4 (docs/firmware.md, "Solvers in fixed point").
RK4_REFUSAL = (
    "fixed point does not support solver rk4: its stages v + h k are not convex combinations, "
    "so Theorem 2's state bound (which sizes the Q format) does not hold; use the float variant "
    "or convert the model to explicit_euler"
)


SOURCE = Template(
    """$banner
#include "$name.h"
#include <stdint.h>

/* gcc's first scheduling pass (on at -O2, off at -Os) hoists the unrolled synapses' loads far
 * ahead of their use and runs out of registers: the spills cost more than the scheduling gains
 * (#17: the driving NCP's step 4 % fewer M4 instructions without it). The same bits either way. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-schedule-insns")
#define QUNROLL _Pragma("GCC unroll 64")
#else
#define QUNROLL
#endif

/* The Cortex-M paths below (inline assembly, ARM builtins) give the portable C's bits;
 * -DEDGELIQUID_PORTABLE_C selects the portable C everywhere (the tests compare the two on the M4). */
#if defined(__GNUC__) && !defined(EDGELIQUID_PORTABLE_C)
#define QARM 1
#else
#define QARM 0
#endif
/* a core that divides in hardware (or not an ARM core): cm/dt takes its shortcuts (a Cortex-M0
 * calls a division routine per neuron either way and keeps the smaller qdiv loop) */
#if !defined(__arm__) || defined(__ARM_FEATURE_IDIV)
#define QHWDIV 1
#else
#define QHWDIV 0
#endif

#define U $units
#define NI $n_in
#define NM $n_out
#define UNFOLDS $unfolds
#define QF $frac
#define QONE ((int32_t)1 << QF)
#define X_LIMIT $x_limit
#define X_LIMIT_Q $x_limit_q /* to_q(X_LIMIT, X_LIMIT) */
#define QHALF $qhalf /* 2^-(QF+1) */
#define E_MIN $e_min
#define E_MAX $e_max
/* logistic table: coordinate u = (A v) >> US + B, UK fraction bits per interval, LUT_LAST + 1
 * intervals (the first and last flat: they take every u below and above) */
#define US $us
#define UK $uk
#define LUT_LAST $lut_last
#define UBITS $ubits
/* W, WE are in Q(QF + 2 - ACC_LOSS) */
#define ACC_LOSS $acc_loss
/* 1 where the fused update's denominator is >= 2^15 units whatever the state (fixed_c._divisor_big) */
#define QD_GE_2_15 $qd_big

$arrays
static int32_t qmul(int32_t a, int32_t b)
{
    return (int32_t)(((int64_t)a * b + ((int64_t)1 << (QF - 1))) >> QF);
}

/* a b 2^-QF rounded down: the residual's G v (3 instructions on the M4 instead of 5; the half unit
 * it gives away is far below the update's other errors) */
static inline int32_t qmul_f(int32_t a, int32_t b)
{
    return (int32_t)(((int64_t)a * b) >> QF);
}

/* a + the high word of b c (the 64-bit product >> 32, rounded down): one smmla where the core
 * has the DSP extension (Cortex-M4/M7), the same bits as the C */
#if QARM && defined(__ARM_FEATURE_DSP)
static inline int32_t qmla(int32_t a, int32_t b, int32_t c)
{
    int32_t r;
    __asm__("smmla %0, %1, %2, %3" : "=r"(r) : "r"(b), "r"(c), "r"(a));
    return r;
}
#else
static inline int32_t qmla(int32_t a, int32_t b, int32_t c)
{
    return a + (int32_t)(((int64_t)b * c) >> 32);
}
#endif

/* the table coordinate (A u) >> US + B, and acc + (W s) >> (32 - ACC_LOSS): qmla where the shift is 32 */
#if US == 32
#define QARG(a, u, b) qmla((b), (a), (u))
#else
#define QARG(a, u, b) ((int32_t)(((int64_t)(a) * (u)) >> US) + (b))
#endif
#if ACC_LOSS == 0
#define QACC(acc, w, s) qmla((acc), (w), (s))
#else
#define QACC(acc, w, s) ((acc) + (int32_t)(((int64_t)(w) * (s)) >> (32 - ACC_LOSS)))
#endif

$qdiv/* the table interval of coordinate u: u >> UK clamped to [0, LUT_LAST] (one usat with its
 * shift on the M4). The end intervals are flat (slope 0), so the line needs no clamped u. */
#if QARM && defined(__ARM_FEATURE_SAT)
#define QIDX(u) ((uint32_t)__builtin_arm_usat((u) >> UK, UBITS - UK))
#else
#define QIDX(u) ((u) < 0 ? 0u : ((u) >> UK > LUT_LAST ? (uint32_t)LUT_LAST : (uint32_t)((u) >> UK)))
#endif

/* a = p[k], b = p[k + 1] (k a constant, 4 k <= 1020): one ldrd on a Thumb-2 core with the DSP
 * extension (Cortex-M4/M7/M33; gcc splits most of them into two ldr; A32 ldrd would need an even
 * register pair); plain loads elsewhere. Only for the const arrays (the asm reads memory the
 * compiler does not see it read, so never for the state buffers). */
#if QARM && defined(__ARM_FEATURE_DSP) && defined(__thumb2__)
#define QLD2(p, k, a, b) __asm__("ldrd %0, %1, [%2, %3]" : "=r"(a), "=r"(b) : "r"(p), "i"(4 * (k)))
/* a synapse's {A, B, W, WE} = p[0..3] into SYN's a_, b_, w_, we_, p advanced past them: one
 * ldmia instead of two ldrd. ldm loads ascending registers, so those four are fixed (QREGS); SYN
 * uses them directly (copies cost moves) */
#define QREGS                                                                                     \
    register int32_t a_ __asm__("r4");                                                           \
    register int32_t b_ __asm__("r5");                                                           \
    register int32_t w_ __asm__("r6");                                                           \
    register int32_t we_ __asm__("r8")
#define QLD4(p) __asm__("ldmia %0!, {r4, r5, r6, r8}" : "+r"(p), "=r"(a_), "=r"(b_), "=r"(w_), "=r"(we_))
#define QLDW(p) ((void)0)
#endif
/* n, g = ngk[3 j], ngk[3 j + 1] (the step's per-neuron sums): one ldrd (its offset reaches 1020
 * bytes: U <= 85); the "m" operand tells the compiler that the asm reads them (they are written
 * earlier in the same step) */
#if QARM && defined(__ARM_FEATURE_DSP) && defined(__thumb2__) && U <= 85
#define QNG(ngk, j)                                                                               \
    __asm__("ldrd %0, %1, [%2, %3]"                                                              \
            : "=r"(n), "=r"(g)                                                                    \
            : "r"(ngk), "i"(12 * (j)), "m"(*(const int32_t(*)[2])((ngk) + 3 * (j))))
#else
#define QNG(ngk, j) (n = (ngk)[3 * (j)], g = (ngk)[3 * (j) + 1])
#endif
#if !(QARM && defined(__ARM_FEATURE_DSP) && defined(__thumb2__))
#define QLD2(p, k, a, b) ((a) = (p)[k], (b) = (p)[(k) + 1])
#define QREGS int32_t a_, b_, w_, we_
/* W, WE read where they are used (a core with eight low registers spills otherwise) */
#define QLD4(p) (a_ = (p)[0], b_ = (p)[1])
#define QLDW(p) (w_ = (p)[2], we_ = (p)[3], (p) += 4)
#endif

/* w sigmoid and w erev sigmoid of the synapse at p (p advanced past it) at presynaptic u, added
 * to n, d (Q(QF)): the logistic from a piecewise linear table (minimax per interval, Q30:
 * s = lut[2i] + lut[2i+1] u in uint32 arithmetic), p[0..3] = {A, B, W, WE} with W, WE in
 * Q(QF + 2) */
#define SYN(p, u, n, d)                                                       \
    do {                                                                      \
        QREGS;                                                                \
        int32_t u_, s_;                                                       \
        uint32_t c_, k_;                                                      \
        const uint32_t *e_;                                                   \
        QLD4(p);                                                              \
        u_ = QARG(a_, (u), b_);                                               \
        e_ = lut + (QIDX(u_) << 1);                                           \
        QLD2(e_, 0, c_, k_);                                                  \
        s_ = (int32_t)(c_ + k_ * (uint32_t)u_);                               \
        QLDW(p);                                                              \
        n = QACC(n, we_, s_);                                                 \
        d = QACC(d, w_, s_);                                                  \
    } while (0)

$substep
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

/* to_q(f, X_LIMIT) and to_q(f, 1e6f) for the state, in ~10 instead of ~20 M4 instructions where the
 * core has a single-precision FPU: trunc((|f| + 2^-(QF+1)) 2^QF) by one vcvt to fixed point (the
 * scaling is exact, so the one rounding is to_q's f 2^QF +- 0.5, symmetric in the sign; NaN gives
 * 0, too large saturates), capped at X_LIMIT_Q = to_q(X_LIMIT, X_LIMIT), then f's sign applied.
 * The same bits as to_q wherever to_q is defined (|f| 2^QF < 2^31; a state beyond that saturates). */
#if QARM && defined(__thumb2__) && defined(__ARM_FP) && (__ARM_FP & 4)
static inline int32_t to_q_fpu(float f, int32_t cap)
{
    float a = __builtin_fabsf(f) + QHALF;
    int32_t u, m;
    union { float f; int32_t i; } b;
    __asm__("vcvt.s32.f32 %1, %1, %2\\n\\tvmov %0, %1" : "=r"(u), "+t"(a) : "i"(QF));
    b.f = f;
    m = b.i >> 31;
    u = u > cap ? cap : u;
    return (u ^ m) - m;
}
#define TO_Q_X(f) to_q_fpu((f), X_LIMIT_Q)
#define TO_Q_S(f) to_q_fpu((f), INT32_MAX)
/* (float)q / QONE: one vcvt from fixed point (the same single rounding) */
static inline float from_q(int32_t q)
{
    union { int32_t i; float f; } b;
    b.i = q;
    __asm__("vcvt.f32.s32 %0, %0, %1" : "+t"(b.f) : "i"(QF));
    return b.f;
}
#else
#define TO_Q_X(f) to_q((f), X_LIMIT)
#define TO_Q_S(f) to_q((f), 1.0e6f)
#define from_q(q) ((float)(q) / (float)QONE)
#endif
$normalize
"""
    + RESET_C
    + """$helpers
void ${name}_step_q(const int32_t *xq, int32_t *sq, int32_t elapsed_q, int32_t *yq)
{
    int32_t xm[NI], ngk[3 * U]; /* per neuron: n, g (sensory sums + leak) and k (cm/dt or h/cm) */
$buffers$scalars$locals    for (i = 0; i < NI; ++i) {
        xm[i] = qmul(xq[i], in_w[i]) + in_b[i];
    }
$sensory$per_step$substeps    for (k = 0; k < NM; ++k) {
        yq[k] = qmul(v[k], out_w[k]) + out_b[k];
    }
}

void ${name}_step(const float *x, float *state, float elapsed, float *y)
{
    int32_t xq[NI], sq[U], yq[NM];
    int i;
    float e = elapsed < E_MIN ? E_MIN : (elapsed > E_MAX ? E_MAX : elapsed);
$unroll_io    for (i = 0; i < NI; ++i) {
        xq[i] = TO_Q_X(x[i]);
    }
$unroll_io    for (i = 0; i < U; ++i) {
        sq[i] = TO_Q_S(state[i]);
    }
    ${name}_step_q(xq, sq, to_q(e, E_MAX), yq);
$unroll_io    for (i = 0; i < U; ++i) {
        state[i] = from_q(sq[i]);
    }
$unroll_io    for (i = 0; i < NM; ++i) {
        y[i] = from_q(yq[i]);
    }
}
"""
)

#: The sub-steps, by UNFOLDS. Two or more: the first reads the caller's state, the last writes it
#: and the others alternate between two buffers (no copies in or out); one: a buffer and a copy
#: (a sub-step's input and output must differ: later neurons still read v[j] after vn[j]).
SUBSTEPS = """    v = sq;
    for (t = 0; t < UNFOLDS; ++t) {
        vn = t == UNFOLDS - 1 ? sq : ((t & 1) ? vb : va);
        ${name}_substep(v, vn, ngk);
        v = vn;
    }
"""
SUBSTEP_ONE = """    ${name}_substep(sq, va, ngk);
    for (t = 0; t < U; ++t) {
        sq[t] = va[t];
    }
    v = sq;
"""

#: One sub-step vn from v (CSR by destination, like the float variant): n = gleak vleak + the
#: sensory and recurrent sums of w erev s, g = gleak (+ eps) + those of w s, both Q(QF); kj is
#: cm/dt (fused) or h/cm (explicit Euler). ngk holds the sensory n, g and k of each neuron side by
#: side (one ldrd for n and g on the M4).
SUBSTEP = Template("""/* one sub-step: vn[j] = $update */
static void ${name}_substep(const int32_t *v, int32_t *vn, const int32_t *ngk)
{
    const int32_t *p = r_par;
    const $idx *src = r_src;
    int j, c;
    for (j = 0; j < U; ++j) {
        int32_t n = ngk[3 * j], g = ngk[3 * j + 1], kj = ngk[3 * j + 2];
        for (c = r_cnt[j]; c > 0; --c) {
            SYN(p, v[*src++], n, g);
        }
        vn[j] = $update;
    }
}
""")

#: The step's locals and its sensory pass: the CSR loop, or unrolled (:func:`_unrolled`).
LOCALS_LOOP = "    const int32_t *p = s_par;\n    const $idx *src = s_src;\n    int i, j, k, t, c;\n"
SENSORY_LOOP = """    /* sensory synapses (by destination): fixed over the step */
    for (j = 0; j < U; ++j) {
        int32_t n = gleak_vleak[j], d = gleak[j]; /* the sums start there: no constant added after */
        for (c = s_cnt[j]; c > 0; --c) {
            SYN(p, xm[*src++], n, d);
        }
        ngk[3 * j] = n;
        ngk[3 * j + 1] = d;
    }
"""


def _unrolled(fm: FirmwareModel, name: str, update: str) -> dict[str, str]:
    """``locals``, ``sensory`` and ``substep`` with one SYN per synapse (firmware_export/unroll_c.py):
    the loops' operations in their order, sources as constants, the parameters read in order."""
    from .unroll_c import OPAQUE, csr_pass, indexed

    up, units = name.upper(), fm.cfg.units
    sensory = csr_pass(
        fm.sens,
        units,
        "        n = gleak_vleak[$j];\n        d = gleak[$j];\n",
        "        SYN(p, xm[$s], n, d);\n",
        "        ngk[3 * $j] = n;\n        ngk[3 * $j + 1] = d;\n",
    )
    rec = csr_pass(
        fm.rec,
        units,
        "    QNG(ngk, $j);\n    kj = ngk[3 * $j + 2];\n",
        "    SYN(p, v[$s], n, g);\n",
        f"    vn[$j] = {indexed(update)};\n",
    )
    return {
        "locals": f"    const int32_t *p = s_par;\n    int i, k, t;\n    {up}_OPAQUE(p);\n",
        "sensory": "    /* sensory synapses (by destination): fixed over the step; unrolled */\n"
        f"    {{\n        int32_t n, d;\n{sensory}    }}\n",
        "substep": OPAQUE.substitute(UP=up)
        + f"""
/* one sub-step: vn[j] = {update}; unrolled */
static void {name}_substep(const int32_t *v, int32_t *vn, const int32_t *ngk)
{{
    const int32_t *p = r_par;
    int32_t n, g, kj;
    {up}_OPAQUE(p);
{rec}}}
""",
    }


#: The logistic table: LUT_N intervals on [-LUT_RANGE, LUT_RANGE], UK fraction bits per interval.
LUT_N = 256
LUT_RANGE = 12.0
UK = 10


def sigmoid_table() -> tuple[np.ndarray, float]:
    """(uint32 [2 LUT_N]: per interval i the pair (c_i, slope_i) with s(u) = c_i + slope_i u mod 2^32
    in Q30 for the table coordinate u in interval i, the worst error against the logistic on
    [-LUT_RANGE, LUT_RANGE] and beyond, sampled). Each inner interval gets the minimax line: the
    secant shifted by half its largest gap to the (convex or concave) logistic. The first and last
    intervals are flat, at the middle of the logistic's range over them and everything beyond
    (|x| >= LUT_RANGE - h), so every u below or above the table lands on a flat line and the C
    needs no clamped u (only its interval is clamped: one usat on the M4)."""
    h = 2 * LUT_RANGE / LUT_N
    step = 2**UK
    out = np.zeros(2 * LUT_N, np.uint64)
    worst = 0.0
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    for i in range(LUT_N):
        x0 = -LUT_RANGE + i * h
        xs = x0 + h * np.arange(step + 1) / step
        ys = sig(xs)
        if i in (0, LUT_N - 1):  # flat: from 0 (resp. 1) to the logistic at the inner edge
            lo, hi = (0.0, ys[-1]) if i == 0 else (ys[0], 1.0)
            sq, cq = 0, int(round(0.5 * (lo + hi) * 2**30))
            worst = max(worst, abs(cq / 2**30 - lo), abs(hi - cq / 2**30))
        else:
            slope = (ys[-1] - ys[0]) / step  # per u unit
            gap = ys - (ys[0] + slope * np.arange(step + 1))
            c0 = ys[0] + 0.5 * (gap.max() + gap.min())
            sq = int(round(slope * 2**30))
            cq = int(round(c0 * 2**30)) - sq * i * step
            got = (cq + sq * (i * step + np.arange(step + 1))) / 2**30
            worst = max(worst, float(np.abs(got - ys).max()))
        out[2 * i], out[2 * i + 1] = cq % 2**32, sq % 2**32
    return out, worst


def _cm_over_dt(zr: np.ndarray, unrolled: bool, frac: int, name: str) -> str:
    """``NAME_cm_over_dt(elapsed_q, ks)``, the fused step's cm / dt once per step: qdiv(cm[j], dt)'s
    bits with dt cut to 15 significant bits once. qdiv divides cm[j] << m (m = QF - b) where that
    fits, i.e. where cm[j]'s headroom zr[j] >= m, else cm[j] << zr[j] and shifts the quotient up by
    m - zr[j]. Most elapsed times put every neuron on the same side, so each side is a plain
    division per neuron (with its shift a constant when ``unrolled``); between them (some neurons
    on each side) qdiv. Q formats with fewer than 16 fraction bits (qdiv's other branch) keep the
    qdiv loop. A function of its own so that a test can compare it with qdiv (inlined: one call)."""
    general = "    for (j = 0; j < U; ++j) {\n        ks[3 * j] = qdiv(cm[j], dt);\n    }\n"
    head = f"""/* cm / dt, once per step (U 32-bit divisions; fixed_c._cm_over_dt), into ks[3 j] */
static void {name}_cm_over_dt(int32_t elapsed_q, int32_t *ks)
{{
    int32_t dt = elapsed_q / UNFOLDS;
    int j;
"""
    if frac < 16:
        return head + general + "}\n"
    general_only = f"#if !QHWDIV\n{general}#else\n"
    if unrolled:
        fast = "".join(
            f"        ks[{3 * j}] = (int32_t)((uint32_t)cm[{j}] << m) / dtn;\n" for j in range(len(zr))
        )
        slow = "".join(
            f"        ks[{3 * j}] = (int32_t)((uint32_t)(cm_n[{j}] / dtn) << (m - {int(z)}));\n"
            for j, z in enumerate(zr)
        )
    else:
        fast = (
            "        for (j = 0; j < U; ++j) {\n"
            "            ks[3 * j] = (int32_t)((uint32_t)cm[j] << m) / dtn;\n        }\n"
        )
        slow = (
            "        for (j = 0; j < U; ++j) {\n"
            "            ks[3 * j] = (int32_t)((uint32_t)(cm_n[j] / dtn) << (m - cm_zr[j]));\n        }\n"
        )
    return f"""{head}{general_only}    int b = 17 - QCLZ((uint32_t)dt), m;
    int32_t dtn;
    b = b < 0 ? 0 : b;
    m = QF - b;
    dtn = dt >> b;
    if (m <= CM_ZR_MIN) {{ /* every cm[j] << m fits: the division at the result's scale */
{fast}    }} else if (m > CM_ZR_MAX) {{ /* none fits: cm_n[j] = cm[j] << cm_zr[j], quotient shifted up */
{slow}    }} else {{
    {general.replace(chr(10) + "    ", chr(10) + "        ")}    }}
    (void)j;
#endif
}}
"""


def _divisor_big(fm: FirmwareModel, gleak_q: np.ndarray, lut: np.ndarray) -> bool:
    """Whether the fused update's d = cm/dt + gleak + eps + sum (W s >> 32) is >= 2^15 units for any
    state and elapsed (qdiv's b = 17 - clz(d) then needs no clamp at 0): every W >= 0, every table
    line >= 0 on its interval (so each floored product is >= 0), cm/dt >= 0, and gleak + eps
    (``gleak_q``, Q F) >= 2^15 for every neuron."""
    ws = [s.w for s in (fm.rec, fm.sens) if s.count]
    if any(np.any(w < 0) for w in ws) or np.any(fm.p["cm"] < 0):
        return False
    c, slope = (lut[0::2].astype(object), lut[1::2].astype(object))  # exact integers
    ends = []
    for i in range(len(c)):  # a line's extremes are its interval's ends, in the C's uint32 arithmetic
        for u in (i * 2**UK, (i + 1) * 2**UK - 1):
            ends.append((c[i] + slope[i] * u) % 2**32)
    return bool(max(ends) < 2**31 and gleak_q.min() >= 2**15)


def _to_q32(x: float, frac: int) -> int:
    """The C's to_q(x, x) for x >= 0 in float32: trunc(x 2^frac + 0.5), each step rounded to float32."""
    return int(np.trunc(np.float32(np.float32(x) * np.float32(2.0**frac)) + np.float32(0.5)))


def _cm_headroom(cm: np.ndarray) -> np.ndarray:
    """Each cm's headroom as qdiv computes it: clz - 1 (0 for cm = 0, which every path divides to 0)."""
    if np.any(cm < 0):
        raise CodegenError("fixed point: a membrane capacitance cm is negative")
    return np.array([31 - int(c).bit_length() if c else 0 for c in cm], np.int64)


def _cm_shifts(cm: np.ndarray, unrolled: bool, frac: int) -> list[str]:
    """C for :func:`_cm_over_dt`: ``cm`` (Q F), ``cm_n`` = cm << its headroom, the headrooms'
    extremes CM_ZR_MIN/MAX and (loops) the headrooms ``cm_zr``; for F < 16 ``cm`` only."""
    zr = _cm_headroom(cm)
    if frac < 16:
        return [c_array("int32_t", "cm", cm)]
    return [
        f"#define CM_ZR_MIN {int(zr.min())}\n#define CM_ZR_MAX {int(zr.max())}\n",
        c_array("int32_t", "cm", cm),
        "#if QHWDIV\n",
        c_array("int32_t", "cm_n", cm << zr),
        *([] if unrolled else [c_array("uint8_t", "cm_zr", zr)]),
        "#endif\n",
    ]


def _syn_params(syn, frac: int, us: int, acc_shift: int) -> np.ndarray:
    """{A, B, W, WE} per synapse: u = (A v) >> us + B, W and WE in Q(frac + acc_shift)."""
    h = 2 * LUT_RANGE / LUT_N
    a = syn.sigma * 2.0 ** (UK + us - frac) / h
    b = (LUT_RANGE - syn.sigma * syn.mu) * 2.0**UK / h + 0.5  # + 0.5: the >> us rounds down
    w = syn.w * 2.0 ** (frac + acc_shift)
    we = syn.w * syn.erev * 2.0 ** (frac + acc_shift)
    par = np.round(np.stack([a, b, w, we], axis=1))
    if np.any(np.abs(par) >= 2**31):
        raise CodegenError("fixed point: a synapse parameter does not fit the chosen Q format")
    return par.astype(np.int64)


def _arg_shift(fm: FirmwareModel, frac: int) -> int:
    """US: the largest shift <= 32 for which every A = sigma 2^(UK + US - frac) / h fits int32."""
    h = 2 * LUT_RANGE / LUT_N
    smax = max([float(np.abs(s.sigma).max()) for s in (fm.rec, fm.sens) if s.count] + [1e-30])
    us = 32
    while us > 0 and smax * 2.0 ** (UK + us - frac) / h >= 2**30:
        us -= 1
    return us


def generate_fixed(
    fm: FirmwareModel,
    name: str,
    sha: str,
    min_elapsed: float = 0.01,
    max_elapsed: float = 100.0,
    input_range: float = 10.0,
    channels: Channels | None = None,
    unroll: str = "none",
) -> tuple[str, str, dict]:
    """(header, source, Q-format info) of the int32 fixed-point variant; ``unroll``: "substeps"
    (the recurrent passes) or "all" (the sensory pass too) with one SYN per synapse instead of the
    CSR loops (the same bits); "none" keeps the loops."""
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
    lut, lut_err = sigmoid_table()
    us = _arg_shift(fm, f)
    # W, WE in Q(f + 2): (W s30) >> 32 is then Q(f); a model whose weights leave no room for the
    # two bits is refused by _syn_params (choose_q's F keeps one guard bit for them)
    acc = 2
    wmax = max([float(np.abs(np.r_[s.w, s.w * s.erev]).max()) for s in (fm.rec, fm.sens) if s.count] + [0.0])
    while acc > 0 and wmax * 2.0 ** (f + acc) >= 2**31 - 1:
        acc -= 1
    info["sigmoid_table"] = (
        f"{LUT_N} intervals on [-{LUT_RANGE:g}, {LUT_RANGE:g}], minimax line each (the first and last "
        "flat), Q30 (uint32 pairs)"
    )
    info["sigmoid_error_bound"] = float(lut_err + 0.25 * 2 * LUT_RANGE / LUT_N / 2**UK)
    gleak_q = _q(p["gleak"], f)
    if cfg.solver == "fused_semi_implicit_euler":
        cm_q = _q(p["cm"], f)
        pieces["helpers"] = _cm_over_dt(_cm_headroom(cm_q), unroll != "none", f, name)
        eps_q = max(1, int(round(cfg.epsilon * (1 << f))))
        gleak_q = gleak_q + eps_q  # the fused denominator's epsilon, folded in at export
        ode_consts = [
            f"/* gleak below is gleak + epsilon (Q F: {eps_q}), the fused update's denominator term */\n",
            *_cm_shifts(cm_q, unroll != "none", f),
        ]
    else:  # 1/(cm UNFOLDS) at export: the step multiplies instead of dividing
        ode_consts = [c_array("int32_t", "inv_cm_u", _q(1.0 / (p["cm"] * cfg.ode_unfolds), f))]
    arrays = [
        *ode_consts,
        c_array("uint32_t", "lut", lut, per_line=8),
        c_array("int32_t", "gleak", gleak_q),
        c_array("int32_t", "gleak_vleak", _q(p["gleak"] * p["vleak"], f)),
        c_array("int32_t", "in_w", _q(p["input_w"], f)),
        c_array("int32_t", "in_b", _q(p["input_b"], f)),
        c_array("int32_t", "out_w", _q(p["output_w"], f)),
        c_array("int32_t", "out_b", _q(p["output_b"], f)),
    ]
    for prefix, syn in (("s", fm.sens), ("r", fm.rec)):
        rolled = unroll == "none" or (prefix == "s" and unroll == "substeps")
        arrays += (
            []
            if not rolled
            else [
                c_array(idx, f"{prefix}_cnt", np.bincount(syn.dst, minlength=cfg.units)),
                c_array(idx, f"{prefix}_src", syn.src),
            ]
        )
        arrays.append(c_array("int32_t", f"{prefix}_par", _syn_params(syn, f, us, acc), per_line=4))
    if unroll != "none":
        loops = _unrolled(fm, name, pieces["update"])
        if unroll == "substeps":
            loops["locals"] = Template(LOCALS_LOOP).substitute(idx=idx)
            loops["sensory"] = SENSORY_LOOP
    else:
        loops = {
            "locals": Template(LOCALS_LOOP).substitute(idx=idx),
            "sensory": SENSORY_LOOP,
            "substep": SUBSTEP.substitute(name=name, idx=idx, update=pieces["update"]),
        }
    what = f"{name}: LTC policy, fixed point {info['format']}{solver_note(cfg.solver)}"
    up = name.upper()
    norm_decl, norm_def = normalize_c(ch, name, fixed_frac=f, input_range=input_range)
    decl = norm_decl + (
        f"\n/* {name}_step saturates each x[i] to +-{input_range:g} (the Q format's input range). */\n"
        f"\n/* Native fixed-point step: Q{31 - f}.{f} int32 values (x, state, elapsed, y). */\n"
        f"#define {up}_Q_FRAC_BITS {f}\n"
        f"void {name}_step_q(const int32_t *xq, int32_t *sq, int32_t elapsed_q, int32_t *yq);\n"
    )
    step_doc = Template(LTC_STEP_DOC).substitute(UP=up)
    header = render_header(sha, what, up, name, cfg, ch, decl, step_doc, stdint=True)
    source = SOURCE.substitute(
        banner=banner(sha, what),
        name=name,
        UP=up,
        units=cfg.units,
        n_in=cfg.n_inputs,
        n_out=cfg.n_outputs,
        unfolds=cfg.ode_unfolds,
        buffers=(
            "    int32_t va[U], vb[U], *vn;\n    const int32_t *v;\n"
            if cfg.ode_unfolds > 1
            else "    int32_t va[U];\n    const int32_t *v;\n"
        ),
        substeps=Template(SUBSTEPS if cfg.ode_unfolds > 1 else SUBSTEP_ONE).substitute(name=name),
        frac=f,
        normalize=norm_def,
        arrays="\n".join(arrays),
        us=us,
        uk=UK,
        lut_last=LUT_N - 1,
        ubits=int(math.log2(LUT_N)) + UK,
        acc_loss=2 - acc,
        qd_big=int(cfg.solver == "fused_semi_implicit_euler" and _divisor_big(fm, gleak_q, lut)),
        idx=idx,
        **loops,
        x_limit=f"{input_range:.1f}f",
        x_limit_q=_to_q32(float(f"{input_range:.1f}"), f),
        qhalf=c_float(2.0 ** -(f + 1)),
        # straight-line conversions in the float wrapper where the synapses are unrolled too
        unroll_io="" if unroll == "none" else "    QUNROLL\n",
        e_min=f"{min_elapsed!r}f",
        e_max=_e_max_literal(cfg.solver, max_elapsed),
        **pieces,
    )
    return header, source, info
