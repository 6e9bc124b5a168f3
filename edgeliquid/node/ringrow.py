"""One recorded step into the shared-memory ring of :class:`.recorder_process.ProcessRecorder`,
as one compiled call (the row layout is the ring's: x, y, u, elapsed | seq, t_us, mode, reset,
the five stage times). Its own module so the writer process never imports numba."""

from numba import njit


@njit(cache=True, nogil=True, boundscheck=False)
def put_row(f, i, k, x, y, u, elapsed, seq, t_us, mode, reset, t0, t1, t2, t3, t4):  # pragma: no cover
    """Row ``k`` of the ring: x, y, u, elapsed; seq, t_us, mode, reset and the five stage times."""
    row = f[k]
    n_in, n_out = x.shape[0], y.shape[0]
    for j in range(n_in):
        row[j] = x[j]
    for j in range(n_out):
        row[n_in + j] = y[j]
    for j in range(u.shape[0]):
        row[n_in + n_out + j] = u[j]
    row[row.shape[0] - 1] = elapsed
    r = i[k]
    r[0], r[1], r[2], r[3] = seq, t_us, mode, reset
    r[4], r[5], r[6], r[7], r[8] = t0, t1, t2, t3, t4
