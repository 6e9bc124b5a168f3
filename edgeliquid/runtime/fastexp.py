"""A vectorisable exp for float32 numba kernels, and the logistic built on it.

``math.exp`` inside a numba loop is a libm call per element, which LLVM cannot
vectorise; at FullyConnected-256 size that made the whole kernel slower than
onnxruntime. ``exp32`` is branch-free arithmetic that LLVM turns into SIMD:

* range reduction ``x = n ln2 + r``, ``|r| <= ln2/2``, with ``n`` rounded by the
  1.5·2^23 shifter trick and ln2 split in two (Cody-Waite) so ``r`` is exact;
* ``exp(r)`` by its degree-7 Taylor polynomial: truncation error
  ``r^8/8! <= 5.6e-9`` relative (0.05 ulp); Horner rounding adds about 1 ulp;
* ``2^n`` built directly in the exponent bits.

Measured error over the whole clamped range is at most 2 ulp (``tests/test_fastexp.py``
asserts it). Inputs are clamped to [-87.3, 88.3] so ``2^n`` stays normal; exp
saturates there instead of returning 0 or inf, which the logistic does not notice.

This module must not be compiled with full ``fastmath``: reassociation would fold the
shifter's ``(t + s) - s`` to ``t``. It allows ``contract`` only: the Horner steps and
the reduction become fused multiply-adds, which halves the dependency chain the SIMD
loops wait on (the LTC synapse loop: ~1.5x faster) and rounds once per step instead of
twice (max error 1.19 -> 0.91 ulp). Callers may use fastmath; LLVM keeps the
per-instruction flags when it inlines, but numba's own ``inline="always"`` would
recompile the body under the caller's flags, so neither function uses it.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload


@intrinsic
def _f32_bits(typingctx, x):
    """float32 -> its int32 bit pattern (a register bitcast, no memory)."""
    if not (isinstance(x, types.Float) and x.bitwidth == 32):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, x):
    """Integer holding a 32-bit pattern -> float32 (numba widens int32 sums to int64)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if x.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(x), codegen


_LO = np.float32(-87.3)
_HI = np.float32(88.3)
_LOG2E = np.float32(1.4426950408889634)
_SHIFTER = np.float32(12582912.0)  # 1.5 * 2**23: adding it rounds to an integer
_SHIFTER_BITS = np.int32(0x4B400000)
_LN2_HI = np.float32(0.693359375)  # 8 significant bits: n * _LN2_HI is exact
_LN2_LO = np.float32(-2.12194440e-4)
_C = [np.float32(1.0 / math.factorial(k)) for k in range(8)]
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7 = _C
_ONE32 = np.float32(1.0)
_BIAS = np.int32(127)
_SHIFT = np.int32(23)


@njit(cache=True, fastmath={"contract"})
def exp32(x):
    """exp of a float32, vectorisable, <= 2 ulp (see module docstring)."""
    x = min(max(x, _LO), _HI)
    t = x * _LOG2E + _SHIFTER
    n_f = t - _SHIFTER
    n = _f32_bits(t) - _SHIFTER_BITS
    r = (x - n_f * _LN2_HI) - n_f * _LN2_LO
    p = _C7
    p = p * r + _C6
    p = p * r + _C5
    p = p * r + _C4
    p = p * r + _C3
    p = p * r + _C2
    p = p * r + _C1
    p = p * r + _C0
    return p * _bits_f32((n + _BIAS) << _SHIFT)


def logistic(x):
    """1 / (1 + exp(-x)); exp32 for float32, libm exp otherwise."""
    raise NotImplementedError("only callable from numba kernels")


@overload(logistic, jit_options={"fastmath": False})
def _logistic_impl(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:

        def impl32(x):
            return _ONE32 / (_ONE32 + exp32(-x))

        return impl32

    def impl64(x):
        return 1.0 / (1.0 + math.exp(-x))

    return impl64


@njit(cache=True)
def exp32_array(x, out):
    """Elementwise :func:`exp32` (for tests and the error-bound check)."""
    for i in range(x.shape[0]):
        out[i] = exp32(x[i])
