"""The numpy reference: the spec every fast path is tested against.

It follows ncps 1.0.1 (``ncps/torch/ltc_cell.py``, ``ltc.py``, ``lstm.py``)
operation for operation, in the same order, so that float64 results agree with
ncps to rounding. One deliberate difference: ncps broadcasts a per-sample
elapsed time across *neurons* when batch > 1; here each batch row uses its own.

Array layouts (B = batch, I = inputs, U = units, M = motor neurons):
    x        [B, I]  inputs, before the input mapping
    state    [B, U]  membrane potentials v, or [B, 2U] = [h, c] with mixed memory
                     (h = v for either ``mixed_memory_coupling``; c the LSTM's cell state)
    elapsed  [B]     model time units since the previous step (ncps: 1.0 per sample)
    y        [B, M]  outputs, after the output mapping
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import ModelFormatError
from ..model.cell import CellConfig, LTCModel, effective_parameters


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def synapse_sigmoid(v_pre: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """ncps ``_sigmoid``: [B, N] presynaptic potentials -> [B, N, U] activations."""
    mues = v_pre[..., None] - mu
    return sigmoid(sigma * mues)


def sensory_sums(p: dict[str, np.ndarray], inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum w*s*erev, sum w*s) of the sensory synapses, [B, U] each: constant over a step."""
    sensory_w_activation = p["sensory_w"] * synapse_sigmoid(inputs, p["sensory_mu"], p["sensory_sigma"])
    sensory_w_activation = sensory_w_activation * p["sensory_sparsity_mask"]
    sensory_rev_activation = sensory_w_activation * p["sensory_erev"]
    return np.sum(sensory_rev_activation, axis=1), np.sum(sensory_w_activation, axis=1)


