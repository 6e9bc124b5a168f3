"""A vectorised cart-pole: many plants stepped in lockstep, the simulator's dynamics row by row.

:func:`step` is :meth:`edgeliquid.hil.sim.CartPole.step` for B rows at once (same constants,
same semi-implicit Euler substeps, same operation order, so a row equals the scalar simulator
bit for bit), with per-row parameters and an optional viscous cart friction (0: the simulator).
The counter-based random numbers make every row's noise a function of its own key and step
only, whatever batch it shares.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..hil.sim import CartPole

GRAVITY = CartPole.gravity
# per-row parameter columns
P_CART, P_POLE, P_HALF, P_FMAX, P_FRICTION = range(5)
N_PARAMS = 5


def default_params(rows: int) -> np.ndarray:
    """[rows, N_PARAMS] with the simulator's constants and no friction."""
    p = np.empty((rows, N_PARAMS))
    p[:] = (CartPole.m_cart, CartPole.m_pole, CartPole.half_len, CartPole.force_max, 0.0)
    return p


@njit(cache=True)
def step_row(s, force, dt, p, substeps):
    """One row: CartPole.step(force, dt) with parameters ``p`` (in place on ``s`` [4])."""
    m_cart, m_pole, half_len, fmax, fric = p[0], p[1], p[2], p[3], p[4]
    f = min(max(force, -fmax), fmax)
    h = dt / substeps
    for _ in range(substeps):
        x, xd, th, thd = s[0], s[1], s[2], s[3]
        total = m_cart + m_pole
        pml = m_pole * half_len
        ct, st = math.cos(th), math.sin(th)
        tmp = ((f - fric * xd) + pml * thd * thd * st) / total
        thacc = (GRAVITY * st - ct * tmp) / (half_len * (4.0 / 3.0 - m_pole * ct * ct / total))
        xacc = tmp - pml * thacc * ct / total
        xd += h * xacc
        thd += h * thacc
        s[0], s[1], s[2], s[3] = x + h * xd, xd, th + h * thd, thd


@njit(cache=True)
def step(states, force, dt, params, alive, substeps=4):
    """Advance every alive row of ``states`` [B, 4] by ``dt`` [B] under ``force`` [B]."""
    for b in range(states.shape[0]):
        if alive[b]:
            step_row(states[b], force[b], dt[b], params[b], substeps)


@njit(cache=True, inline="always")
def _mix(z):
    # splitmix64's finaliser: a good 64-bit hash of a counter
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def uniform(key, counter):
    """A uniform in [0, 1) that depends only on (key, counter)."""
    z = _mix(key + np.uint64(counter) * np.uint64(0x9E3779B97F4A7C15))
    return (z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True)
def normal(key, counter):
    """A standard normal from two of :func:`uniform`'s draws (Box-Muller)."""
    u1 = uniform(key, 2 * counter)
    u2 = uniform(key, 2 * counter + 1)
    return math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(2.0 * math.pi * u2)


@njit(cache=True)
def normal_pair(key, counter):
    """Two independent standard normals from :func:`uniform` at ``counter`` and ``counter + 1``
    (both Box-Muller outputs: half the hashes and logarithms of two :func:`normal` calls)."""
    r = math.sqrt(-2.0 * math.log(1.0 - uniform(key, counter)))
    a = 2.0 * math.pi * uniform(key, counter + 1)
    return r * math.cos(a), r * math.sin(a)


def row_keys(seed: int, condition: np.ndarray, rollout: np.ndarray) -> np.ndarray:
    """One 64-bit key per row from (seed, condition, rollout): the row's random stream."""
    with np.errstate(over="ignore"):
        k = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)) ^ (
            condition.astype(np.uint64) * np.uint64(0xD1B54A32D192ED03)
        )
        k = k ^ (rollout.astype(np.uint64) * np.uint64(0xA0761D6478BD642F))
    return k
