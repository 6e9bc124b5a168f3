"""numba-cuda kernels of the CfC step (imported only once CUDA is known to be usable).

One thread per instance, as the LTC kernels (:mod:`edgeliquid.runtime.cuda_kernels`): every
thread walks the same packed parameters (warp-uniform reads) of
:mod:`edgeliquid.runtime.cfc_packing`, the very ``fp``/``ip`` the cpu kernel reads, and keeps
its work row (same ``W_*`` offsets) in column ``b`` of a ``[work_size, batch]`` array so
consecutive threads touch consecutive addresses. The state is ``work[:n_state]``.

Layouts: x [T, batch, I], elapsed [T, batch], y [T, batch, n_out]. Each step is validated
(x finite, elapsed finite and > 0) before anything is written, and the state is committed
only when the whole new state is finite; a thread stops at its first bad step and leaves
its status (``kernels.STATUS_*`` codes).

Constants are bound per dtype (:func:`kernel_for`) so float32 math stays float32 (FP64 is
1/32 rate on Jetson-class GPUs) and float64 keeps its precision.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from numba import cuda

from .cfc_packing import (
    ACT,
    BB_B,
    BB_IN,
    BB_OUT,
    BB_REC,
    BB_TAB,
    BB_W,
    CELL_TAB,
    FC_B,
    FC_W,
    KERAS,
    L_A,
    L_B,
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
    PROJ,
    UNITS,
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

STATUS_OK, STATUS_BAD_INPUT, STATUS_BAD_ELAPSED, STATUS_BAD_OUTPUT = 0, 1, 2, 3
MODE_DEFAULT, MODE_NO_GATE, MODE_PURE = 0, 1, 2
ACT_LECUN, ACT_SILU, ACT_RELU, ACT_TANH, ACT_GELU = 0, 1, 2, 3, 4  # model.cfc.ACTIVATIONS


@cache
def kernel_for(dtype) -> object:
    """The compiled ``run_kernel`` for one float dtype (numba-cuda compiles it lazily, once)."""
    f = np.dtype(dtype).type
    zero, one, half = f(0.0), f(1.0), f(0.5)
    lecun_s, lecun_k, rsqrt2 = f(1.7159), f(0.666), f(1.0 / math.sqrt(2.0))
    clamp = f(80.0)

    @cuda.jit(device=True, inline=True)
    def sigm(v):
        # Clamped so exp cannot overflow (the simulator's math.exp raises; the change is < 1e-34).
        return one / (one + math.exp(-min(max(v, -clamp), clamp)))

    @cuda.jit(device=True)
    def matvec(fp, woff, boff, rows, cols, w, zoff, out, b):
        """w[out:out+rows, b] = W z + bias, W stored [cols, rows] at fp[woff:], z = w[zoff:, b]."""
        for r in range(rows):
            acc = fp[boff + r]
            for i in range(cols):
                acc += fp[woff + i * rows + r] * w[zoff + i, b]
            w[out + r, b] = acc

    @cuda.jit(device=True)
    def activate(w, off, n, act, b):
        for i in range(n):
            a = w[off + i, b]
            if act == ACT_LECUN:
                a = lecun_s * math.tanh(lecun_k * a)
            elif act == ACT_TANH:
                a = math.tanh(a)
            elif act == ACT_RELU:
                a = max(a, zero)
            elif act == ACT_SILU:
                a = a * sigm(a)
            else:  # gelu, exact (torch nn.GELU default)
                a = half * a * (one + math.erf(a * rsqrt2))
            w[off + i, b] = a

    @cuda.jit(device=True)
    def lstm(x, t, fp, ip, w, hdst, b):
        """ncps LSTMCell: new h -> w[hdst:] (W_H, or W_LZ for the ncps.keras coupling: z[j] is
        dead once h[j] is written), new c -> w[W_C]; the state rows are only read."""
        u, n_in = ip[UNITS], ip[N_IN]
        wi, bi, wr, z, st = ip[LSTM_WI], ip[LSTM_BI], ip[LSTM_WR], ip[W_LZ], ip[W_STATE]
        for r in range(4 * u):
            a = zero
            for i in range(n_in):
                a += fp[wi + r * n_in + i] * x[t, b, i]
            c = zero
            for i in range(u):
                c += fp[wr + r * u + i] * w[st + i, b]
            w[z + r, b] = (a + fp[bi + r]) + c
        for j in range(u):
            c = w[st + u + j, b] * sigm(w[z + 2 * u + j, b] + one) + math.tanh(w[z + j, b]) * sigm(
                w[z + u + j, b]
            )
            w[ip[W_C] + j, b] = c
            w[hdst + j, b] = math.tanh(c) * sigm(w[z + 3 * u + j, b])

    @cuda.jit(device=True)
    def subcell(x, t, fp, ip, c, inp, ts, w, b):
        """ncps CfCCell.forward for sub-cell c; inp < 0: the input is x[t, b], else w[inp:, b]."""
        rec = ip[CELL_TAB] + c * L_REC
        n_in, n, hoff = ip[rec + L_IN], ip[rec + L_N], ip[rec + L_HOFF]
        z = ip[W_Z]
        for i in range(n_in):
            w[z + i, b] = x[t, b, i] if inp < 0 else w[inp + i, b]
        h = ip[W_H] + hoff
        for j in range(n):
            w[z + n_in + j, b] = w[h + j, b]
        hin = z  # where the heads' input lives: z, or the last backbone layer
        for k in range(ip[N_BB]):
            bb = ip[BB_TAB] + k * BB_REC
            dst = ip[W_B0] if k % 2 == 0 else ip[W_B1]
            rows = ip[bb + BB_OUT]
            matvec(fp, ip[bb + BB_W], ip[bb + BB_B], rows, ip[bb + BB_IN], w, hin, dst, b)
            activate(w, dst, rows, ip[ACT], b)
            hin = dst
        heads = ip[W_HEADS]
        nh = ip[rec + L_NH]
        if nh > 0:
            hd = heads + ip[rec + L_HDST]
            matvec(fp, ip[rec + L_W], ip[rec + L_B], nh * n, ip[rec + L_HEADIN], w, hin, hd, b)
        mode = ip[MODE]
        if ip[rec + L_SPARSE]:
            # ff1 (and ff2) from existing synapses only, scatter-added by destination.
            nnz, sw, sb = ip[rec + L_NNZ], ip[rec + L_SW], ip[rec + L_SB]
            src, dsts = ip[rec + L_SRC], ip[rec + L_DST]
            nm = 1 if mode == MODE_PURE else 2
            for m in range(nm):
                for j in range(n):
                    w[heads + m * n + j, b] = fp[sb + m * n + j]
                for k in range(nnz):
                    w[heads + m * n + ip[dsts + k], b] += fp[sw + m * nnz + k] * w[hin + ip[src + k], b]
        hn = ip[W_HNEW] + hoff
        if mode == MODE_PURE:
            tau, a = ip[rec + L_TAU], ip[rec + L_A]
            for j in range(n):
                f1 = w[heads + j, b]
                w[hn + j, b] = -fp[a + j] * math.exp(-ts * (fp[tau + j] + abs(f1))) * f1 + fp[a + j]
            return
        keras = ip[KERAS] != 0  # ncps.keras: no tanh on the heads (time_a is packed negated)
        for j in range(n):
            g = sigm(w[heads + 2 * n + j, b] * ts + w[heads + 3 * n + j, b])
            f1 = w[heads + j, b]
            f2 = w[heads + n + j, b]
            if not keras:
                f1 = math.tanh(f1)
                f2 = math.tanh(f2)
            if mode == MODE_NO_GATE:
                w[hn + j, b] = f1 + g * f2
            else:
                w[hn + j, b] = f1 * (one - g) + g * f2

    @cuda.jit(device=True)
    def one_step(x, t, elapsed, fp, ip, w, y, status, b):
        """One validated step of instance b; False (and a status) when it did not commit."""
        u = ip[UNITS]
        ts = elapsed[t, b]
        if not (ts > zero and ts < math.inf):
            status[b] = STATUS_BAD_ELAPSED
            return False
        for i in range(ip[N_IN]):
            if not math.isfinite(x[t, b, i]):
                status[b] = STATUS_BAD_INPUT
                return False
        st, hnew = ip[W_STATE], ip[W_HNEW]
        mm_input = ip[MM_INPUT] != 0
        if ip[MIXED]:
            lstm(x, t, fp, ip, w, ip[W_LZ] if mm_input else ip[W_H], b)
        if not ip[MIXED] or mm_input:
            for j in range(u):
                w[ip[W_H] + j, b] = w[st + j, b]
        inp = ip[W_LZ] if mm_input else -1  # ncps.keras coupling: the LSTM output is the input
        for c in range(ip[N_CELLS]):
            subcell(x, t, fp, ip, c, inp, ts, w, b)
            inp = hnew + ip[ip[CELL_TAB] + c * L_REC + L_HOFF]
        for j in range(u):
            if not math.isfinite(w[hnew + j, b]):
                status[b] = STATUS_BAD_OUTPUT
                return False
        if ip[MIXED]:
            for j in range(u):
                if not math.isfinite(w[ip[W_C] + j, b]):
                    status[b] = STATUS_BAD_OUTPUT
                    return False
        for j in range(u):
            w[st + j, b] = w[hnew + j, b]
        if ip[MIXED]:
            for j in range(u):
                w[st + u + j, b] = w[ip[W_C] + j, b]
        out = hnew + ip[MOTOR_OFF]
        if ip[PROJ]:
            matvec(fp, ip[FC_W], ip[FC_B], ip[PROJ], ip[MOTORS], w, out, ip[W_Y], b)
            for k in range(ip[N_OUT]):
                y[t, b, k] = w[ip[W_Y] + k, b]
        else:
            for k in range(ip[MOTORS]):
                y[t, b, k] = w[out + k, b]
        return True

    @cuda.jit
    def run_kernel(x, elapsed, fp, ip, w, y, status):
        """x [T, B, I], elapsed [T, B] -> y [T, B, n_out]; one thread per instance, all T steps."""
        b = cuda.grid(1)
        if b >= x.shape[1]:
            return
        status[b] = STATUS_OK
        for t in range(x.shape[0]):
            if not one_step(x, t, elapsed, fp, ip, w, y, status, b):
                return

    return run_kernel
