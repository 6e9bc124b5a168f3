"""numba kernels of the CfC step (closed form: no ODE solver), the ``cpu`` backend for CfC.

Same contract as :mod:`edgeliquid.runtime.kernels`: pure functions over the flat arrays of
:mod:`edgeliquid.runtime.cfc_packing` (``x``, ``elapsed``, ``fp``, ``ip``, ``work``), no
raising, every input validated before anything is written, the state committed only
when the whole new state is finite; statuses are ``kernels.STATUS_*``.

The backbone and the heads are dense matrix-vector products in column order
(``out += W[:, i] * z[i]``), contiguous over outputs so LLVM vectorises them; sparse
(wired) sub-cells gather their existing synapses first and scatter-add by destination,
as the LTC kernel does. :func:`step_batch` and :func:`run_batch` run non-mixed models
:data:`CHUNK` instances at a time with the instances innermost (per-thread scratch in the chunk
layout of ``cfc_packing``, ``C_*``: each sub-cell's [input, h] contiguous, read in place; run_batch
keeps the state there across its steps): the products become matrix-matrix products and every
activation runs across SIMD lanes, as the LTC batch kernel does; mixed-memory models step
instance by instance. Activations are the exact functions (gelu with erf, not its tanh
approximation); in float32
the logistic and tanh go through :func:`edgeliquid.runtime.fastexp.exp32` (<= 2 ulp, SIMD;
libm tanhf was 12 ns a call, most of a step), float64 uses libm.
"""

from __future__ import annotations

import math

import numpy as np
from numba import get_thread_id, njit, prange, types
from numba.extending import overload

from .cfc_packing import (
    ACT,
    BB_B,
    BB_IN,
    BB_OUT,
    BB_REC,
    BB_TAB,
    BB_W,
    C_B0,
    C_B1,
    C_HEADS,
    C_OK,
    C_ROWS,
    C_TS,
    C_X,
    C_Y,
    CELL_TAB,
    FC_B,
    FC_W,
    KERAS,
    L_A,
    L_B,
    L_CH,
    L_CHN,
    L_DST,
    L_HDST,
    L_HEADIN,
    L_HOFF,
    L_IN,
    L_N,
    L_NH,
    L_NNZ,
    L_REC,
    L_SB,
    L_SPARSE,
    L_SRC,
    L_SW,
    L_TAU,
    L_W,
    LSTM_BI,
    LSTM_WI,
    LSTM_WR,
    MIXED,
    MM_INPUT,
    MODE,
    MOTOR_OFF,
    MOTORS,
    N_BB,
    N_CELLS,
    N_IN,
    N_OUT,
    N_STATE,
    PROJ,
    UNITS,
    W_ACT,
    W_B0,
    W_B1,
    W_C,
    W_H,
    W_HEADS,
    W_HNEW,
    W_LZ,
    W_STATE,
    W_Y,
    W_Z,
)
from .fastexp import exp32, logistic
from .kernels import _OPTS, STATUS_BAD_OUTPUT, STATUS_OK, _check, map_inputs, map_outputs

MODE_DEFAULT, MODE_NO_GATE, MODE_PURE = 0, 1, 2
# index in model.cfc.ACTIVATIONS
ACT_LECUN, ACT_SILU, ACT_RELU, ACT_TANH, ACT_GELU = 0, 1, 2, 3, 4


def _exp(x):
    """exp; exp32 for float32 (vectorisable), libm otherwise."""
    raise NotImplementedError("only callable from numba kernels")


