"""numba-cuda kernels of the LTC step (imported only once CUDA is known to be usable).

Layouts: state/scratch [rows, batch] (instance-major: coalesced across threads),
x [T, batch, I], elapsed [T, batch], y [T, batch, M]; fp/ip as in packing.py.

Every solver of :mod:`edgeliquid.runtime.reference` (``ip[SOLVER]``); the branch is
warp-uniform (every thread runs the same model). The explicit schemes take their
constants (1/unfolds, 1/2, 1/6, 2) and 1/cm from ``fp``, so float32 math stays float32
and no division runs per neuron.
"""

import math

import numpy as np
from numba import cuda

from .packing import (
    CM,
    EPS,
    EXPL_C,
    GLEAK,
    GLEAK_VLEAK,
    IN_B,
    IN_W,
    INV_CM,
    LSTM_BI,
    LSTM_WI,
    LSTM_WR,
    MIXED,
    MM_INPUT,
    MOTORS,
    N_IN,
    NNZ,
    OUT_B,
    OUT_W,
    SNNZ,
    SOLVER,
    SOLVER_EULER,
    SOLVER_FUSED,
    SOLVER_RK4,
    SSYN,
    SSYN_COUNT,
    SSYN_DST,
    SSYN_SRC,
    SYN,
    SYN_COUNT,
    SYN_DST,
    SYN_SRC,
    UNFOLDS,
    UNITS,
)

STATUS_OK, STATUS_BAD_INPUT, STATUS_BAD_ELAPSED, STATUS_BAD_OUTPUT, STATUS_BAD_SOLVER = 0, 1, 2, 3, 4
_ONE = np.float32(1.0)
_CLAMP = np.float32(80.0)


@cuda.jit(device=True, inline=True)
def sigm(x):
    # Clamped so exp cannot overflow (the simulator's math.exp raises; the change is < 1e-34).
    # float32 constants keep float32 math in float32 (FP64 is 1/32 rate on Jetson-class GPUs).
    return _ONE / (_ONE + math.exp(-min(max(x, -_CLAMP), _CLAMP)))


@cuda.jit(device=True)
def synapses(pre, fp, ip, base, nnz, count, src_off, dst_off, nums, dens, b):
    """Sums of the ``count`` synapses that exist (``nnz``: the padded block length, the stride)."""
    for k in range(count):
        a = fp[base + k] * sigm(fp[base + nnz + k] * (pre[ip[src_off + k], b] - fp[base + 2 * nnz + k]))
        j = ip[dst_off + k]
        nums[j, b] += a * fp[base + 3 * nnz + k]
        dens[j, b] += a


@cuda.jit(device=True)
def explicit(fp, ip, e, v, acc, vs, nums, dens, numr, denr, b):
    """``ode_unfolds`` explicit Euler or RK4 sub-steps of instance b's v, in place.

    As ``kernels._explicit``: ``acc`` sums k1 + 2 k2 + 2 k3, ``vs`` holds the next stage's input.
    """
    u = ip[UNITS]
    c = ip[EXPL_C]
    h = e * fp[c]
    half = h * fp[c + 1]
    sixth = h * fp[c + 2]
    two = fp[c + 3]
    stages = 4 if ip[SOLVER] == SOLVER_RK4 else 1
    for _ in range(ip[UNFOLDS]):
        for stage in range(stages):
            for j in range(u):
                numr[j, b] = 0.0
                denr[j, b] = 0.0
            if stage == 0:
                synapses(v, fp, ip, ip[SYN], ip[NNZ], ip[SYN_COUNT], ip[SYN_SRC], ip[SYN_DST], numr, denr, b)
            else:
                synapses(vs, fp, ip, ip[SYN], ip[NNZ], ip[SYN_COUNT], ip[SYN_SRC], ip[SYN_DST], numr, denr, b)
            for j in range(u):
                vj = v[j, b]
                at = vj if stage == 0 else vs[j, b]
                k = (
                    (fp[ip[GLEAK_VLEAK] + j] + (numr[j, b] + nums[j, b]))
                    - (fp[ip[GLEAK] + j] + (denr[j, b] + dens[j, b])) * at
                ) * fp[ip[INV_CM] + j]
                if stages == 1:
                    v[j, b] = vj + h * k
                elif stage == 0:
                    acc[j, b] = k
                    vs[j, b] = vj + half * k
                elif stage == 1:
                    acc[j, b] += two * k
                    vs[j, b] = vj + half * k
                elif stage == 2:
                    acc[j, b] += two * k
                    vs[j, b] = vj + h * k
                else:
                    v[j, b] = vj + sixth * (acc[j, b] + k)


