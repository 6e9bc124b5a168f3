"""Glue to the fused cpu kernels (``control_step`` of the policy's kernel module, LTC or CfC, and
the node's per-frame kernel in :mod:`.framecodec`): the kernel and its arrays, and warming them up."""

from __future__ import annotations

import numpy as np


def fast_arrays(policy):
    """The cpu kernel's arrays for the fused fast path, or None (numpy path)."""
    if policy.backend == "cpu" and policy.batch is None:
        return policy._fp, policy._ip, policy._work
    return None


def fused_kernel(policy):
    """The fused ``control_step`` for this policy's cell (each cell's kernel module has one)."""
    return policy._k.control_step


def warm_fused(policy, chan: np.ndarray) -> None:
    """Compile/load the fused kernel now, on copies, so the first tick pays no JIT."""
    fast = fast_arrays(policy)
    if fast is not None:
        fp, ip, work = fast
        fused_kernel(policy)(
            np.zeros(policy.n_inputs),
            1.0,
            0.0,
            chan.copy(),
            np.zeros(policy.n_inputs, policy.dtype),
            fp,
            ip,
            work.copy(),
        )
        # and the one-call-per-frame kernel (framecodec), so a reload swaps in without a JIT
        from . import framecodec as F

        fs = F.FrameState(policy.n_inputs, 1.0, 1.0)
        F.frame_kernel(policy)(
            F.OP_TICK,
            0,
            0,
            0,
            0,
            fs.buf,
            fs.st,
            fs.fv,
            chan.copy(),
            np.zeros(policy.n_inputs, policy.dtype),
            fp,
            ip,
            work.copy(),
        )
