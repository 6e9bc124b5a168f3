"""The C fast exp/sigmoid: the numba kernel's ``exp32`` (edgeliquid/runtime/fastexp.py), in C.

Range reduction ``x = n ln2 + r`` (|r| <= ln2/2) with ``n`` rounded by the 1.5·2^23 shifter,
ln2 split in two (Cody-Waite) so ``r`` is exact, ``exp(r)`` by its degree-7 Taylor polynomial
(truncation r^8/8! <= 5.6e-9 relative), ``2^n`` written into the exponent bits. The same
float32 operations in the same order as the numba kernel, so the C gives the numba kernel's
bits (<= 2 ulp from exp over the clamped range [-87.3, 88.3], tests/test_fastexp.py). Branch-free
apart from the clamp; no libm. Compile without -ffast-math (reassociation would fold the
shifter's ``(t + s) - s`` to ``t``); FMA contraction is harmless (the products it fuses are exact
or only gain precision).
"""

from __future__ import annotations

from string import Template

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
