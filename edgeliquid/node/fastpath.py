"""Glue to the fused cpu kernel (``kernels.control_step``): its arrays, and warming it up."""

from __future__ import annotations

import numpy as np

from ..runtime import kernels


def fast_arrays(policy):
    """The cpu kernel's arrays for the fused fast path, or None (numpy path).

    The fused ``control_step`` kernel embeds the LTC step; other cells take the generic path.
    """
    if policy.backend == "cpu" and policy.batch is None and getattr(policy, "cell", "ltc") == "ltc":
        return policy._fp, policy._ip, policy._work
    return None


def warm_fused(policy, chan: np.ndarray) -> None:
    """Compile/load the fused kernel now, on copies, so the first tick pays no JIT."""
    fast = fast_arrays(policy)
    if fast is not None:
        fp, ip, work = fast
        kernels.control_step(
            np.zeros(policy.n_inputs),
            1.0,
            0.0,
            chan.copy(),
            np.zeros(policy.n_inputs, policy.dtype),
            fp,
            ip,
            work.copy(),
        )