@overload(_exp, jit_options={"fastmath": False})
def _exp_impl(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: exp32(x)
    return lambda x: math.exp(x)


def _tanh(x):
    """tanh; for float32 ``2 logistic(2x) - 1`` on exp32 (vectorises; abs. error ~1e-7), else libm."""
    raise NotImplementedError("only callable from numba kernels")


@overload(_tanh, jit_options={"fastmath": False})
def _tanh_impl(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        one, two = np.float32(1.0), np.float32(2.0)
        return lambda x: two / (one + exp32(-two * x)) - one
    return lambda x: math.tanh(x)


@njit(inline="always", **_OPTS)
def _matvec(fp, woff, boff, rows, cols, z, out):
    """out[:rows] = W z + b with W stored [cols, rows] at fp[woff:], b at fp[boff:].

    Four columns per pass over ``out``: a quarter of the loads and stores of out (the
    product is load-bound; measured 15-25% faster than one column per pass).
    """
    for r in range(rows):
        out[r] = fp[boff + r]
    i = 0
    while i + 4 <= cols:
        z0, z1, z2, z3 = z[i], z[i + 1], z[i + 2], z[i + 3]
        c0 = fp[woff + i * rows : woff + (i + 1) * rows]
        c1 = fp[woff + (i + 1) * rows : woff + (i + 2) * rows]
        c2 = fp[woff + (i + 2) * rows : woff + (i + 3) * rows]
        c3 = fp[woff + (i + 3) * rows : woff + (i + 4) * rows]
        for r in range(rows):
            out[r] += (c0[r] * z0 + c1[r] * z1) + (c2[r] * z2 + c3[r] * z3)
        i += 4
    while i < cols:
        zi = z[i]
        col = fp[woff + i * rows : woff + (i + 1) * rows]
        for r in range(rows):
            out[r] += col[r] * zi
        i += 1


@njit(inline="always", **_OPTS)
def _activate(a, n, act):
    """The backbone activation in place on a[:n] (ncps/torch definitions, exact)."""
    one = a.dtype.type(1.0)
    if act == ACT_LECUN:
        s, k = a.dtype.type(1.7159), a.dtype.type(0.666)
        for i in range(n):
            a[i] = s * _tanh(k * a[i])
    elif act == ACT_TANH:
        for i in range(n):
            a[i] = _tanh(a[i])
    elif act == ACT_RELU:
        zero = a.dtype.type(0.0)
        for i in range(n):
            a[i] = max(a[i], zero)
    elif act == ACT_SILU:
        for i in range(n):
            a[i] = a[i] * logistic(a[i])
    else:
        half, r2 = a.dtype.type(0.5), a.dtype.type(1.0 / math.sqrt(2.0))
        for i in range(n):
            a[i] = half * a[i] * (one + math.erf(a[i] * r2))


@njit(inline="always", **_OPTS)
def _lstm(x, fp, ip, w, hdst):
    """ncps LSTMCell: new h -> w[hdst:], new c -> w[W_C]; the state row is only read.

    ``hdst`` is W_H (ncps.torch: the output is the cells' state) or W_LZ (ncps.keras: the
    output is the first cell's input; z[j] is dead once h[j] is written)."""
    u = ip[UNITS]
    n_in = ip[N_IN]
    wi, bi, wr = ip[LSTM_WI], ip[LSTM_BI], ip[LSTM_WR]
    z = ip[W_LZ]
    st = ip[W_STATE]
    for r in range(4 * u):
        a = fp.dtype.type(0.0)
        for i in range(n_in):
            a += fp[wi + r * n_in + i] * x[i]
        b = fp.dtype.type(0.0)
        for i in range(u):
            b += fp[wr + r * u + i] * w[st + i]
        w[z + r] = (a + fp[bi + r]) + b
    one = fp.dtype.type(1.0)
    for j in range(u):
        c = w[st + u + j] * logistic(w[z + 2 * u + j] + one) + math.tanh(w[z + j]) * logistic(w[z + u + j])
        w[ip[W_C] + j] = c
        w[hdst + j] = math.tanh(c) * logistic(w[z + 3 * u + j])


@njit(inline="always", **_OPTS)
def _sparse_heads(fp, ip, rec, z, n, w, heads):
    """ff1 (and ff2) from existing synapses only: gather, multiply, scatter-add by destination."""
    nnz = ip[rec + L_NNZ]
    nm = 1 if ip[MODE] == MODE_PURE else 2
    sw, sb = ip[rec + L_SW], ip[rec + L_SB]
    src = ip[ip[rec + L_SRC] : ip[rec + L_SRC] + nnz]
    dst = ip[ip[rec + L_DST] : ip[rec + L_DST] + nnz]
    act = w[ip[W_ACT] : ip[W_ACT] + nnz]
    for k in range(nnz):
        act[k] = z[src[k]]
    for m in range(nm):
        hm = heads[m * n : (m + 1) * n]
        for j in range(n):
            hm[j] = fp[sb + m * n + j]
        wm = fp[sw + m * nnz : sw + (m + 1) * nnz]
        for k in range(nnz):
            hm[dst[k]] += wm[k] * act[k]


@njit(inline="always", **_OPTS)
def _subcell(fp, ip, c, inp, ts, w):
    """ncps CfCCell.forward for sub-cell c: new h -> w[W_HNEW + hoff:]. ``inp`` has L_IN values."""
    rec = ip[CELL_TAB] + c * L_REC
    n_in, n, hoff = ip[rec + L_IN], ip[rec + L_N], ip[rec + L_HOFF]
    z = w[ip[W_Z] : ip[W_Z] + n_in + n]
    for i in range(n_in):
        z[i] = inp[i]
    h = ip[W_H] + hoff
    for j in range(n):
        z[n_in + j] = w[h + j]
    nbb = ip[N_BB]
    hin, nin = ip[W_Z], n_in + n  # where the heads' input lives in w, and its length
    for k in range(nbb):
        b = ip[BB_TAB] + k * BB_REC
        dst = ip[W_B0] if k % 2 == 0 else ip[W_B1]
        rows = ip[b + BB_OUT]
        out = w[dst : dst + rows]
        _matvec(fp, ip[b + BB_W], ip[b + BB_B], rows, ip[b + BB_IN], w[hin : hin + nin], out)
        _activate(out, rows, ip[ACT])
        hin, nin = dst, rows
    head_in = w[hin : hin + nin]
    heads = w[ip[W_HEADS] : ip[W_HEADS] + 4 * n]
    nh = ip[rec + L_NH]
    if nh > 0:
        hd = ip[rec + L_HDST]
        _matvec(fp, ip[rec + L_W], ip[rec + L_B], nh * n, ip[rec + L_HEADIN], head_in, heads[hd:])
    if ip[rec + L_SPARSE]:
        _sparse_heads(fp, ip, rec, head_in, n, w, heads)
    hn = w[ip[W_HNEW] + hoff : ip[W_HNEW] + hoff + n]
    mode = ip[MODE]
    if mode == MODE_PURE:
        tau, a = ip[rec + L_TAU], ip[rec + L_A]
        for j in range(n):
            f = heads[j]
            hn[j] = -fp[a + j] * _exp(-ts * (fp[tau + j] + abs(f))) * f + fp[a + j]
        return
    keras = ip[KERAS] != 0  # ncps.keras: no tanh on the heads (time_a is packed negated)
    for j in range(n):
        g = logistic(heads[2 * n + j] * ts + heads[3 * n + j])
        f1 = heads[j] if keras else _tanh(heads[j])
        f2 = heads[n + j] if keras else _tanh(heads[n + j])
        if mode == MODE_NO_GATE:
            hn[j] = f1 + g * f2
        else:
            hn[j] = f1 * (fp.dtype.type(1.0) - g) + g * f2


@njit(inline="always", **_OPTS)
def _cell(x, elapsed, fp, ip, w):
    """One validated step for one instance. Returns a status."""
    u = ip[UNITS]
    st = ip[W_STATE]
    mm_input = ip[MM_INPUT] != 0
    if ip[MIXED]:
        _lstm(x, fp, ip, w, ip[W_LZ] if mm_input else ip[W_H])
    if not ip[MIXED] or mm_input:
        for j in range(u):
            w[ip[W_H] + j] = w[st + j]
    ts = fp.dtype.type(elapsed)
    inp = x
    if mm_input:  # ncps.keras coupling: the LSTM output is the first cell's input
        inp = w[ip[W_LZ] : ip[W_LZ] + u]
    for c in range(ip[N_CELLS]):
        _subcell(fp, ip, c, inp, ts, w)
        rec = ip[CELL_TAB] + c * L_REC
        off = ip[W_HNEW] + ip[rec + L_HOFF]
        inp = w[off : off + ip[rec + L_N]]
    hn = w[ip[W_HNEW] : ip[W_HNEW] + u]
    for j in range(u):
        if not math.isfinite(hn[j]):
            return STATUS_BAD_OUTPUT
    if ip[MIXED]:
        for j in range(u):
            if not math.isfinite(w[ip[W_C] + j]):
                return STATUS_BAD_OUTPUT
    for j in range(u):
        w[st + j] = hn[j]
    if ip[MIXED]:
        for j in range(u):
            w[st + u + j] = w[ip[W_C] + j]
    out = hn[ip[MOTOR_OFF] :]
    y = w[ip[W_Y] : ip[W_Y] + ip[N_OUT]]
    if ip[PROJ]:
        _matvec(fp, ip[FC_W], ip[FC_B], ip[PROJ], ip[MOTORS], out, y)
    else:
        for k in range(ip[MOTORS]):
            y[k] = out[k]
    return STATUS_OK


@njit(**_OPTS)  # not inlined: step, run and the batch kernels share one compiled cell (compile time)
def _cell_call(x, elapsed, fp, ip, w):
    return _cell(x, elapsed, fp, ip, w)


@njit(**_OPTS)
def step(x, elapsed, fp, ip, work):
    """One validated step of one instance; y ends up in ``work[ip[W_Y]:]``."""
    status = _check(x, elapsed)
    if status != STATUS_OK:
        return status
    return _cell_call(x, elapsed, fp, ip, work)


@njit(**_OPTS)
def run(xs, elapsed, fp, ip, work, ys):
    """A sequence [T, I] -> ys [T, n_out] for one instance; all inputs validated first.

    Returns (status, t) with t the first offending step (or -1).
    """
    for t in range(xs.shape[0]):
        status = _check(xs[t], elapsed[t])
        if status != STATUS_OK:
            return status, t
    m = ip[N_OUT]
    y = ip[W_Y]
    for t in range(xs.shape[0]):
        status = _cell_call(xs[t], elapsed[t], fp, ip, work)
        if status != STATUS_OK:
            return status, t
        for k in range(m):
            ys[t, k] = work[y + k]
    return STATUS_OK, -1


#: Instances per SIMD chunk of :func:`step_batch` and :func:`run_batch` (lanes run across instances).
CHUNK = 64


def batch_scratch_size(work_size: int) -> int:
    """Floats of scratch one thread needs for :func:`step_batch` / :func:`run_batch`: up to
    ``work_size + 1`` rows of CHUNK lanes (the chunk layout, ``ip[C_ROWS]`` rows, never has more)."""
    return (work_size + 1) * CHUNK


@njit(inline="always", **_OPTS)
def _chunk_matmul(fp, woff, boff, rows, cols, s, zr, outr, nb):
    """s[outr + r, :nb] = b[r] + sum_i W[i, r] s[zr + i, :nb], W stored [cols, rows] at fp[woff:].

    A matrix-matrix product with the instances innermost: each weight is one broadcast,
    the lanes are contiguous (no horizontal sums, no gathers). Two output rows by four
    inputs per pass: each input row loaded feeds two outputs and each output row is
    loaded and stored once per four inputs (2-3x one row by one input at 128 x 128).
    """
    r = 0
    while r + 2 <= rows:
        o, p = s[outr + r], s[outr + r + 1]
        b0, b1 = fp[boff + r], fp[boff + r + 1]
        for lane in range(nb):
            o[lane] = b0
            p[lane] = b1
        i = 0
        while i + 4 <= cols:
            k = woff + i * rows + r
            w0, w1, w2, w3 = fp[k], fp[k + rows], fp[k + 2 * rows], fp[k + 3 * rows]
            v0, v1, v2, v3 = fp[k + 1], fp[k + rows + 1], fp[k + 2 * rows + 1], fp[k + 3 * rows + 1]
            z0, z1, z2, z3 = s[zr + i], s[zr + i + 1], s[zr + i + 2], s[zr + i + 3]
            for lane in range(nb):
                a0, a1, a2, a3 = z0[lane], z1[lane], z2[lane], z3[lane]
                o[lane] += (w0 * a0 + w1 * a1) + (w2 * a2 + w3 * a3)
                p[lane] += (v0 * a0 + v1 * a1) + (v2 * a2 + v3 * a3)
            i += 4
        while i < cols:
            k = woff + i * rows + r
            w0, v0 = fp[k], fp[k + 1]
            z0 = s[zr + i]
            for lane in range(nb):
                o[lane] += w0 * z0[lane]
                p[lane] += v0 * z0[lane]
            i += 1
        r += 2
    if r < rows:  # odd row count: the last row alone
        o = s[outr + r]
        b0 = fp[boff + r]
        for lane in range(nb):
            o[lane] = b0
        for i in range(cols):
            w0 = fp[woff + i * rows + r]
            z0 = s[zr + i]
            for lane in range(nb):
                o[lane] += w0 * z0[lane]


@njit(inline="always", **_OPTS)
def _chunk_subcell(fp, ip, c, s, nb):
    """:func:`_subcell` for nb lanes at once, in the chunk layout (``C_*``, ``L_CH``/``L_CHN``).

    The heads' input [input, h] is rows ``L_CH - n_in`` onwards, in place: the layout puts
    x (or the previous sub-cell's new h) right before this sub-cell's h, so nothing is copied.
    """
    rec = ip[CELL_TAB] + c * L_REC
    n_in, n = ip[rec + L_IN], ip[rec + L_N]
    hin = ip[rec + L_CH] - n_in
    for k in range(ip[N_BB]):
        b = ip[BB_TAB] + k * BB_REC
        dst = ip[C_B0] if k % 2 == 0 else ip[C_B1]
        rows = ip[b + BB_OUT]
        _chunk_matmul(fp, ip[b + BB_W], ip[b + BB_B], rows, ip[b + BB_IN], s, hin, dst, nb)
        for r in range(rows):
            _activate(s[dst + r], nb, ip[ACT])
        hin = dst
    hr = ip[C_HEADS]
    nh = ip[rec + L_NH]
    if nh > 0:
        hd = hr + ip[rec + L_HDST]
        _chunk_matmul(fp, ip[rec + L_W], ip[rec + L_B], nh * n, ip[rec + L_HEADIN], s, hin, hd, nb)
    mode = ip[MODE]
    if ip[rec + L_SPARSE]:
        nnz = ip[rec + L_NNZ]
        sw, sb = ip[rec + L_SW], ip[rec + L_SB]
        src = ip[ip[rec + L_SRC] : ip[rec + L_SRC] + nnz]
        dst = ip[ip[rec + L_DST] : ip[rec + L_DST] + nnz]
        for m in range(1 if mode == MODE_PURE else 2):
            for j in range(n):
                bias = fp[sb + m * n + j]
                for lane in range(nb):
                    s[hr + m * n + j, lane] = bias
            for k in range(nnz):
                wk = fp[sw + m * nnz + k]
                zk = s[hin + src[k]]
                o = s[hr + m * n + dst[k]]
                for lane in range(nb):
                    o[lane] += wk * zk[lane]
    ts = s[ip[C_TS]]
    hn = ip[rec + L_CHN]
    one = fp.dtype.type(1.0)
    if mode == MODE_PURE:
        tau, a = ip[rec + L_TAU], ip[rec + L_A]
        for j in range(n):
            f, o = s[hr + j], s[hn + j]
            tj, aj = fp[tau + j], fp[a + j]
            for lane in range(nb):
                o[lane] = -aj * _exp(-ts[lane] * (tj + abs(f[lane]))) * f[lane] + aj
        return
    if ip[KERAS]:  # ncps.keras: no tanh on the heads (time_a is packed negated)
        for j in range(n):
            f1, f2, ta, tb, o = s[hr + j], s[hr + n + j], s[hr + 2 * n + j], s[hr + 3 * n + j], s[hn + j]
            if mode == MODE_NO_GATE:
                for lane in range(nb):
                    o[lane] = f1[lane] + logistic(ta[lane] * ts[lane] + tb[lane]) * f2[lane]
            else:
                for lane in range(nb):
                    g = logistic(ta[lane] * ts[lane] + tb[lane])
                    o[lane] = f1[lane] * (one - g) + g * f2[lane]
        return
    for j in range(n):
        f1, f2, ta, tb, o = s[hr + j], s[hr + n + j], s[hr + 2 * n + j], s[hr + 3 * n + j], s[hn + j]
        if mode == MODE_NO_GATE:
            for lane in range(nb):
                g = logistic(ta[lane] * ts[lane] + tb[lane])
                o[lane] = _tanh(f1[lane]) + g * _tanh(f2[lane])
        else:
            for lane in range(nb):
                g = logistic(ta[lane] * ts[lane] + tb[lane])
                o[lane] = _tanh(f1[lane]) * (one - g) + g * _tanh(f2[lane])


@njit(inline="always", **_OPTS)
def _chunk_load_state(ip, work, s, b0, nb):
    """Each lane's state (work row ``b0 + lane``) into the sub-cells' h rows.

    Lane-outer: the strided side is the store into s. (A loop whose strided side is a load
    vectorises to AVX2 gathers: the per-lane commit written that way took 8 µs of a 26 µs chunk.)
    """
    st = ip[W_STATE]
    for lane in range(nb):
        row = work[b0 + lane]
        for c in range(ip[N_CELLS]):
            rec = ip[CELL_TAB] + c * L_REC
            hr, off = ip[rec + L_CH], st + ip[rec + L_HOFF]
            for j in range(ip[rec + L_N]):
                s[hr + j, lane] = row[off + j]


@njit(inline="always", **_OPTS)
def _chunk_load_inputs(x, elapsed, ip, s, b0, nb):
    """x[b0 + lane] and its elapsed into the x rows and the elapsed row."""
    xr, tr = ip[C_X], ip[C_TS]
    for lane in range(nb):
        for i in range(ip[N_IN]):
            s[xr + i, lane] = x[b0 + lane, i]
        s[tr, lane] = s.dtype.type(elapsed[b0 + lane])


@njit(**_OPTS)  # not inlined: step_batch and run_batch share one compiled body (compile time)
def _chunk_compute(fp, ip, s):
    """Every sub-cell (and the projection) on all CHUNK lanes; the finite flag of each lane's
    new state -> row C_OK (1 or 0). Returns the first row of y.

    The compute runs over all CHUNK lanes (a constant trip count vectorises without a
    remainder loop); lanes past a partial chunk hold stale values and are never committed.
    """
    for c in range(ip[N_CELLS]):
        _chunk_subcell(fp, ip, c, s, CHUNK)
    last = ip[CELL_TAB] + (ip[N_CELLS] - 1) * L_REC
    yr = ip[last + L_CHN]  # the output is the last sub-cell's new h (the motor layer)
    if ip[PROJ]:
        _chunk_matmul(fp, ip[FC_W], ip[FC_B], ip[PROJ], ip[MOTORS], s, yr, ip[C_Y], CHUNK)
        yr = ip[C_Y]
    ok = s[ip[C_OK]]
    one, zero = s.dtype.type(1.0), s.dtype.type(0.0)
    for lane in range(CHUNK):
        ok[lane] = one
    for c in range(ip[N_CELLS]):
        rec = ip[CELL_TAB] + c * L_REC
        for j in range(ip[rec + L_N]):
            h = s[ip[rec + L_CHN] + j]
            for lane in range(CHUNK):
                ok[lane] = ok[lane] if math.isfinite(h[lane]) else zero
    return yr


@njit(inline="always", **_OPTS)
def _chunk_step(xs, elapsed, fp, ip, work, bad, s, b0, nb):
    """Step instances b0 .. b0+nb-1 together, SIMD across instances (non-mixed models).

    ``s`` [C_ROWS, CHUNK] is the chunk layout (row = value, column = lane). Each lane's state
    is committed only if its whole new state is finite.
    """
    _chunk_load_state(ip, work, s, b0, nb)
    _chunk_load_inputs(xs, elapsed, ip, s, b0, nb)
    yr = _chunk_compute(fp, ip, s)
    ok = s[ip[C_OK]]
    for lane in range(nb):
        bad[b0 + lane] = STATUS_OK if ok[lane] != 0 else STATUS_BAD_OUTPUT
    # row-outer, lane-inner: the strided side is the store into work (no gathers)
    st = ip[W_STATE]
    for c in range(ip[N_CELLS]):
        rec = ip[CELL_TAB] + c * L_REC
        off = st + ip[rec + L_HOFF]
        for j in range(ip[rec + L_N]):
            h = s[ip[rec + L_CHN] + j]
            for lane in range(nb):
                if ok[lane] != 0:
                    work[b0 + lane, off + j] = h[lane]
    y = ip[W_Y]
    for k in range(ip[N_OUT]):
        yk = s[yr + k]
        for lane in range(nb):
            if ok[lane] != 0:
                work[b0 + lane, y + k] = yk[lane]


@njit(inline="always", **_OPTS)
def _chunk_scratch(scratch, ip):
    """This thread's scratch as [C_ROWS, CHUNK]."""
    rows = ip[C_ROWS]
    return scratch[get_thread_id(), : rows * CHUNK].reshape((rows, CHUNK))


@njit(parallel=True, **_OPTS)
def step_batch(xs, elapsed, fp, ip, work, bad, scratch):
    """One step for B instances [B, I], each with its own elapsed [B]; parallel over B.

    Non-mixed models run in chunks of :data:`CHUNK` instances with the SIMD lanes across
    instances (the backbone and heads become matrix-matrix products); mixed-memory models
    step instance by instance. ``scratch`` [threads, batch_scratch_size] and ``bad`` [B]
    int64 are caller-owned. All rows are validated before any state changes; a row whose
    result is not finite keeps its state (``bad[b]`` says which). Returns (status, b), b
    the first bad row or -1.
    """
    b_count = xs.shape[0]
    for b in range(b_count):
        status = _check(xs[b], elapsed[b])
        if status != STATUS_OK:
            return status, b
    if ip[MIXED]:
        for b in prange(b_count):
            bad[b] = _cell_call(xs[b], elapsed[b], fp, ip, work[b])
    else:
        n_chunks = (b_count + CHUNK - 1) // CHUNK
        for c in prange(n_chunks):
            b0 = c * CHUNK
            _chunk_step(
                xs, elapsed, fp, ip, work, bad, _chunk_scratch(scratch, ip), b0, min(CHUNK, b_count - b0)
            )
    for b in range(b_count):
        if bad[b] != STATUS_OK:
            return bad[b], b
    return STATUS_OK, -1


@njit(inline="always", **_OPTS)
def _chunk_run(xs, elapsed, fp, ip, work, ys, bad, s, b0, nb):
    """A sequence for instances b0 .. b0+nb-1, SIMD across instances, the state kept in the
    scratch between steps. A lane whose step is not finite stops there (its state and y stay
    at its last good step, ``bad`` says why), as in the instance-by-instance loop."""
    for lane in range(nb):
        bad[b0 + lane] = STATUS_OK
    _chunk_load_state(ip, work, s, b0, nb)
    ok = s[ip[C_OK]]
    zero = s.dtype.type(0.0)
    y, m = ip[W_Y], ip[N_OUT]
    for t in range(xs.shape[0]):
        _chunk_load_inputs(xs[t], elapsed[t], ip, s, b0, nb)
        yr = _chunk_compute(fp, ip, s)
        for lane in range(nb):
            if bad[b0 + lane] != STATUS_OK:
                ok[lane] = zero
            elif ok[lane] == zero:
                bad[b0 + lane] = STATUS_BAD_OUTPUT
        for lane in range(nb, CHUNK):
            ok[lane] = zero
        for c in range(ip[N_CELLS]):  # commit in the scratch: new h -> h where ok
            rec = ip[CELL_TAB] + c * L_REC
            for j in range(ip[rec + L_N]):
                h, hn = s[ip[rec + L_CH] + j], s[ip[rec + L_CHN] + j]
                for lane in range(CHUNK):
                    h[lane] = hn[lane] if ok[lane] != zero else h[lane]
        for k in range(m):
            yk = s[yr + k]
            for lane in range(nb):
                if ok[lane] != zero:
                    ys[t, b0 + lane, k] = yk[lane]
                    work[b0 + lane, y + k] = yk[lane]
    st = ip[W_STATE]
    for c in range(ip[N_CELLS]):
        rec = ip[CELL_TAB] + c * L_REC
        off = st + ip[rec + L_HOFF]
        for j in range(ip[rec + L_N]):
            h = s[ip[rec + L_CH] + j]
            for lane in range(nb):
                work[b0 + lane, off + j] = h[lane]


@njit(parallel=True, **_OPTS)
def run_batch(xs, elapsed, fp, ip, work, ys, bad, scratch):
    """Sequences [T, B, I] with elapsed [T, B] -> ys [T, B, n_out]; instances in parallel.

    Non-mixed models run :data:`CHUNK` instances at a time over all T steps, the state kept
    in ``scratch`` (as :func:`step_batch`'s) between steps; mixed-memory models instance by
    instance. Every input is validated first. A row whose step is not finite stops there with
    its last good state. Returns (status, b), b the first bad row or -1.
    """
    t_count, b_count = xs.shape[0], xs.shape[1]
    for t in range(t_count):
        for b in range(b_count):
            status = _check(xs[t, b], elapsed[t, b])
            if status != STATUS_OK:
                return status, t * b_count + b
    if ip[MIXED]:
        m = ip[N_OUT]
        y = ip[W_Y]
        for b in prange(b_count):
            bad[b] = STATUS_OK
            for t in range(t_count):
                s = _cell_call(xs[t, b], elapsed[t, b], fp, ip, work[b])
                if s != STATUS_OK:
                    bad[b] = s
                    break
                for k in range(m):
                    ys[t, b, k] = work[b, y + k]
    else:
        n_chunks = (b_count + CHUNK - 1) // CHUNK
        for c in prange(n_chunks):
            b0 = c * CHUNK
            s = _chunk_scratch(scratch, ip)
            _chunk_run(xs, elapsed, fp, ip, work, ys, bad, s, b0, min(CHUNK, b_count - b0))
    for b in range(b_count):
        if bad[b] != STATUS_OK:
            return bad[b], b
    return STATUS_OK, -1


@njit(**_OPTS)
def control_step(raw, elapsed, dt_s, chan, xbuf, fp, ip, work):
    """The node's whole compute for one cycle with a CfC policy, in one call.

    As :func:`edgeliquid.runtime.kernels.control_step` (same arguments, same status codes).
    """
    status = map_inputs(raw, chan, xbuf)
    if status != STATUS_OK:
        return status
    status = step(xbuf, elapsed, fp, ip, work)
    if status != STATUS_OK:
        return status
    return map_outputs(work, ip[W_Y], ip[N_OUT], raw.shape[0], dt_s, chan)


__all__ = ["step", "run", "step_batch", "run_batch", "control_step", "batch_scratch_size", "CHUNK", "N_STATE"]
