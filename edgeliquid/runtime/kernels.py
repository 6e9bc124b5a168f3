"""numba kernels of the LTC step (the ``cpu`` backend), for every solver.

The solver is ``ip[SOLVER]`` (:data:`edgeliquid.runtime.packing.SOLVER_CODES`): ncps' fused
semi-implicit Euler, explicit Euler or RK4, each as :mod:`edgeliquid.runtime.reference`
defines it. The kernels branch on it once per step (RK4: once per stage), never inside
the neuron or synapse loops; the explicit schemes multiply by the packed 1/cm and divide
only once per step (h = elapsed / ode_unfolds). Sensory sums are computed once per step
for every solver (inputs are held over the step).

Pure functions over the flat arrays of :mod:`edgeliquid.runtime.packing`: no objects,
no raising. They report bad input through a status code (see ``STATUS_*``)
that :mod:`edgeliquid.runtime.policy` turns into an exception; they validate every
input before writing anything, so a rejected step leaves the state untouched.

Arrays (D = the policy's dtype, float32 or float64; W = work-row size):
    x        [I] or [B, I] or [T, I] or [T, B, I]   D, inputs before the input mapping
    elapsed  float, or [B] / [T] / [T, B] D         model time units, finite and > 0
    fp       [*] D       every float parameter (packing table)
    ip       [*] int64   sizes, offsets, synapse indices (packing table)
    work     [W] or [B, W] D   state first, then scratch; y lives at ip[W_Y]

The synapse loops run with ``reassoc``/``contract`` so LLVM can vectorise the
sums and fuse multiply-adds; results differ from the reference by rounding only.
"""

from __future__ import annotations

import math

import numpy as np
from numba import get_thread_id, njit, prange

from .fastexp import logistic
from .packing import (
    CM,
    EPS,
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
    SSYN_DENSE,
    SSYN_DST,
    SSYN_PTR,
    SSYN_SRC,
    SYN,
    SYN_COUNT,
    SYN_DENSE,
    SYN_DST,
    SYN_PTR,
    SYN_SRC,
    UNFOLDS,
    UNITS,
    W_ACT,
    W_CMT,
    W_DENS,
    W_NUMR,
    W_NUMS,
    W_STAGE,
    W_STATE,
    W_V,
    W_VNEXT,
    W_XM,
    W_Y,
    W_Z,
)

STATUS_OK = 0
STATUS_BAD_INPUT = 1  # a non-finite value in x
STATUS_BAD_ELAPSED = 2  # elapsed not finite or not > 0
STATUS_BAD_OUTPUT = 3  # the step produced a non-finite state (state not committed)
STATUS_BAD_SOLVER = 4  # ip[SOLVER] is no known solver code (a corrupt ip; Packed never makes one)

_FM = {"reassoc", "contract", "nsz"}
# _nrt=False: no reference counting. Every array is owned by the caller, and
# with NRT on each slice view costs two atomic refcount calls, which was most
# of a small NCP's step time.
_OPTS = dict(cache=True, nogil=True, fastmath=_FM, error_model="numpy", boundscheck=False, _nrt=False)


@njit(inline="always", **_OPTS)
def _dense_sums(pre, fp, base, nnz, start, n):
    """(sum w*s*erev, sum w*s) over one neuron's n inputs, all present: contiguous, SIMD."""
    ws = fp[base + start : base + start + n]
    ss = fp[base + nnz + start : base + nnz + start + n]
    ms = fp[base + 2 * nnz + start : base + 2 * nnz + start + n]
    es = fp[base + 3 * nnz + start : base + 3 * nnz + start + n]
    pre_s = pre[:n]
    num = fp.dtype.type(0.0)
    den = fp.dtype.type(0.0)
    for k in range(n):
        a = ws[k] * logistic(ss[k] * (pre_s[k] - ms[k]))
        num += a * es[k]
        den += a
    return num, den


