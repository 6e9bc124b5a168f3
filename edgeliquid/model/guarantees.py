"""The LTC guarantees a model carries, computed in one place.

Reused by ``edgeliquid inspect``, runtime health checks and fixed-point firmware.

Theorem 1 (time constant, Hasani et al. 2021). Neuron i follows
``cm_i dv/dt = gleak_i (vleak_i - v) + sum_j w_ji s_ji (erev_ji - v)`` with every
``s`` in (0, 1), so its system time constant ``cm_i / (gleak_i + sum_j w_ji s_ji)``
lies between ``tau_i / (1 + tau_i W_i)`` and ``tau_i``, where ``tau_i = cm_i / gleak_i``
and ``W_i = sum_j w_ji / cm_i`` (recurrent and sensory synapses). Units: model
time units (one ncps sample = 1.0).

Theorem 2 (state bound). Each solver sub-step is a weighted average of v,
vleak and the incoming erev (all weights >= 0), scaled by D / (D + epsilon) <= 1,
so v stays within [min(v0, vleak, erev, 0), max(v0, vleak, erev, 0)] for every
step size. With mixed memory the LSTM's h in (-1, 1) replaces v0 each step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cell import LTCModel, effective_parameters


@dataclass
class Guarantees:
    """Per-neuron bounds; arrays of shape [units].

    Attributes:
        tau_min, tau_max: bounds of the system time constant (model time units;
            tau_max is inf where gleak is 0).
        v_min, v_max: bounds of the membrane potential for the given initial range.
    """

    tau_min: np.ndarray
    tau_max: np.ndarray
    v_min: np.ndarray
    v_max: np.ndarray


def guarantees(model: LTCModel, v0: tuple[float, float] = (0.0, 0.0)) -> Guarantees:
    """Theorem 1 and 2 bounds of ``model`` for initial states within ``v0``."""
    p = effective_parameters(model)
    mask, smask = p["sparsity_mask"] != 0, p["sensory_sparsity_mask"] != 0
    w_in = (p["w"] * mask).sum(axis=0) + (p["sensory_w"] * smask).sum(axis=0)
    cm, gleak = p["cm"], p["gleak"]
    with np.errstate(divide="ignore"):
        tau_max = np.where(gleak > 0, cm / np.where(gleak > 0, gleak, 1.0), np.inf)
    tau_min = cm / (gleak + w_in)
    lo0, hi0 = min(v0), max(v0)
    if model.config.mixed_memory:
        lo0, hi0 = min(lo0, -1.0), max(hi0, 1.0)
    erev = np.where(mask, p["erev"], np.nan)
    serev = np.where(smask, p["sensory_erev"], np.nan)
    incoming = np.vstack([erev, serev, p["vleak"][None, :]])
    v_min = np.minimum(np.nanmin(incoming, axis=0), min(lo0, 0.0))
    v_max = np.maximum(np.nanmax(incoming, axis=0), max(hi0, 0.0))
    return Guarantees(tau_min, tau_max, v_min, v_max)