@cuda.jit(device=True)
def one_step(x, t, elapsed, fp, ip, state, y, v, vn, xm, nums, dens, numr, denr, z, vs, status, b):
    u = ip[UNITS]
    n_in = ip[N_IN]
    solver = ip[SOLVER]
    if not (solver == SOLVER_FUSED or solver == SOLVER_EULER or solver == SOLVER_RK4):
        status[b] = STATUS_BAD_SOLVER
        return False
    e = elapsed[t, b]
    if not (e > 0.0 and e < math.inf):
        status[b] = STATUS_BAD_ELAPSED
        return False
    for i in range(n_in):
        if not math.isfinite(x[t, b, i]):
            status[b] = STATUS_BAD_INPUT
            return False
    if ip[MIXED]:
        wi, bi, wr = ip[LSTM_WI], ip[LSTM_BI], ip[LSTM_WR]
        for r in range(4 * u):
            a = fp[bi + r] * 0.0
            for i in range(n_in):
                a += fp[wi + r * n_in + i] * x[t, b, i]
            c = fp[bi + r] * 0.0
            for i in range(u):
                c += fp[wr + r * u + i] * state[i, b]
            z[r, b] = (a + fp[bi + r]) + c
        for j in range(u):
            cn = state[u + j, b] * sigm(z[2 * u + j, b] + 1.0) + math.tanh(z[j, b]) * sigm(z[u + j, b])
            z[j, b] = cn
            v[j, b] = math.tanh(cn) * sigm(z[3 * u + j, b])
    else:
        for j in range(u):
            v[j, b] = state[j, b]
    if ip[MM_INPUT]:
        # ncps.keras coupling: the LSTM output (in v) is the cell's input; v restarts from the state.
        for j in range(u):
            xm[j, b] = v[j, b] * fp[ip[IN_W] + j] + fp[ip[IN_B] + j]
            v[j, b] = state[j, b]
    else:
        for i in range(n_in):
            xm[i, b] = x[t, b, i] * fp[ip[IN_W] + i] + fp[ip[IN_B] + i]
    for j in range(u):
        nums[j, b] = 0.0
        dens[j, b] = 0.0
    synapses(xm, fp, ip, ip[SSYN], ip[SNNZ], ip[SSYN_COUNT], ip[SSYN_SRC], ip[SSYN_DST], nums, dens, b)
    if solver == SOLVER_FUSED:
        dt = e / ip[UNFOLDS]
        eps = fp[ip[EPS]]
        for _ in range(ip[UNFOLDS]):
            for j in range(u):
                numr[j, b] = 0.0
                denr[j, b] = 0.0
            synapses(v, fp, ip, ip[SYN], ip[NNZ], ip[SYN_COUNT], ip[SYN_SRC], ip[SYN_DST], numr, denr, b)
            for j in range(u):
                cmt = fp[ip[CM] + j] / dt
                vn[j, b] = (cmt * v[j, b] + fp[ip[GLEAK_VLEAK] + j] + (numr[j, b] + nums[j, b])) / (
                    cmt + fp[ip[GLEAK] + j] + (denr[j, b] + dens[j, b]) + eps
                )
            for j in range(u):
                v[j, b] = vn[j, b]
    else:
        explicit(fp, ip, e, v, vn, vs, nums, dens, numr, denr, b)
    for j in range(u):
        if not math.isfinite(v[j, b]):
            status[b] = STATUS_BAD_OUTPUT
            return False
    for j in range(u):
        state[j, b] = v[j, b]
    if ip[MIXED]:
        for j in range(u):
            state[u + j, b] = z[j, b]
    for k in range(ip[MOTORS]):
        y[t, b, k] = v[k, b] * fp[ip[OUT_W] + k] + fp[ip[OUT_B] + k]
    return True


@cuda.jit
def run_kernel(x, elapsed, fp, ip, state, y, v, vn, xm, nums, dens, numr, denr, z, vs, status):
    """x [T, B, I], elapsed [T, B] -> y [T, B, M]; one thread per instance, all T steps."""
    b = cuda.grid(1)
    if b >= x.shape[1]:
        return
    status[b] = STATUS_OK
    for t in range(x.shape[0]):
        if not one_step(x, t, elapsed, fp, ip, state, y, v, vn, xm, nums, dens, numr, denr, z, vs, status, b):
            return