@njit(inline="always", **_OPTS)
def _sparse_activations(pre, fp, ip, base, nnz, src_off, act, rev):
    """w*s and w*s*erev of every existing synapse, in one flat loop.

    One flat loop over all synapses keeps the SIMD lanes full; per-neuron loops
    over an NCP's 2-8 inputs were bound by the latency of one exp at a time.
    """
    ws = fp[base : base + nnz]
    ss = fp[base + nnz : base + 2 * nnz]
    ms = fp[base + 2 * nnz : base + 3 * nnz]
    es = fp[base + 3 * nnz : base + 4 * nnz]
    src = ip[src_off : src_off + nnz]
    # Gather first (scalar), so the exp loop below reads only contiguous arrays
    # and vectorises; with the gather inside it, LLVM left the whole loop scalar.
    for k in range(nnz):
        act[k] = pre[np.uint64(src[k])]  # unsigned: no negative-index wraparound code
    for k in range(nnz):
        a = ws[k] * logistic(ss[k] * (act[k] - ms[k]))
        act[k] = a
        rev[k] = a * es[k]


@njit(inline="always", **_OPTS)
def _layer(pre, fp, ip, base, nnz, ptr_off, src_off, dst_off, dense, u, act, rev, nums, dens):
    """nums[j], dens[j] = synaptic sums into each neuron j from the presynaptic ``pre``."""
    if dense:
        n = ip[ptr_off + 1] - ip[ptr_off]
        for j in range(u):
            nums[j], dens[j] = _dense_sums(pre, fp, base, nnz, ip[ptr_off + j], n)
    else:
        _sparse_activations(pre, fp, ip, base, nnz, src_off, act, rev)
        # Scatter-add by destination: branch-free, unlike per-neuron loops of 1-8 synapses.
        zero = fp.dtype.type(0.0)
        for j in range(u):
            nums[j] = zero
            dens[j] = zero
        dst = ip[dst_off : dst_off + nnz]
        for k in range(nnz):
            d = np.uint64(dst[k])
            nums[d] += rev[k]
            dens[d] += act[k]


@njit(inline="always", **_OPTS)
def _check(x, elapsed):
    if not (elapsed > 0.0 and elapsed < np.inf):
        return STATUS_BAD_ELAPSED
    for i in range(x.shape[0]):
        if not math.isfinite(x[i]):
            return STATUS_BAD_INPUT
    return STATUS_OK


@njit(inline="always", **_OPTS)
def _check_solver(ip):
    s = ip[SOLVER]
    if s == SOLVER_FUSED or s == SOLVER_EULER or s == SOLVER_RK4:
        return STATUS_OK
    return STATUS_BAD_SOLVER


@njit(inline="always", **_OPTS)
def _rate(v, glvl, gl, numr, nums, denr, dens, icm):
    """dv/dt of one neuron: ``reference.ltc_derivative`` with 1/cm as a multiply."""
    return ((glvl + (numr + nums)) - (gl + (denr + dens)) * v) * icm


@njit(inline="always", **_OPTS)
def _lstm(x, fp, ip, w):
    """ncps LSTMCell on raw x: new h -> v scratch, new c -> z[0:u] (z[j] is dead by then).

    The state row is only read here; the caller commits h and c together once the
    LTC part has produced a finite result.
    """
    u = ip[UNITS]
    n_in = ip[N_IN]
    wi, bi, wr = ip[LSTM_WI], ip[LSTM_BI], ip[LSTM_WR]
    z = ip[W_Z]
    st = ip[W_STATE]
    for r in range(4 * u):
        acc = fp[bi + r]
        a = fp.dtype.type(0.0)
        for i in range(n_in):
            a += fp[wi + r * n_in + i] * x[i]
        b = fp.dtype.type(0.0)
        for i in range(u):
            b += fp[wr + r * u + i] * w[st + i]
        w[z + r] = (a + acc) + b
    one = fp.dtype.type(1.0)
    for j in range(u):
        c = w[st + u + j] * logistic(w[z + 2 * u + j] + one) + math.tanh(w[z + j]) * logistic(w[z + u + j])
        w[z + j] = c
        w[ip[W_V] + j] = math.tanh(c) * logistic(w[z + 3 * u + j])


