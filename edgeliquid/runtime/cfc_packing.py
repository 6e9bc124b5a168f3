"""Pack a CfC model into the flat ``fp``/``ip`` arrays of :mod:`edgeliquid.runtime.cfc_kernels`.

Same convention as :mod:`edgeliquid.runtime.packing` (one dispatch, few arguments): ``fp``
holds every float parameter, ``ip`` an int64 header (the table below), then a backbone table
(``BB_REC`` ints per Linear) and a sub-cell table (``L_REC`` ints per CfC sub-cell: one
unwired, one per wiring layer wired), then sparse indices.

Dense weights are stored column-major (``[in, out]``): the kernel's matrix-vector product is
then one ``out += W[:, i] * z[i]`` per input, contiguous over outputs, which vectorises
without horizontal sums. A sub-cell's dense heads sit side by side (``[ff1|ff2|time_a|time_b]``
or just ``ff1`` in pure mode) so one product computes them all. The sparsity mask is folded
into the ff1/ff2 weights (ncps multiplies by it; it does not touch time_a/time_b). A
``formulation = keras`` model has time_a packed negated and the ``KERAS`` header flag set. In a
*sparse* sub-cell ff1/ff2 keep only their existing synapses (CSR by destination) and the
dense product covers time_a/time_b only.
"""

from __future__ import annotations

import numpy as np

from ..model.cfc import ACTIVATIONS, CFC_MODES, CfCModel

# ip header (int64)
N_IN, UNITS, N_STATE, MIXED, MODE, ACT, N_CELLS, N_BB, MOTORS, PROJ, N_OUT = range(11)
LSTM_WI, LSTM_BI, LSTM_WR, FC_W, FC_B, BB_TAB, CELL_TAB, MOTOR_OFF = range(11, 19)
# work layout (offsets into one instance's work row)
W_STATE, W_H, W_C, W_LZ, W_Z, W_B0, W_B1, W_HEADS, W_HNEW, W_ACT, W_Y, W_SIZE = range(19, 31)
# 1: ncps.keras formulation: no tanh on ff1/ff2 (time_a is packed negated, so the gate is
# the torch expression sigmoid(time_a * ts + time_b) on the packed weights)
KERAS = 31
# scratch rows of the chunked batch kernels (one row per value, CHUNK lanes per row): x right
# before the first sub-cell's h and each sub-cell's new h right before the next one's h, so a
# sub-cell's heads input [input, h] is already one contiguous block (no copies); see _chunk_rows
C_X, C_B0, C_B1, C_HEADS, C_Y, C_TS, C_OK, C_ROWS = range(32, 40)
# 1: mixed_memory_coupling = input (ncps.keras): the LSTM output (U values, kept in W_LZ) is the
# first sub-cell's input and the cells start from their own state
MM_INPUT = 40
HEADER = 41
# backbone record: inputs, outputs, weights (fp, [in, out]), bias (fp)
BB_IN, BB_OUT, BB_W, BB_B = range(4)
BB_REC = 4
# sub-cell record
L_IN, L_N, L_HOFF, L_HEADIN, L_NH, L_W, L_B, L_HDST = range(8)
L_SPARSE, L_NNZ, L_SW, L_SB, L_SRC, L_DST, L_TAU, L_A = range(8, 16)
# the sub-cell's h rows and new-h rows in the chunk scratch (C_* above)
L_CH, L_CHN = 16, 17
L_REC = 18

#: Masked sub-cells whose heads have at least this many inputs keep only existing synapses;
#: smaller ones run dense with the mask folded into the weights. At wiring sizes dense wins:
#: wired CfC on AutoNCP(19, 2), float32, ``run`` per step: dense 1.14 µs, sparse 2.19 µs
#: (the gather/scatter costs more than the zeros it skips), so the default never picks sparse;
#: ``CfCPacked(..., sparse=True)`` forces it (tested for equality).
SPARSE_MIN_HEAD_IN = 1 << 30


