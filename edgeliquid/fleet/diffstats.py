"""One compiled pass over a recording's outputs: the per-channel |difference| statistics of
``fleet replay`` (max, sum, count, steps over the threshold, first step over, non-finite
mismatches, histogram bins), the first divergence and the mode changes that differ.

Semantics (per channel c, step t): a pair is *comparable* when both values are finite; its
difference is |got - ref|. A step is *over* when comparable and over the threshold, or when
exactly one side is non-finite. Modes are the recorded ones, SAFE where a row of outputs is
not all finite (the node fails safe); a mode change present in one sequence and not the
other (or to a different mode) counts.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

MODE_SAFE = 2


@njit(cache=True, nogil=True)
def diff_pass(got, ref, mode, threshold, edges, diffs, fl, it, hist):
    """Fill, per channel c: ``diffs[c, :n]`` the comparable |differences| in step order;
    ``fl[c]`` = (max, sum); ``it[c]`` = (n, over, first over or -1, non-finite mismatches);
    ``hist[c]`` counts of ``searchsorted(edges, d, 'right')``. Returns (first step over on any
    channel, first that differs at all, mode changes that differ, first such step), -1 for none.
    """
    t_count, m = got.shape
    n_edges = edges.shape[0]
    for c in range(m):
        fl[c, 0] = 0.0
        fl[c, 1] = 0.0
        for j in range(4):
            it[c, j] = 0
        it[c, 2] = -1
        for j in range(hist.shape[1]):
            hist[c, j] = 0
    first_over = -1
    first_diff = -1
    n_mode = 0
    first_mode = -1
    prev_g = prev_r = 0
    for t in range(t_count):
        row_over = False
        row_diff = False
        fin_g = True
        fin_r = True
        for c in range(m):
            g, r = got[t, c], ref[t, c]
            ig, ir = math.isfinite(g), math.isfinite(r)
            fin_g &= ig
            fin_r &= ir
            if ig and ir:
                d = abs(g - r)
                k = it[c, 0]
                diffs[c, k] = d
                it[c, 0] = k + 1
                if k == 0 or d > fl[c, 0]:
                    fl[c, 0] = d
                fl[c, 1] += d
                # searchsorted(edges, d, side="right"): the first edge > d
                lo, hi = 0, n_edges
                while lo < hi:
                    mid = (lo + hi) >> 1
                    if edges[mid] <= d:
                        lo = mid + 1
                    else:
                        hi = mid
                hist[c, lo] += 1
                over = d > threshold
                if d > 0:
                    row_diff = True
            elif ig or ir:  # exactly one side non-finite
                over = True
                it[c, 3] += 1
            else:
                over = False
            if over:
                it[c, 1] += 1
                if it[c, 2] < 0:
                    it[c, 2] = t
                row_over = True
        if row_over and first_over < 0:
            first_over = t
        if (row_over or row_diff) and first_diff < 0:
            first_diff = t
        mg = mode[t] if fin_g else MODE_SAFE
        mr = mode[t] if fin_r else MODE_SAFE
        if t > 0:
            cg, cr = mg != prev_g, mr != prev_r
            if cg != cr or (cg and cr and mg != mr):
                n_mode += 1
                if first_mode < 0:
                    first_mode = t
        prev_g, prev_r = mg, mr
    return first_over, first_diff, n_mode, first_mode


def percentile(a: np.ndarray, q: float) -> float:
    """``np.percentile(a, q)`` (method "linear"), bit for bit, from a partial sort of two values."""
    n = a.shape[0]
    vi = (n - 1) * np.true_divide(q, 100)
    lo = int(np.floor(vi))
    hi = min(lo + 1, n - 1)
    part = np.partition(a, [lo, hi] if hi != lo else [lo])
    av, bv = part[lo], part[hi]
    gamma = vi - lo
    diff = bv - av
    # numpy's _lerp: a + (b - a) t, or b - (b - a)(1 - t) where t >= 0.5
    return float(bv - diff * (1 - gamma) if gamma >= 0.5 else av + diff * gamma)
