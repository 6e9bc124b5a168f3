"""The C fast exp/sigmoid: the numba kernel's ``exp32`` (edgeliquid/runtime/fastexp.py), in C.

Range reduction ``x = n ln2 + r`` (|r| <= ln2/2) with ``n`` rounded by the 1.5·2^23 shifter,
ln2 split in two (Cody-Waite) so ``r`` is exact, ``exp(r)`` by its degree-7 Taylor polynomial
(truncation r^8/8! <= 5.6e-9 relative), ``2^n`` written into the exponent bits. The same
float32 operations in the same order as the numba kernel; the numba kernel fuses them into
multiply-adds (``contract``) and C under -std=c99 does not, so the two can differ in the last
bit, each <= 2 ulp from exp over the clamped range [-87.3, 88.3] (tests/test_fastexp.py,
tests/test_fastexp_c.py). Branch-free
apart from the clamp; no libm. Compile without -ffast-math (reassociation would fold the
shifter's ``(t + s) - s`` to ``t``); FMA contraction is harmless (the products it fuses are exact
or only gain precision).
"""

from __future__ import annotations

from string import Template

import numpy as np

from edgeliquid.runtime import fastexp as F

from .cgen import c_float

_CONSTS = {
    "LO": c_float(F._LO),
    "HI": c_float(F._HI),
    "LOG2E": c_float(F._LOG2E),
    "SHIFTER": c_float(F._SHIFTER),
    "SHIFTER_BITS": f"0x{int(F._SHIFTER_BITS):08X}",
    "LN2_HI": c_float(F._LN2_HI),
    "LN2_LO": c_float(F._LN2_LO),
    **{f"C{k}": c_float(c) for k, c in enumerate(F._C)},
}

_TEMPLATE = """/* exp of a float32: numba's exp32 (edgeliquid/runtime/fastexp.py), <= 2 ulp on [-87.3, 88.3]
 * (clamped there), no libm; docs/firmware.md */
static float $${name}_exp(float x)
{
    union { float f; uint32_t u; } t, s;
    float n, r, p;
    x = x < ${LO} ? ${LO} : x;
    x = x > ${HI} ? ${HI} : x;
    t.f = x * ${LOG2E} + ${SHIFTER};          /* adding 1.5*2^23 rounds to an integer */
    n = t.f - ${SHIFTER};
    r = (x - n * ${LN2_HI}) - n * ${LN2_LO};  /* Cody-Waite: exact */
    p = ${C7};
    p = p * r + ${C6};
    p = p * r + ${C5};
    p = p * r + ${C4};
    p = p * r + ${C3};
    p = p * r + ${C2};
    p = p * r + ${C1};
    p = p * r + ${C0};
    s.u = (uint32_t)((int32_t)t.u - (int32_t)${SHIFTER_BITS} + 127) << 23;  /* 2^n */
    return p * s.f;
}

static float $${name}_sigmoid(float x)
{
    return 1.0f / (1.0f + $${name}_exp(-x));
}
"""

#: ``Template`` with ``${name}``, like float_c's sigmoid templates (the constants are filled in).
SIGMOID_FAST = Template(Template(_TEMPLATE).substitute(_CONSTS))


# ------------------------------------------------------------------ exp2 for the LTC synapse loop

#: 2^t = 2^n 2^(j/1024) 2^r: n, j from round(1024 t) (the 1.5·2^13 shifter), |r| <= 2^-11 exact,
#: c0 2^(j/1024) from a 1024-entry table (<= 0.5 ulp each), 2^r / c0 = 1 + C1 r: the minimax line
#: for the relative error on the interval (2.9e-8), its c0 folded into the table; one fmaf, so every
#: platform gives the same bits (and the M4 one vfma). A 64-entry table needed the degree-2
#: polynomial: 2 more instructions per synapse (docs/firmware.md). 2^n goes into an exponent field
#: clamped to [0, 255]: results below 2^-126 flush to 0, above 2^128 become inf, so 1 / (1 + 2^t)
#: saturates exactly to 1 or 0. Valid for |t| < 2^12 (the shifter's range): callers bound t
#: (EXP2_T_LIMIT). ``_exp2_n`` skips the range check (|t| <= EXP2_N_LIMIT): 2^n is added to the
#: table entry's exponent bits.
EXP2_BITS = 10
EXP2_SHIFTER = 1.5 * 2.0 ** (23 - EXP2_BITS)
EXP2_T_LIMIT = 4096.0
EXP2_N_LIMIT = 125.0
EXP2_C0 = 1.0000000286372303  # minimax (relative) line for 2^r on |r| <= 2^-11: c0 + c1 r
EXP2_C1 = 0.6931471540935251  # c1 / c0
LOG2E = 1.4426950408889634


