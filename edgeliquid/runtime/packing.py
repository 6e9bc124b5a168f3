"""Pack a model into the two flat arrays the numba kernels take.

numba's dispatcher costs about 0.1-0.15 µs per argument, more than the arithmetic
of a small NCP step, so the kernels take just ``x``, ``elapsed``, ``fp`` (every
float parameter), ``ip`` (sizes, offsets, synapse indices) and ``work`` (state
and scratch). The header of ``ip`` is the table below; offsets point into ``fp``
unless marked *ip* or *work*.

Synapses are stored by destination neuron (CSR), only those that exist, each
with (w, sigma, mu, erev) in four parallel blocks; positivity is applied here,
once. A layer whose every synapse exists is flagged dense so the kernel reads
presynaptic potentials contiguously instead of gathering them.

``ip[SOLVER]`` selects the integration scheme (:data:`SOLVER_CODES`); the kernels
branch on it once per step. The explicit schemes multiply by ``inv_cm`` (1/cm,
computed here in float64) instead of dividing per neuron per sub-step, and RK4
keeps its stage input in the work row's ``W_STAGE`` block.
"""

from __future__ import annotations

import numpy as np

from ..errors import BackendError
from ..model.cell import LTCModel, effective_parameters

# ip header (int64)
N_IN, UNITS, MOTORS, UNFOLDS, MIXED, N_STATE = 0, 1, 2, 3, 4, 5
CM, GLEAK, GLEAK_VLEAK, IN_W, IN_B, OUT_W, OUT_B = 6, 7, 8, 9, 10, 11, 12
SYN, NNZ, SYN_PTR, SYN_SRC, SYN_DENSE = 13, 14, 15, 16, 17  # recurrent
SSYN, SNNZ, SSYN_PTR, SSYN_SRC, SSYN_DENSE = 18, 19, 20, 21, 22  # sensory
LSTM_WI, LSTM_BI, LSTM_WR = 23, 24, 25
EPS = 26  # fp offset of epsilon
# work layout (offsets into one instance's work row)
(W_STATE, W_V, W_VNEXT, W_XM, W_NUMS, W_DENS, W_CMT, W_Y, W_Z, W_NUMR, W_ACT, W_SIZE) = range(27, 39)
SYN_DST, SSYN_DST = 39, 40  # ip: destination per synapse
SOLVER = 41  # solver code (SOLVER_CODES)
INV_CM = 42  # fp offset of 1/cm (explicit schemes)
W_STAGE = 43  # work: RK4 stage input v + c*h*k (u floats; 0 for the other solvers)
EXPL_C = 44  # fp offset of [1/ode_unfolds, 1/2, 1/6, 2]: explicit-scheme constants in the fp dtype
# 1: mixed_memory_coupling = input (ncps.keras): the LSTM output is the cell's input (U values,
# mapped by input_w/input_b into W_XM) and the cell starts from its own state
MM_INPUT = 45
# Synapses that exist per layer. NNZ/SNNZ are the padded block lengths (see SYN_PAD): the
# single-instance kernel runs all of them (whole vectors, padding adds exact zeros), the
# batch and CUDA kernels only these.
SYN_COUNT, SSYN_COUNT = 46, 47
HEADER = 48

#: ``ip[SOLVER]`` per ``edgeliquid.solver`` name.
SOLVER_FUSED, SOLVER_EULER, SOLVER_RK4 = 0, 1, 2
#: Synapse blocks are padded to a multiple of this many (one AVX2 float32 vector).
SYN_PAD = 8
SOLVER_CODES = {
    "fused_semi_implicit_euler": SOLVER_FUSED,
    "explicit_euler": SOLVER_EULER,
    "rk4": SOLVER_RK4,
}