def recurrent_sums(p: dict[str, np.ndarray], v_pre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum w*s*erev, sum w*s) of the recurrent synapses into each neuron, [B, U] each."""
    w_activation = p["w"] * synapse_sigmoid(v_pre, p["mu"], p["sigma"])
    w_activation = w_activation * p["sparsity_mask"]
    rev_activation = w_activation * p["erev"]
    return np.sum(rev_activation, axis=1), np.sum(w_activation, axis=1)


def fused_semi_implicit_euler(
    p: dict[str, np.ndarray],
    cfg: CellConfig,
    inputs: np.ndarray,
    v_pre: np.ndarray,
    elapsed: np.ndarray,
) -> np.ndarray:
    """ncps' ``_ode_solver``: ``ode_unfolds`` fused semi-implicit Euler sub-steps.

    Each sub-step solves ``cm dv/dt = gleak (vleak - v) + sum w s(v) (erev - v)``
    implicitly in v (the synaptic activations s are taken explicitly), which is
    why the update is a weighted average and cannot leave the reversal-potential
    range (Theorem 2).
    """
    w_numerator_sensory, w_denominator_sensory = sensory_sums(p, inputs)

    # cm/t is loop invariant; one dt per batch row (ncps broadcasts it wrongly).
    cm_t = p["cm"] / (elapsed[:, None] / cfg.ode_unfolds)

    for _ in range(cfg.ode_unfolds):
        rev_sum, w_sum = recurrent_sums(p, v_pre)
        w_numerator = rev_sum + w_numerator_sensory
        w_denominator = w_sum + w_denominator_sensory
        numerator = cm_t * v_pre + p["gleak"] * p["vleak"] + w_numerator
        denominator = cm_t + p["gleak"] + w_denominator
        v_pre = numerator / (denominator + cfg.epsilon)
    return v_pre


def ltc_derivative(
    p: dict[str, np.ndarray], v: np.ndarray, num_s: np.ndarray, den_s: np.ndarray
) -> np.ndarray:
    """dv/dt of the LTC ODE, ``cm dv/dt = gleak (vleak - v) + sum w s(v) (erev - v)``.

    Written as ``(gleak*vleak + N - (gleak + D) v) / cm`` with N, D the synaptic sums
    (recurrent at ``v`` plus the step's sensory ``num_s``, ``den_s``): the same grouping
    every backend uses, so that they agree to rounding. No epsilon: the explicit schemes
    divide by cm only, and a model with cm = 0 has no stable sub-step (see
    :func:`edgeliquid.model.guarantees.stability`).
    """
    rev_sum, w_sum = recurrent_sums(p, v)
    numerator = p["gleak"] * p["vleak"] + (rev_sum + num_s)
    return (numerator - (p["gleak"] + (w_sum + den_s)) * v) / p["cm"]


def explicit_euler(
    p: dict[str, np.ndarray],
    cfg: CellConfig,
    inputs: np.ndarray,
    v_pre: np.ndarray,
    elapsed: np.ndarray,
) -> np.ndarray:
    """``ode_unfolds`` forward Euler sub-steps of h = elapsed / ode_unfolds per batch row.

    Inputs are held over the step (zero-order hold), so the sensory sums are computed
    once. Stable only for h below the bound of Theorem 1 (``guarantees.stability``).
    """
    num_s, den_s = sensory_sums(p, inputs)
    h = (elapsed / cfg.ode_unfolds)[:, None]
    for _ in range(cfg.ode_unfolds):
        v_pre = v_pre + h * ltc_derivative(p, v_pre, num_s, den_s)
    return v_pre


def rk4(
    p: dict[str, np.ndarray],
    cfg: CellConfig,
    inputs: np.ndarray,
    v_pre: np.ndarray,
    elapsed: np.ndarray,
) -> np.ndarray:
    """``ode_unfolds`` classic Runge-Kutta 4 sub-steps of h = elapsed / ode_unfolds per row.

    ``v + h/6 (k1 + 2 k2 + 2 k3 + k4)`` with k1 = f(v), k2 = f(v + h/2 k1),
    k3 = f(v + h/2 k2), k4 = f(v + h k3); inputs held over the step.
    """
    num_s, den_s = sensory_sums(p, inputs)
    h = (elapsed / cfg.ode_unfolds)[:, None]
    half = 0.5 * h
    for _ in range(cfg.ode_unfolds):
        k1 = ltc_derivative(p, v_pre, num_s, den_s)
        k2 = ltc_derivative(p, v_pre + half * k1, num_s, den_s)
        k3 = ltc_derivative(p, v_pre + half * k2, num_s, den_s)
        k4 = ltc_derivative(p, v_pre + h * k3, num_s, den_s)
        v_pre = v_pre + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return v_pre


#: Fixed-step schemes by the name stored in ``edgeliquid.solver``.
SOLVERS: dict[str, Callable[..., np.ndarray]] = {
    "fused_semi_implicit_euler": fused_semi_implicit_euler,
    "explicit_euler": explicit_euler,
    "rk4": rk4,
}


def get_solver(name: str) -> Callable[..., np.ndarray]:
    try:
        return SOLVERS[name]
    except KeyError:
        raise ModelFormatError(f"unknown solver {name!r}; expected one of {sorted(SOLVERS)}") from None


def lstm_step(p: dict[str, np.ndarray], x: np.ndarray, h: np.ndarray, c: np.ndarray):
    """ncps ``LSTMCell.forward`` (the mixed-memory cell); returns (h, c)."""
    z = (x @ p["lstm.input_map.weight"].T + p["lstm.input_map.bias"]) + h @ p["lstm.recurrent_map.weight"].T
    i, ig, fg, og = np.split(z, 4, axis=1)
    input_activation = np.tanh(i)
    input_gate = sigmoid(ig)
    forget_gate = sigmoid(fg + 1.0)
    output_gate = sigmoid(og)
    new_cell = c * forget_gate + input_activation * input_gate
    return np.tanh(new_cell) * output_gate, new_cell


def map_inputs(p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    return x * p["input_w"] + p["input_b"]


def map_outputs(p: dict[str, np.ndarray], cfg: CellConfig, v: np.ndarray) -> np.ndarray:
    return v[:, : cfg.motor_size] * p["output_w"] + p["output_b"]


def reference_step(
    p: dict[str, np.ndarray],
    cfg: CellConfig,
    x: np.ndarray,
    state: np.ndarray,
    elapsed: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One step of ncps ``LTC`` (LSTM first if mixed memory, then ``LTCCell``).

    Args:
        p: effective parameters (:func:`edgeliquid.model.cell.effective_parameters`).
        cfg: the cell config.
        x: [B, I] raw inputs. state: [B, n_state]. elapsed: [B] model time units.

    Returns:
        (y [B, M], next_state [B, n_state]).
    """
    solver = get_solver(cfg.solver)
    u = cfg.units
    h = state[:, :u]
    if cfg.mixed_memory:
        # ncps feeds the *unmapped* inputs to the LSTM, the mapped ones to the LTC.
        o, c = lstm_step(p, x, h, state[:, u:])
        if cfg.mixed_memory_coupling == "input":
            x = o  # ncps.keras MixedMemoryRNN: the LSTM output is the cell's input; h is kept
        else:
            h = o  # ncps.torch: the LSTM output replaces the cell's state
    v = solver(p, cfg, map_inputs(p, x), h, elapsed)
    next_state = np.concatenate([v, c], axis=1) if cfg.mixed_memory else v
    return map_outputs(p, cfg, v), next_state


class ReferenceCell:
    """Stateless stepping of one model with the numpy reference, at one dtype."""

    def __init__(self, model: LTCModel, dtype=np.float64):
        self.config = model.config
        self.dtype = np.dtype(dtype)
        self.params = effective_parameters(model, self.dtype)

    def step(self, x: np.ndarray, state: np.ndarray, elapsed: np.ndarray):
        dt = self.dtype
        return reference_step(
            self.params, self.config, np.asarray(x, dt), np.asarray(state, dt), np.asarray(elapsed, dt)
        )
