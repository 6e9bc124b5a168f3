"""The sweep's control periods, compiled: the pass over the rows around the policy, and for a
plain LTC policy the whole rollout in one call.

:func:`act_sense_row` is one row's work between two policy steps (see :mod:`.sweep`).
:func:`act_sense` runs it over every row (parallel), a period at a time, around the policy's
batch kernel: two parallel regions a period, every thread waiting for the slowest at each.
Rows never interact, so :func:`rollout_ltc` instead gives each :data:`~..runtime.kernels.CHUNK`
of rows to one thread for the whole rollout: that row function, then the LTC batch kernel's
own chunk step (``kernels._chunk_step``, the code ``step_batch`` runs for these rows, compiled
with the same flags), period after period, with no barrier and the chunk's state in cache.
Same arithmetic, same results (a test checks them against the period-by-period loop).
"""

from __future__ import annotations

from numba import get_thread_id, njit, prange

from ..runtime.kernels import _OPTS, _SCR_FIELDS, CHUNK, STATUS_OK, _check, _check_solver, _chunk_step
from ..runtime.packing import MOTORS, N_IN, UNITS, W_Y
from . import plant as pl


# Plain IEEE arithmetic (no fastmath): the plant is the simulator's, bit for bit. error_model
# numpy: no exception paths (nothing here divides by zero: rates, masses and lengths are > 0).
@njit(cache=True, error_model="numpy")
def act_sense_row(
    b,
    k,
    ys,
    last,
    states,
    cmd_ring,
    delay,
    params,
    noise,
    jitter,
    period,
    keys,
    alive,
    t_s,
    fail_s,
    sum_abs,
    n_alive,
    chan,
    n_in,
    model_dt,
    xs,
    elapsed,
    dt,
    bal_rad,
    bal_x,
):
    """Row ``b``: period k-1's second half (output map, rate limit, into the delay line: output
    0 of ``ys``), then period k's first half (jitter, plant under the delayed command, failure,
    sensing into ``xs[b]``, ``elapsed[b]``). The row's random numbers are its key's counters
    ``4 + counters_per_step(n_in) * k + ...`` (0..3: the initial state)."""
    depth = cmd_ring.shape[1]
    o = 4 * n_in
    m = ys.shape[1]
    per = 1 + 2 * ((n_in + 1) // 2)
    if k > 0:
        u = ys[b, 0] * chan[o] + chan[o + m]
        u = min(max(u, chan[o + 2 * m]), chan[o + 3 * m])
        step_max = chan[o + 4 * m] * max(dt[b], 0.0)
        u = min(max(u, last[b] - step_max), last[b] + step_max)
        last[b] = u
        cmd_ring[b, (k - 1) % depth] = u
    key = keys[b]
    c = 4 + per * k
    d = period * (1.0 + jitter[b] * (2.0 * pl.uniform(key, c) - 1.0))
    dt[b] = d
    s = states[b]
    if alive[b]:
        u = cmd_ring[b, (k - 1 - delay[b]) % depth] if k - 1 - delay[b] >= 0 else 0.0
        pl.step_row(s, u, d, params[b], 4)
        t_s[b] += d
        th, x = s[2], s[0]
        if not (abs(th) < bal_rad and abs(x) < bal_x):
            alive[b] = False
            fail_s[b] = t_s[b]
        else:
            sum_abs[b] += abs(th)
            n_alive[b] += 1
    sig = noise[b]
    for j in range(0, n_in, 2):
        if sig > 0:
            z0, z1 = pl.normal_pair(key, c + 1 + j)
            r0, r1 = s[j] + sig * z0, s[j + 1] + sig * z1 if j + 1 < n_in else 0.0
        else:
            r0, r1 = s[j], s[j + 1] if j + 1 < n_in else 0.0
        r0 = min(max(r0, chan[j]), chan[n_in + j])
        xs[b, j] = (r0 - chan[2 * n_in + j]) * chan[3 * n_in + j]
        if j + 1 < n_in:
            r1 = min(max(r1, chan[j + 1]), chan[n_in + j + 1])
            xs[b, j + 1] = (r1 - chan[2 * n_in + j + 1]) * chan[3 * n_in + j + 1]
    elapsed[b] = d / model_dt


@njit(cache=True, parallel=True)
def act_sense(
    k,
    ys,
    last,
    states,
    cmd_ring,
    delay,
    params,
    noise,
    jitter,
    period,
    keys,
    alive,
    t_s,
    fail_s,
    sum_abs,
    n_alive,
    chan,
    n_in,
    model_dt,
    xs,
    elapsed,
    dt,
    bal_rad,
    bal_x,
):
    """:func:`act_sense_row` for every row, in parallel (one period; any policy after it)."""
    for b in prange(states.shape[0]):
        act_sense_row(
            b,
            k,
            ys,
            last,
            states,
            cmd_ring,
            delay,
            params,
            noise,
            jitter,
            period,
            keys,
            alive,
            t_s,
            fail_s,
            sum_abs,
            n_alive,
            chan,
            n_in,
            model_dt,
            xs,
            elapsed,
            dt,
            bal_rad,
            bal_x,
        )


# The policy's flags (fastmath etc.): the inlined chunk step compiles as in step_batch.
@njit(**_OPTS)
def _policy_chunk(xs, elapsed, fp, ip, work, bad, scratch, b0, nb):
    """step_batch for rows b0 .. b0+nb-1 (one chunk): every row's inputs checked, then the
    chunk step; (status, first offending row or -1)."""
    for b in range(b0, b0 + nb):
        st = _check(xs[b], elapsed[b])
        if st != STATUS_OK:
            return st, b
    scr = scratch[get_thread_id()].reshape((_SCR_FIELDS * max(ip[UNITS], ip[N_IN]), CHUNK))
    _chunk_step(xs, elapsed, fp, ip, work, bad, scr, b0, nb)
    for b in range(b0, b0 + nb):
        if bad[b] != STATUS_OK:
            return bad[b], b
    return STATUS_OK, -1


# Plain flags, like act_sense_row: a fastmath caller lets LLVM contract the plant's arithmetic
# (FMA) once act_sense_row is inlined into it, and the rollout would round differently from
# the simulator. The policy's part keeps its own flags in _policy_chunk.
@njit(cache=True, error_model="numpy")
def _chunk_rollout(
    c,
    steps,
    last,
    states,
    cmd_ring,
    delay,
    params,
    noise,
    jitter,
    period,
    keys,
    alive,
    t_s,
    fail_s,
    sum_abs,
    n_alive,
    chan,
    n_in,
    model_dt,
    xs,
    elapsed,
    dt,
    bal_rad,
    bal_x,
    fp,
    ip,
    work,
    bad,
    scratch,
    fails,
):
    """Chunk ``c``'s rows through every period (see :func:`rollout_ltc`)."""
    y0 = ip[W_Y]
    ys = work[:, y0 : y0 + ip[MOTORS]]
    b0 = c * CHUNK
    nb = min(CHUNK, states.shape[0] - b0)
    for k in range(steps):
        for b in range(b0, b0 + nb):
            act_sense_row(
                b,
                k,
                ys,
                last,
                states,
                cmd_ring,
                delay,
                params,
                noise,
                jitter,
                period,
                keys,
                alive,
                t_s,
                fail_s,
                sum_abs,
                n_alive,
                chan,
                n_in,
                model_dt,
                xs,
                elapsed,
                dt,
                bal_rad,
                bal_x,
            )
        st, at = _policy_chunk(xs, elapsed, fp, ip, work, bad, scratch, b0, nb)
        if st != STATUS_OK:
            fails[c, 0], fails[c, 1], fails[c, 2] = k, at, st
            return


@njit(cache=True, parallel=True, error_model="numpy")
def rollout_ltc(
    steps,
    last,
    states,
    cmd_ring,
    delay,
    params,
    noise,
    jitter,
    period,
    keys,
    alive,
    t_s,
    fail_s,
    sum_abs,
    n_alive,
    chan,
    n_in,
    model_dt,
    xs,
    elapsed,
    dt,
    bal_rad,
    bal_x,
    fp,
    ip,
    work,
    bad,
    scratch,
    fails,
):
    """``steps`` periods of every row: per chunk of rows (one thread each, no barrier),
    :func:`act_sense_row` then the LTC chunk step, period after period. The policy is a
    non-mixed LTC ``CpuPolicy`` (``fp``, ``ip``, ``work``, ``bad``, ``scratch``: its arrays).

    A chunk stops at its first bad period: ``fails[c]`` = (period, row, status) as
    ``step_batch`` would report it (inputs of every row of the chunk checked before stepping),
    else stays -1. The solver check fails chunk 0 at period 0, row -1.
    """
    solver = _check_solver(ip)  # integers only: the flags do not matter
    if solver != STATUS_OK:
        fails[0, 0], fails[0, 1], fails[0, 2] = 0, -1, solver
        return
    for c in prange((states.shape[0] + CHUNK - 1) // CHUNK):
        _chunk_rollout(
            c,
            steps,
            last,
            states,
            cmd_ring,
            delay,
            params,
            noise,
            jitter,
            period,
            keys,
            alive,
            t_s,
            fail_s,
            sum_abs,
            n_alive,
            chan,
            n_in,
            model_dt,
            xs,
            elapsed,
            dt,
            bal_rad,
            bal_x,
            fp,
            ip,
            work,
            bad,
            scratch,
            fails,
        )