class Packed:
    """``fp``/``ip`` arrays for one model at one dtype, plus the work-row size."""

    def __init__(self, model: LTCModel, dtype=np.float32):
        cfg = model.config
        if cfg.solver not in SOLVER_CODES:
            raise BackendError(
                f"{model.source}: edgeliquid.solver {cfg.solver!r} unknown to the compiled kernels; "
                f"expected one of {sorted(SOLVER_CODES)}"
            )
        self.dtype = np.dtype(dtype)
        p = effective_parameters(model, np.float64)
        u, n_in, m = cfg.units, cfg.n_inputs, cfg.motor_size
        floats: list[np.ndarray] = []
        ints: list[np.ndarray] = []
        ip = np.zeros(HEADER, dtype=np.int64)
        ip[[N_IN, UNITS, MOTORS, UNFOLDS, MIXED, N_STATE]] = (
            n_in,
            u,
            m,
            cfg.ode_unfolds,
            int(cfg.mixed_memory),
            cfg.n_state,
        )
        ip[SOLVER] = SOLVER_CODES[cfg.solver]
        ip[MM_INPUT] = int(cfg.mixed_memory and cfg.mixed_memory_coupling == "input")
        fsize = 0
        isize = HEADER

        def put_f(arr) -> int:
            nonlocal fsize
            off = fsize
            a = np.ascontiguousarray(arr, dtype=np.float64).ravel()
            floats.append(a)
            fsize += a.size
            return off

        def put_i(arr) -> int:
            nonlocal isize
            off = isize
            a = np.ascontiguousarray(arr, dtype=np.int64).ravel()
            ints.append(a)
            isize += a.size
            return off

        ip[EPS] = put_f([cfg.epsilon])
        ip[CM] = put_f(p["cm"])
        ip[GLEAK] = put_f(p["gleak"])
        ip[GLEAK_VLEAK] = put_f(p["gleak"] * p["vleak"])
        with np.errstate(divide="ignore"):  # cm = 0: inf, and the step reports a non-finite state
            ip[INV_CM] = put_f(1.0 / p["cm"])
        # In fp so that a kernel generic over the dtype (CUDA) keeps float32 math in float32.
        ip[EXPL_C] = put_f([1.0 / cfg.ode_unfolds, 0.5, 1.0 / 6.0, 2.0])
        ip[IN_W], ip[IN_B] = put_f(p["input_w"]), put_f(p["input_b"])
        ip[OUT_W], ip[OUT_B] = put_f(p["output_w"]), put_f(p["output_b"])

        def put_synapses(w, sigma, mu, erev, mask, keys):
            base, nnz, ptr, src, dense, dst, count = keys
            exists = mask.T != 0  # [dest, src]
            ptrs = np.concatenate([[0], np.cumsum(exists.sum(axis=1))])
            dst_idx, src_idx = np.nonzero(exists)
            if not exists.all():
                # Sparse: interleave destinations (each neuron's 1st synapse, then each one's 2nd,
                # ...) so consecutive scatter-adds hit different neurons instead of waiting on one
                # another's store; each neuron still sums its own synapses in CSR order.
                rank = np.arange(len(dst_idx)) - ptrs[dst_idx]
                order = np.lexsort((dst_idx, rank))
                dst_idx, src_idx = dst_idx[order], src_idx[order]
            # Padded to whole SIMD vectors with null synapses (w = 0: each adds exactly 0 to the
            # sums of the neuron it names, spread over neurons 0, 1, ... so the adds do not chain),
            # so the single-instance synapse loop never runs its scalar tail.
            pad = -len(src_idx) % SYN_PAD
            ip[count] = len(src_idx)
            ip[nnz] = len(src_idx) + pad

            def padded(a):
                return np.concatenate([a.T[dst_idx, src_idx], np.zeros(pad)])

            # Mask folded into w: ncps multiplies by the mask, which is 0/1 (abs of ±1).
            ip[base] = put_f(padded(w * mask))
            put_f(padded(sigma))
            put_f(padded(mu))
            put_f(padded(erev))
            src_idx = np.concatenate([src_idx, np.zeros(pad, np.int64)])
            dst_idx = np.concatenate([dst_idx, np.arange(pad) % mask.shape[1]])
            ip[ptr] = put_i(ptrs)
            ip[src] = put_i(src_idx)
            ip[dst] = put_i(dst_idx)
            ip[dense] = int(exists.all())

        put_synapses(
            p["w"],
            p["sigma"],
            p["mu"],
            p["erev"],
            p["sparsity_mask"],
            (SYN, NNZ, SYN_PTR, SYN_SRC, SYN_DENSE, SYN_DST, SYN_COUNT),
        )
        put_synapses(
            p["sensory_w"],
            p["sensory_sigma"],
            p["sensory_mu"],
            p["sensory_erev"],
            p["sensory_sparsity_mask"],
            (SSYN, SNNZ, SSYN_PTR, SSYN_SRC, SSYN_DENSE, SSYN_DST, SSYN_COUNT),
        )
        if cfg.mixed_memory:
            ip[LSTM_WI] = put_f(p["lstm.input_map.weight"])
            ip[LSTM_BI] = put_f(p["lstm.input_map.bias"])
            ip[LSTM_WR] = put_f(p["lstm.recurrent_map.weight"])
        off = 0
        for key, size in (
            (W_STATE, cfg.n_state),
            (W_V, u),
            (W_VNEXT, u),
            (W_XM, cfg.cell_inputs),
            (W_NUMS, u),
            (W_DENS, u),
            (W_CMT, u),
            (W_Y, m),
            (W_Z, 4 * u if cfg.mixed_memory else 0),
            (W_NUMR, 2 * u),
            (W_ACT, 2 * max(ip[NNZ], ip[SNNZ])),
            (W_STAGE, u if cfg.solver == "rk4" else 0),
        ):
            ip[key] = off
            off += size
        ip[W_SIZE] = off
        self.fp = np.concatenate(floats).astype(self.dtype)
        self.ip = np.concatenate([ip] + ints)
        self.work_size = int(off)