@njit(inline="always", **_OPTS)
def _explicit(v, acc, vs, elapsed, fp, ip, u, act, rev, nums, dens, numr, denr):
    """``ode_unfolds`` explicit Euler or RK4 sub-steps of v in place (solver = ip[SOLVER]).

    RK4 runs its four stages as one loop (one inlined synapse layer, not four); the
    stage branch sits outside the neuron loops. ``acc`` sums k1 + 2 k2 + 2 k3, ``vs``
    holds the next stage's input. Only one of the two loops below runs.
    """
    h = fp.dtype.type(elapsed / ip[UNFOLDS])
    gl = fp[ip[GLEAK] : ip[GLEAK] + u]
    glvl = fp[ip[GLEAK_VLEAK] : ip[GLEAK_VLEAK] + u]
    icm = fp[ip[INV_CM] : ip[INV_CM] + u]
    rk4 = ip[SOLVER] == SOLVER_RK4
    half = h * fp.dtype.type(0.5)
    sixth = h * fp.dtype.type(1.0 / 6.0)
    two = fp.dtype.type(2.0)
    # Euler gets its own loop: inside the stage loop it ran measurably slower than fused.
    for _ in range(0 if rk4 else ip[UNFOLDS]):
        _layer(
            v,
            fp,
            ip,
            ip[SYN],
            ip[NNZ],
            ip[SYN_PTR],
            ip[SYN_SRC],
            ip[SYN_DST],
            ip[SYN_DENSE],
            u,
            act,
            rev,
            numr,
            denr,
        )
        for j in range(u):
            v[j] += h * _rate(v[j], glvl[j], gl[j], numr[j], nums[j], denr[j], dens[j], icm[j])
    for _ in range(ip[UNFOLDS] if rk4 else 0):
        for stage in range(4):
            pre = v if stage == 0 else vs
            _layer(
                pre,
                fp,
                ip,
                ip[SYN],
                ip[NNZ],
                ip[SYN_PTR],
                ip[SYN_SRC],
                ip[SYN_DST],
                ip[SYN_DENSE],
                u,
                act,
                rev,
                numr,
                denr,
            )
            if stage == 0:
                for j in range(u):
                    k = _rate(v[j], glvl[j], gl[j], numr[j], nums[j], denr[j], dens[j], icm[j])
                    acc[j] = k
                    vs[j] = v[j] + half * k
            elif stage < 3:
                c = half if stage == 1 else h
                for j in range(u):
                    k = _rate(vs[j], glvl[j], gl[j], numr[j], nums[j], denr[j], dens[j], icm[j])
                    acc[j] += two * k
                    vs[j] = v[j] + c * k
            else:
                for j in range(u):
                    k = _rate(vs[j], glvl[j], gl[j], numr[j], nums[j], denr[j], dens[j], icm[j])
                    v[j] += sixth * (acc[j] + k)