class CfCPacked:
    """``fp``/``ip`` arrays for one CfC model at one dtype, plus the work-row size.

    Args:
        sparse: None (choose per sub-cell), True (existing synapses only for masked heads),
            False (dense with the mask folded in).
    """

    def __init__(self, model: CfCModel, dtype=np.float32, sparse: bool | None = None):
        cfg = model.config
        self.dtype = np.dtype(dtype)
        p = {k: np.asarray(v, np.float64) for k, v in model.params.items()}
        floats: list[np.ndarray] = []
        ints: list[np.ndarray] = []
        fsize, isize = 0, HEADER
        ip = np.zeros(HEADER, np.int64)

        def put_f(arr) -> int:
            nonlocal fsize
            a = np.ascontiguousarray(arr, dtype=np.float64).ravel()
            floats.append(a)
            fsize += a.size
            return fsize - a.size

        def put_i(arr) -> int:
            nonlocal isize
            a = np.ascontiguousarray(arr, dtype=np.int64).ravel()
            ints.append(a)
            isize += a.size
            return isize - a.size

        u = cfg.units
        cells = cfg.layers()
        backbone = 0 if cfg.wired else cfg.backbone_layers
        ip[[N_IN, UNITS, N_STATE, MIXED, MODE, ACT, N_CELLS, N_BB]] = (
            cfg.n_inputs,
            u,
            cfg.n_state,
            int(cfg.mixed_memory),
            CFC_MODES.index(cfg.mode),
            ACTIVATIONS.index(cfg.activation),
            len(cells),
            backbone,
        )
        ip[MOTORS], ip[PROJ], ip[N_OUT] = cfg.motor_size, cfg.proj_size, cfg.n_outputs
        ip[MOTOR_OFF] = u - cfg.motor_size
        ip[KERAS] = int(cfg.keras)
        ip[MM_INPUT] = int(cfg.mixed_memory and cfg.mixed_memory_coupling == "input")
        if cfg.mixed_memory:
            ip[LSTM_WI] = put_f(p["lstm.input_map.weight"])
            ip[LSTM_BI] = put_f(p["lstm.input_map.bias"])
            ip[LSTM_WR] = put_f(p["lstm.recurrent_map.weight"])
        if cfg.proj_size:
            ip[FC_W] = put_f(p["fc.weight"].T)
            ip[FC_B] = put_f(p["fc.bias"])
        bb = np.zeros(max(backbone, 1) * BB_REC, np.int64)
        for k in range(backbone):
            w = p[f"backbone.{k}.weight"]
            wo, bo = put_f(w.T), put_f(p[f"backbone.{k}.bias"])
            bb[k * BB_REC : (k + 1) * BB_REC] = (w.shape[1], w.shape[0], wo, bo)
        ip[BB_TAB] = put_i(bb)
        heads = ("ff1",) if cfg.mode == "pure" else ("ff1", "ff2", "time_a", "time_b")
        masked = 1 if cfg.mode == "pure" else 2  # ff1 (and ff2) carry the mask
        tab = np.zeros(len(cells) * L_REC, np.int64)
        later: list[tuple[int, np.ndarray, np.ndarray]] = []
        hoff, max_n, max_cat, max_nnz = 0, 0, cfg.n_inputs + u, 0
        for c, (prefix, n_in, n) in enumerate(cells):
            rec = tab[c * L_REC : (c + 1) * L_REC]
            head_in = cfg.backbone_units if backbone else n_in + n
            mask = p.get(f"{prefix}sparsity_mask")
            is_sparse = mask is not None and (
                sparse if sparse is not None else (cfg.wired and head_in >= SPARSE_MIN_HEAD_IN)
            )
            # ncps.keras's gate is sigmoid(-time_a * ts + time_b): negating time_a here (exact)
            # lets every kernel keep the torch expression; the file keeps the raw weights.
            sign = {"time_a": -1.0} if cfg.keras else {}
            ws = [sign.get(h, 1.0) * p[f"{prefix}{h}.weight"] for h in heads]
            if mask is not None:
                ws = [w * mask if i < masked else w for i, w in enumerate(ws)]
            bs = [sign.get(h, 1.0) * p[f"{prefix}{h}.bias"] for h in heads]
            first = masked if is_sparse else 0
            rec[[L_IN, L_N, L_HOFF, L_HEADIN]] = n_in, n, hoff, head_in
            rec[L_NH] = len(heads) - first
            rec[L_HDST] = first * n
            rec[L_W] = put_f(np.concatenate(ws[first:], axis=0).T if ws[first:] else np.zeros(0))
            rec[L_B] = put_f(np.concatenate(bs[first:]) if bs[first:] else np.zeros(0))
            rec[L_SPARSE] = int(is_sparse)
            if is_sparse:
                dst, src = np.nonzero(mask != 0)  # row-major: grouped by destination
                rec[L_NNZ] = len(src)
                rec[L_SW] = put_f(np.concatenate([w[dst, src] for w in ws[:masked]]))
                rec[L_SB] = put_f(np.concatenate(bs[:masked]))
                later.append((c, src, dst))
                max_nnz = max(max_nnz, len(src))
            if cfg.mode == "pure":
                rec[L_TAU] = put_f(np.abs(p[f"{prefix}w_tau"]).ravel())
                rec[L_A] = put_f(p[f"{prefix}A"].ravel())
            hoff += n
            max_n = max(max_n, n)
            max_cat = max(max_cat, n_in + n)
        ip[CELL_TAB] = put_i(tab)
        base = np.concatenate([ip] + ints)
        extra = []
        for c, src, dst in later:
            off = base.size + sum(a.size for a in extra)
            base[ip[CELL_TAB] + c * L_REC + L_SRC] = off
            base[ip[CELL_TAB] + c * L_REC + L_DST] = off + src.size
            extra += [src.astype(np.int64), dst.astype(np.int64)]
        bu = cfg.backbone_units if backbone else 0
        off = 0
        layout = {}
        for key, size in (
            (W_STATE, cfg.n_state),
            (W_H, u),
            (W_C, u if cfg.mixed_memory else 0),
            (W_LZ, 4 * u if cfg.mixed_memory else 0),
            (W_Z, max_cat),
            (W_B0, bu),
            (W_B1, bu),
            (W_HEADS, 4 * max_n),
            (W_HNEW, u),
            (W_ACT, max_nnz),
            (W_Y, cfg.n_outputs),
        ):
            layout[key] = off
            off += size
        layout[W_SIZE] = off
        self.ip = np.concatenate([base] + extra)
        for key, v in layout.items():
            self.ip[key] = v
        self.fp = (np.concatenate(floats) if floats else np.zeros(1)).astype(self.dtype)
        self.work_size = int(off)
        _chunk_rows(self.ip, cfg.n_inputs, [n for _, _, n in cells], bu, max_n, cfg)
        # the chunk scratch is sized from the work row (cfc_kernels.batch_scratch_size)
        assert self.ip[C_ROWS] <= self.work_size + 1


def _chunk_rows(ip: np.ndarray, n_in: int, sizes: list[int], bu: int, max_n: int, cfg) -> None:
    """Fill the C_* header and each sub-cell's L_CH/L_CHN: the chunk scratch layout.

    Rows: x, then per sub-cell h and new h (so [x, h_0], [new h_0, h_1], ... are contiguous: the
    heads read their input in place), the backbone's two buffers, the heads, y (projection
    only), the per-lane elapsed, the per-lane finite flag.
    """
    row = 0
    ip[C_X] = row
    row += n_in
    for c, n in enumerate(sizes):
        rec = ip[CELL_TAB] + c * L_REC
        ip[rec + L_CH], ip[rec + L_CHN] = row, row + n
        row += 2 * n
    for key, size in (
        (C_B0, bu),
        (C_B1, bu),
        (C_HEADS, 4 * max_n),
        (C_Y, cfg.proj_size),
        (C_TS, 1),
        (C_OK, 1),
    ):
        ip[key] = row
        row += size
    ip[C_ROWS] = row