def exp2_bits() -> list[int]:
    """The float32 bits of c0 2^(j/1024), j = 0..1023."""
    n = 2**EXP2_BITS
    return [int(np.float32(EXP2_C0 * 2.0 ** (j / n)).view(np.uint32)) for j in range(n)]


def exp2_table() -> list[int]:
    """The C table: :func:`exp2_bits` minus j 2^13 (mod 2^32), so that entry j plus the shifter's
    bits << 13 is c0 2^(j/1024) with n added to its exponent: h << 13 = (h >> 10) << 23 + j << 13
    (mod 2^32), one shifted add on the M4 instead of a shift and an add."""
    shift = 23 - EXP2_BITS
    return [(b - (j << shift)) % 2**32 for j, b in enumerate(exp2_bits())]


_EXP2_TEMPLATE = """#ifdef __GNUC__
#define $${UP}_INLINE static inline __attribute__((always_inline))
#else
#define $${UP}_INLINE static inline
#endif

/* float32 bits of c0 2^(j/1024), minus j << ${SHIFT} (see NAME_exp2_n) */
$table
/* e clamped to [0, 255] (one usat on the M4) */
#if defined(__ARM_FEATURE_SAT) && defined(__GNUC__)
#define $${UP}_USAT8(e) ((uint32_t)__builtin_arm_usat((e), 8))
#else
#define $${UP}_USAT8(e) ((uint32_t)((e) < 0 ? 0 : ((e) > 255 ? 255 : (e))))
#endif

/* 2^t for |t| <= 125 (no range check: callers bound t), <= 2 ulp (1.1 measured). 2^n is added to
 * the table entry's exponent; firmware_export/fastexp_c.py, docs/firmware.md */
$${UP}_INLINE float $${name}_exp2_n(float t)
{
    union { float f; uint32_t u; } h, m;
    float r;
    h.f = t + ${SHIFTER};                  /* round(1024 t) = n 1024 + j in the low mantissa bits */
    r = t - (h.f - ${SHIFTER});            /* exact, |r| <= 2^-11 */
    /* the entry plus h << ${SHIFT}: the table value with n = (h >> ${BITS}) mod 2^9 added to its
     * exponent (the shifter's bits drop out) */
    m.u = $${name}_exp2_tab[h.u & ${MASK}u] + (h.u << ${SHIFT});
    return fmaf(m.f, r * ${C1}, m.f);
}

/* 2^t for |t| < 2^12 (callers bound t): as above for t in [-126, 127.4]; 0 below, inf above */
$${UP}_INLINE float $${name}_exp2(float t)
{
    union { float f; uint32_t u; } h, m, s;
    float r;
    int32_t e;
    uint32_t j;
    h.f = t + ${SHIFTER};
    r = t - (h.f - ${SHIFTER});
    e = (int32_t)(h.u - ${BIAS_BITS}u) >> ${BITS};   /* n + 127 */
    s.u = $${UP}_USAT8(e) << 23;  /* 2^n, 0 or inf outside the range */
    j = h.u & ${MASK}u;
    m.u = $${name}_exp2_tab[j] + (j << ${SHIFT});
    return fmaf(m.f, r * ${C1}, m.f) * s.f;
}

/* |x| clamped to lim (NaN passes through) */
$${UP}_INLINE float $${name}_clampf(float x, float lim)
{
    return x < -lim ? -lim : (x > lim ? lim : x);
}
"""


def exp2_c(name: str) -> str:
    """The C of ``NAME_exp2`` (table, inline macro ``NAME_INLINE``, ``NAME_clampf``); needs math.h,
    stdint.h."""
    from .cgen import c_array

    consts = {
        "SHIFTER": c_float(EXP2_SHIFTER),
        "BIAS_BITS": f"0x{int(np.float32(EXP2_SHIFTER).view(np.uint32)) - (127 << EXP2_BITS):08X}",
        "BITS": str(EXP2_BITS),
        "MASK": str(2**EXP2_BITS - 1),
        "SHIFT": str(23 - EXP2_BITS),
        "C1": c_float(EXP2_C1),
        "table": c_array("uint32_t", "${name}_exp2_tab", exp2_table(), per_line=8),
    }
    return Template(Template(_EXP2_TEMPLATE).substitute(consts)).substitute(name=name, UP=name.upper())