@njit(inline="always", **_OPTS)
def _cell(x, elapsed, fp, ip, w):
    """One step for one instance; inputs already validated. Returns a status."""
    u = ip[UNITS]
    n_in = ip[N_IN]
    v = w[ip[W_V] : ip[W_V] + u]
    vnext = w[ip[W_VNEXT] : ip[W_VNEXT] + u]
    xm = w[ip[W_XM] : ip[W_XM] + n_in]
    nums = w[ip[W_NUMS] : ip[W_NUMS] + u]
    dens = w[ip[W_DENS] : ip[W_DENS] + u]
    cmt = w[ip[W_CMT] : ip[W_CMT] + u]
    if ip[MIXED]:
        _lstm(x, fp, ip, w)
    else:
        for j in range(u):
            v[j] = w[ip[W_STATE] + j]
    if ip[MM_INPUT]:
        # ncps.keras coupling: the LSTM output (in v) is the cell's input; v restarts from the state.
        xm = w[ip[W_XM] : ip[W_XM] + u]
        for j in range(u):
            xm[j] = v[j] * fp[ip[IN_W] + j] + fp[ip[IN_B] + j]
            v[j] = w[ip[W_STATE] + j]
    else:
        for i in range(n_in):
            xm[i] = x[i] * fp[ip[IN_W] + i] + fp[ip[IN_B] + i]
    nmax = max(ip[NNZ], ip[SNNZ])
    act = w[ip[W_ACT] : ip[W_ACT] + nmax]
    rev = w[ip[W_ACT] + nmax : ip[W_ACT] + 2 * nmax]
    numr = w[ip[W_NUMR] : ip[W_NUMR] + u]
    denr = w[ip[W_NUMR] + u : ip[W_NUMR] + 2 * u]
    # Sensory synapses do not depend on v: computed once per step, not per unfold.
    _layer(
        xm,
        fp,
        ip,
        ip[SSYN],
        ip[SNNZ],
        ip[SSYN_PTR],
        ip[SSYN_SRC],
        ip[SSYN_DST],
        ip[SSYN_DENSE],
        u,
        act,
        rev,
        nums,
        dens,
    )
    if ip[SOLVER] == SOLVER_FUSED:
        gl = fp[ip[GLEAK] : ip[GLEAK] + u]
        glvl = fp[ip[GLEAK_VLEAK] : ip[GLEAK_VLEAK] + u]
        dt = elapsed / ip[UNFOLDS]
        eps = fp[ip[EPS]]
        # Everything but the recurrent sums and cm/dt * v is constant over the sub-steps:
        # nums becomes gleak*vleak + sensory numerator, dens cm/dt + gleak + sensory denominator + eps.
        for j in range(u):
            c = fp[ip[CM] + j] / dt
            cmt[j] = c
            nums[j] = glvl[j] + nums[j]
            dens[j] = (c + gl[j]) + dens[j] + eps
        for _ in range(ip[UNFOLDS]):
            _layer(
                v,
                fp,
                ip,
                ip[SYN],
                ip[NNZ],
                ip[SYN_PTR],
                ip[SYN_SRC],
                ip[SYN_DST],
                ip[SYN_DENSE],
                u,
                act,
                rev,
                numr,
                denr,
            )
            # In place: neuron j's update reads only its own v[j] (the sums are already taken).
            for j in range(u):
                v[j] = (cmt[j] * v[j] + (nums[j] + numr[j])) / (dens[j] + denr[j])
    else:
        _explicit(
            v, vnext, w[ip[W_STAGE] : ip[W_STAGE] + u], elapsed, fp, ip, u, act, rev, nums, dens, numr, denr
        )
    for j in range(u):
        if not math.isfinite(v[j]):
            return STATUS_BAD_OUTPUT
    st = ip[W_STATE]
    for j in range(u):
        w[st + j] = v[j]
    if ip[MIXED]:
        for j in range(u):
            w[st + u + j] = w[ip[W_Z] + j]
    y = ip[W_Y]
    for k in range(ip[MOTORS]):
        w[y + k] = v[k] * fp[ip[OUT_W] + k] + fp[ip[OUT_B] + k]
    return STATUS_OK


@njit(**_OPTS)
def step(x, elapsed, fp, ip, work):
    """One validated step of one instance; y ends up in ``work[ip[W_Y]:]``."""
    status = _check(x, elapsed)
    if status != STATUS_OK:
        return status
    status = _check_solver(ip)
    if status != STATUS_OK:
        return status
    return _cell(x, elapsed, fp, ip, work)


@njit(**_OPTS)
def run(xs, elapsed, fp, ip, work, ys):
    """A whole sequence [T, I] -> ys [T, M] for one instance, in one compiled loop.

    Every input is validated first; on bad input nothing is computed. Returns
    (status, t) with t the first offending step (or -1).
    """
    for t in range(xs.shape[0]):
        status = _check(xs[t], elapsed[t])
        if status != STATUS_OK:
            return status, t
    m = ip[MOTORS]
    y = ip[W_Y]
    for t in range(xs.shape[0]):
        status = step(xs[t], elapsed[t], fp, ip, work)
        if status != STATUS_OK:
            return status, t
        for k in range(m):
            ys[t, k] = work[y + k]
    return STATUS_OK, -1


#: Instances per SIMD chunk of the batch kernel (lanes run across instances).
CHUNK = 64
# V, VNEXT, NUMS, DENS, NUMR, DENR, CMT, XM, STAGE (rows = max(U, I) each); the explicit
# schemes keep h per lane in CMT's first row and RK4's k1 + 2 k2 + 2 k3 in VNEXT.
_SCR_FIELDS = 9


def batch_scratch_size(units: int, n_in: int) -> int:
    """Floats of scratch one thread needs for :func:`step_batch`."""
    return _SCR_FIELDS * max(units, n_in) * CHUNK


@njit(inline="always", **_OPTS)
def _chunk_synapses(pre, fp, ip, base, nnz, count, src_off, dst_off, nums, dens, nb):
    """For every synapse k (src i -> dst j): nums[j, :] += a*erev, dens[j, :] += a, a over lanes.

    Only the ``count`` synapses that exist: the lanes run across instances, so the padding
    that fills the single-instance kernel's vectors would be work here.
    """
    src = ip[src_off : src_off + nnz]
    dst = ip[dst_off : dst_off + nnz]
    for k in range(count):
        w = fp[base + k]
        sg = fp[base + nnz + k]
        mu = fp[base + 2 * nnz + k]
        er = fp[base + 3 * nnz + k]
        pr = pre[src[k]]
        nr = nums[dst[k]]
        dr = dens[dst[k]]
        for lane in range(nb):
            a = w * logistic(sg * (pr[lane] - mu))
            nr[lane] += a * er
            dr[lane] += a


@njit(inline="always", **_OPTS)
def _chunk_explicit(v, acc, vs, hs, fp, ip, nums, dens, numr, denr, nb):
    """``_explicit`` across the SIMD lanes of a chunk: v [U, CHUNK] in place, hs [CHUNK] = h per lane."""
    u = ip[UNITS]
    rk4 = ip[SOLVER] == SOLVER_RK4
    stages = 4 if rk4 else 1
    half = fp.dtype.type(0.5)
    sixth = fp.dtype.type(1.0 / 6.0)
    two = fp.dtype.type(2.0)
    for _ in range(ip[UNFOLDS]):
        for stage in range(stages):
            for j in range(u):
                for lane in range(nb):
                    numr[j, lane] = nums[j, lane]
                    denr[j, lane] = dens[j, lane]
            pre = v if stage == 0 else vs
            _chunk_synapses(
                pre, fp, ip, ip[SYN], ip[NNZ], ip[SYN_COUNT], ip[SYN_SRC], ip[SYN_DST], numr, denr, nb
            )
            # numr/denr start from the sensory sums, as in the fused loop below.
            for j in range(u):
                g = fp[ip[GLEAK] + j]
                gv = fp[ip[GLEAK_VLEAK] + j]
                ic = fp[ip[INV_CM] + j]
                vr, nr, dr, ar, sr = v[j], numr[j], denr[j], acc[j], vs[j]
                if not rk4:
                    for lane in range(nb):
                        vr[lane] += hs[lane] * (((gv + nr[lane]) - (g + dr[lane]) * vr[lane]) * ic)
                elif stage == 0:
                    for lane in range(nb):
                        k = ((gv + nr[lane]) - (g + dr[lane]) * vr[lane]) * ic
                        ar[lane] = k
                        sr[lane] = vr[lane] + (half * hs[lane]) * k
                elif stage < 3:
                    c = half if stage == 1 else fp.dtype.type(1.0)
                    for lane in range(nb):
                        k = ((gv + nr[lane]) - (g + dr[lane]) * sr[lane]) * ic
                        ar[lane] += two * k
                        sr[lane] = vr[lane] + (c * hs[lane]) * k
                else:
                    for lane in range(nb):
                        k = ((gv + nr[lane]) - (g + dr[lane]) * sr[lane]) * ic
                        vr[lane] += (sixth * hs[lane]) * (ar[lane] + k)


@njit(inline="always", **_OPTS)
def _chunk_step(xs, elapsed, fp, ip, work, bad, scr, b0, nb):
    """Step instances b0 .. b0+nb-1 together, SIMD across instances (non-mixed models)."""
    u = ip[UNITS]
    n_in = ip[N_IN]
    rows = max(u, n_in)
    v = scr[0 * rows : 0 * rows + u]
    vn = scr[1 * rows : 1 * rows + u]
    nums = scr[2 * rows : 2 * rows + u]
    dens = scr[3 * rows : 3 * rows + u]
    numr = scr[4 * rows : 4 * rows + u]
    denr = scr[5 * rows : 5 * rows + u]
    cmt = scr[6 * rows : 6 * rows + u]
    xm = scr[7 * rows : 7 * rows + n_in]
    st = ip[W_STATE]
    zero = fp.dtype.type(0.0)
    fused = ip[SOLVER] == SOLVER_FUSED
    for lane in range(nb):
        for j in range(u):
            v[j, lane] = work[b0 + lane, st + j]
        for i in range(n_in):
            xm[i, lane] = xs[b0 + lane, i] * fp[ip[IN_W] + i] + fp[ip[IN_B] + i]
        dt = elapsed[b0 + lane] / ip[UNFOLDS]
        if fused:
            for j in range(u):
                cmt[j, lane] = fp[ip[CM] + j] / dt
        else:
            cmt[0, lane] = dt  # h of this lane
    for j in range(u):
        for lane in range(nb):
            nums[j, lane] = zero
            dens[j, lane] = zero
    _chunk_synapses(
        xm, fp, ip, ip[SSYN], ip[SNNZ], ip[SSYN_COUNT], ip[SSYN_SRC], ip[SSYN_DST], nums, dens, nb
    )
    if not fused:
        _chunk_explicit(v, vn, scr[8 * rows : 8 * rows + u], cmt[0], fp, ip, nums, dens, numr, denr, nb)
    else:
        eps = fp[ip[EPS]]
        for _ in range(ip[UNFOLDS]):
            for j in range(u):
                for lane in range(nb):
                    numr[j, lane] = nums[j, lane]
                    denr[j, lane] = dens[j, lane]
            _chunk_synapses(
                v, fp, ip, ip[SYN], ip[NNZ], ip[SYN_COUNT], ip[SYN_SRC], ip[SYN_DST], numr, denr, nb
            )
            for j in range(u):
                g = fp[ip[GLEAK] + j]
                gv = fp[ip[GLEAK_VLEAK] + j]
                vr, vnr, nr, dr, cr = v[j], vn[j], numr[j], denr[j], cmt[j]
                for lane in range(nb):
                    vnr[lane] = (cr[lane] * vr[lane] + gv + nr[lane]) / (cr[lane] + g + dr[lane] + eps)
            for j in range(u):
                for lane in range(nb):
                    v[j, lane] = vn[j, lane]
    y = ip[W_Y]
    for lane in range(nb):
        ok = True
        for j in range(u):
            if not math.isfinite(v[j, lane]):
                ok = False
        if not ok:
            bad[b0 + lane] = STATUS_BAD_OUTPUT
            continue
        bad[b0 + lane] = STATUS_OK
        row = work[b0 + lane]
        for j in range(u):
            row[st + j] = v[j, lane]
        for k in range(ip[MOTORS]):
            row[y + k] = v[k, lane] * fp[ip[OUT_W] + k] + fp[ip[OUT_B] + k]


@njit(parallel=True, **_OPTS)
def step_batch(xs, elapsed, fp, ip, work, bad, scratch):
    """One step for B instances [B, I], each with its own elapsed [B]; parallel over B.

    Non-mixed models run in chunks of :data:`CHUNK` instances with the SIMD lanes
    across instances (same synapse, different instance: no gathers); mixed-memory
    models step instance by instance. ``scratch`` [threads, batch_scratch_size] and
    ``bad`` [B] int64 are caller-owned. Returns (status, b) with b the first
    offending row (or -1); all rows are validated before any state changes.
    """
    b_count = xs.shape[0]
    status = _check_solver(ip)
    if status != STATUS_OK:
        return status, -1
    for b in range(b_count):
        status = _check(xs[b], elapsed[b])
        if status != STATUS_OK:
            return status, b
    if ip[MIXED]:
        for b in prange(b_count):
            bad[b] = step(xs[b], elapsed[b], fp, ip, work[b])
    else:
        n_chunks = (b_count + CHUNK - 1) // CHUNK
        rows = max(ip[UNITS], ip[N_IN])
        for c in prange(n_chunks):
            b0 = c * CHUNK
            nb = min(CHUNK, b_count - b0)
            scr = scratch[get_thread_id()].reshape((_SCR_FIELDS * rows, CHUNK))
            _chunk_step(xs, elapsed, fp, ip, work, bad, scr, b0, nb)
    for b in range(b_count):
        if bad[b] != STATUS_OK:
            return bad[b], b
    return STATUS_OK, -1


@njit(parallel=True, **_OPTS)
def run_batch(xs, elapsed, fp, ip, work, ys, bad):
    """Sequences [T, B, I] with elapsed [T, B] -> ys [T, B, M]; instances in parallel."""
    t_count, b_count = xs.shape[0], xs.shape[1]
    for t in range(t_count):
        for b in range(b_count):
            status = _check(xs[t, b], elapsed[t, b])
            if status != STATUS_OK:
                return status, t * b_count + b
    m = ip[MOTORS]
    y = ip[W_Y]
    for b in prange(b_count):
        bad[b] = STATUS_OK
        for t in range(t_count):
            s = step(xs[t, b], elapsed[t, b], fp, ip, work[b])
            if s != STATUS_OK:
                bad[b] = s
                break
            for k in range(m):
                ys[t, b, k] = work[b, y + k]
    for b in range(b_count):
        if bad[b] != STATUS_OK:
            return bad[b], b
    return STATUS_OK, -1


# Channel-map layout for control_step (float64 array ``chan``), n = inputs, m = outputs:
#   [0:n) in_lo  [n:2n) in_hi  [2n:3n) in_offset  [3n:4n) in_scale
#   then per output (m each): out_scale, out_offset, out_lo, out_hi, max_rate, last, u
#   then one slot (the last): how many input samples the input clip changed (a running count)
CH_OUT_SCALE, CH_OUT_OFFSET, CH_OUT_LO, CH_OUT_HI, CH_RATE, CH_LAST, CH_U = range(7)


@njit(**_OPTS)
def map_inputs(raw, chan, xbuf):
    """Raw sensors -> clip/offset/scale -> ``xbuf``; counts clipped inputs into ``chan[-1]``.

    Part of every cell's fused control step. Returns a kernel status (non-finite input).
    """
    n = raw.shape[0]
    clipped = 0
    for i in range(n):
        r = raw[i]
        if not math.isfinite(r):
            return STATUS_BAD_INPUT
        c = min(max(r, chan[i]), chan[n + i])
        clipped += c != r
        xbuf[i] = (c - chan[2 * n + i]) * chan[3 * n + i]
    chan[chan.shape[0] - 1] += clipped
    return STATUS_OK


@njit(**_OPTS)
def map_outputs(work, y0, m, n, dt_s, chan):
    """Policy outputs ``work[y0:y0+m]`` -> scale/offset/clip -> rate limit -> ``chan``'s u block.

    Part of every cell's fused control step; on a non-finite output nothing changes.
    """
    for k in range(m):
        if not math.isfinite(work[y0 + k]):
            return STATUS_BAD_OUTPUT
    base = 4 * n
    for k in range(m):
        u = work[y0 + k] * chan[base + CH_OUT_SCALE * m + k] + chan[base + CH_OUT_OFFSET * m + k]
        u = min(max(u, chan[base + CH_OUT_LO * m + k]), chan[base + CH_OUT_HI * m + k])
        last = chan[base + CH_LAST * m + k]
        step_max = chan[base + CH_RATE * m + k] * max(dt_s, 0.0)
        u = min(max(u, last - step_max), last + step_max)
        chan[base + CH_LAST * m + k] = u
        chan[base + CH_U * m + k] = u
    return STATUS_OK


@njit(**_OPTS)
def control_step(raw, elapsed, dt_s, chan, xbuf, fp, ip, work):
    """The node's whole compute for one cycle, in one call.

    raw sensors -> clip/offset/scale -> policy step -> scale/offset/clip -> rate limit;
    the command lands in ``chan`` (u block) and becomes the rate limiter's ``last``; the
    number of inputs the clip changed is added to ``chan[-1]`` (once all inputs are finite).
    Returns a kernel status; on failure neither the state nor ``last`` change.
    """
    status = map_inputs(raw, chan, xbuf)
    if status != STATUS_OK:
        return status
    status = step(xbuf, elapsed, fp, ip, work)
    if status != STATUS_OK:
        return status
    return map_outputs(work, ip[W_Y], ip[MOTORS], raw.shape[0], dt_s, chan)
