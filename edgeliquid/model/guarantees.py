"""The guarantees a model carries (LTC: Theorems 1 and 2; CfC: gate time scales and state
bounds, below), computed in one place.

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
from .cfc import CfCModel


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


# ------------------------------------------------------------------------------- CfC
#
# What stands in for Theorems 1 and 2 in a CfC cell (ncps CfCCell, per neuron i, per step):
#
# * default / no_gate: h' = tanh(ff1)(1 - s) + s tanh(ff2) resp. tanh(ff1) + s tanh(ff2), with
#   the gate s = sigmoid(time_a(z) ts + time_b(z)) in (0, 1): |h'| <= 1 resp. 2 for any input,
#   state and elapsed time. The gate's time scale is 1 / ||time_a.weight[i]||_2 (model time
#   units per unit of head input): the gate moves by at most one logit unit per that much
#   elapsed time for a head input of norm 1. On the biases alone (head input z = 0) the gate
#   is half open at ts = -time_b.bias[i] / time_a.bias[i] (when that is > 0).
# * pure: h' = A - A exp(-ts (|w_tau| + |ff1|)) ff1, a decay towards A at the rate
#   |w_tau_i| + |ff1_i| >= |w_tau_i|. When the backbone ends in a bounded activation (tanh:
#   |z| <= 1; lecun_tanh: |z| <= 1.7159) |ff1_i| <= F_i = c sum_j |W_ij mask_ij| + |b_i|, so the
#   rate is at most |w_tau_i| + F_i and |h'_i| <= |A_i| (1 + F_i); otherwise both are unbounded.
# * With mixed memory the LSTM's c (the state's second half) is unbounded; h as above.
# * y = h of the last (motor) layer, or fc(h): |y_p| <= sum_i |fc.weight[p, i]| hb_i + |fc.bias[p]|.

#: Bound on the backbone's output for the activations that bound it.
_ACTIVATION_BOUND = {"tanh": 1.0, "lecun_tanh": 1.7159}


@dataclass
class CfCGuarantees:
    """Per-neuron CfC bounds, arrays of shape [units] (inf where there is no bound, NaN
    where the quantity does not apply to the mode).

    Attributes:
        layer: the wiring layer of each neuron (0 unwired).
        gate_time_scale: 1 / ||time_a.weight[i]|| (default/no_gate; inf for a zero row).
        half_open_elapsed: ts where the gate is half open for a zero head input (NaN: never).
        decay_rate_min, decay_rate_max: pure mode's decay rate bounds (1 / model time units).
        h_bound: |h_i| <= h_bound[i] after every step.
        y_bound: [n_outputs], |y_p| <= y_bound[p].
    """

    layer: np.ndarray
    gate_time_scale: np.ndarray
    half_open_elapsed: np.ndarray
    decay_rate_min: np.ndarray
    decay_rate_max: np.ndarray
    h_bound: np.ndarray
    y_bound: np.ndarray


def cfc_guarantees(model: CfCModel) -> CfCGuarantees:
    """The CfC bounds above for ``model``."""
    cfg, p = model.config, model.params
    nan = np.full(cfg.units, np.nan)
    layer, scale, half, rmin, rmax, hb = [], [], [], [], [], []
    z_bound = _ACTIVATION_BOUND.get(cfg.activation) if (not cfg.wired and cfg.backbone_layers) else None
    for index, (prefix, _, n) in enumerate(cfg.layers()):
        layer.append(np.full(n, index))
        if cfg.mode == "pure":
            w = p[f"{prefix}ff1.weight"] * p.get(f"{prefix}sparsity_mask", 1.0)
            if z_bound is None:
                f = np.full(n, np.inf)
            else:
                f = z_bound * np.abs(w).sum(axis=1) + np.abs(p[f"{prefix}ff1.bias"])
            w_tau = np.abs(p[f"{prefix}w_tau"][0])
            rmin.append(w_tau)
            rmax.append(w_tau + f)
            hb.append(np.abs(p[f"{prefix}A"][0]) * (1.0 + f))
            scale.append(np.full(n, np.nan))
            half.append(np.full(n, np.nan))
            continue
        norm = np.linalg.norm(p[f"{prefix}time_a.weight"], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale.append(np.where(norm > 0, 1.0 / norm, np.inf))
            # the gate's argument at zero head input: torch a t + b, keras -a t + b (time_a negated)
            sign = -1.0 if cfg.keras else 1.0
            t = -p[f"{prefix}time_b.bias"] / (sign * p[f"{prefix}time_a.bias"])
        half.append(np.where(np.isfinite(t) & (t > 0), t, np.nan))
        rmin.append(np.full(n, np.nan))
        rmax.append(np.full(n, np.nan))
        if cfg.keras:
            # No tanh on the heads: |ff_k| <= F_k only when the backbone output is bounded;
            # default is a convex combination (max), no_gate a sum. Otherwise unbounded.
            fs = []
            for head in ("ff1", "ff2"):
                w = p[f"{prefix}{head}.weight"] * p.get(f"{prefix}sparsity_mask", 1.0)
                fs.append(
                    np.full(n, np.inf)
                    if z_bound is None
                    else z_bound * np.abs(w).sum(axis=1) + np.abs(p[f"{prefix}{head}.bias"])
                )
            hb.append(fs[0] + fs[1] if cfg.mode == "no_gate" else np.maximum(fs[0], fs[1]))
            continue
        hb.append(np.full(n, 2.0 if cfg.mode == "no_gate" else 1.0))
    h_bound = np.concatenate(hb) if hb else nan
    motor = h_bound[cfg.units - cfg.motor_size :]
    if cfg.proj_size:
        with np.errstate(invalid="ignore"):  # 0 * inf: a zero weight on an unbounded neuron
            terms = np.where(p["fc.weight"] == 0, 0.0, np.abs(p["fc.weight"]) * motor)
        y_bound = terms.sum(axis=1) + np.abs(p["fc.bias"])
    else:
        y_bound = motor.copy()
    return CfCGuarantees(
        layer=np.concatenate(layer),
        gate_time_scale=np.concatenate(scale),
        half_open_elapsed=np.concatenate(half),
        decay_rate_min=np.concatenate(rmin),
        decay_rate_max=np.concatenate(rmax),
        h_bound=h_bound,
        y_bound=y_bound,
    )


# ------------------------------------------------------------------ solver stability (LTC)
#
# Linearised at a state, neuron i decays at the rate (gleak_i + sum_j w_ji s_ji) / cm_i
# <= 1 / tau_min_i (Theorem 1). A fixed-step scheme is stable on a decay of rate r when
# h r lies in its real stability interval: [0, 2] for explicit Euler (|1 - z| <= 1) and
# [0, 2.785...] for RK4 (|1 - z + z^2/2 - z^3/6 + z^4/24| <= 1). The fused semi-implicit
# Euler is a weighted average for every h (Theorem 2): unconditionally stable.

#: Real stability interval of each explicit scheme (the largest h * rate that does not grow).
STABILITY_INTERVAL = {"explicit_euler": 2.0, "rk4": 2.785293563405282}

#: Fraction of the interval the bound allows. The diagonal bound ignores the synapses' sigmoid
#: slopes, so it is measured (tools/stability_margin.py: the largest sub-step that keeps the state
#: bounded over 300 steps x 6 unfolds, float64 reference, bisected): on 18 random models (4-32
#: units, density 0.2-0.9, mixed memory, AutoNCP wirings, sigmoids 3x steeper) and the shipped
#: policy the divergence threshold is 1.08-3.2 x the bound (median 2.1, p5 1.08) for explicit
#: Euler and RK4 alike, never below it. The bound is exact for a neuron without synapses (ratio
#: 1), so 0.9 keeps 10% below that: at the bound every linearised Euler sub-step contracts by
#: |1 - 1.8| = 0.8 or better. See docs/model-format.md "Solvers".
STABILITY_MARGIN = 0.9


def max_substep(model: LTCModel, solver: str | None = None) -> float:
    """Largest stable sub-step h (model time units) of ``solver`` (default: the model's).

    ``inf`` for the fused solver; 0.0 when some neuron has cm = 0 (no explicit step is stable).
    """
    solver = solver or model.config.solver
    if solver not in STABILITY_INTERVAL:
        return float("inf")
    tau = float(np.min(guarantees(model).tau_min))
    return max(0.0, STABILITY_MARGIN * STABILITY_INTERVAL[solver] * tau)


def stability(model: LTCModel) -> dict[str, dict[str, float]]:
    """Per solver: ``max_substep`` and ``max_elapsed`` (= max_substep * the model's unfolds)."""
    from .cell import SOLVER_NAMES

    out = {}
    for solver in SOLVER_NAMES:
        h = max_substep(model, solver)
        out[solver] = {"max_substep": h, "max_elapsed": h * model.config.ode_unfolds}
    return out


def max_elapsed(model: LTCModel | CfCModel) -> float:
    """Largest stable elapsed time per step for the model's own solver (inf: no limit, e.g. the
    fused solver or a CfC model, which has no ODE solver)."""
    if not isinstance(model, LTCModel):
        return float("inf")
    return max_substep(model) * model.config.ode_unfolds


def stability_problem(model: LTCModel | CfCModel, elapsed: float) -> str | None:
    """Why stepping ``model`` with ``elapsed`` model time units is unstable (None when it is not):
    one line naming the file, the solver, the elapsed time, the bound and the ways out (callers
    add their own override, e.g. ``allow_unstable=True``)."""
    limit = max_elapsed(model)
    if not elapsed > limit:
        return None
    cfg = model.config
    h = max_substep(model)
    if h > 0:
        need = int(np.ceil(elapsed / h))
        need += elapsed / need > h  # rounding
        more = f"edgeliquid convert {model.source} -o OUT.onnx --solver {cfg.solver} --unfolds {need}, "
    else:
        more = ""  # some cm is 0: no sub-step is stable
    return (
        f"{model.source}: solver {cfg.solver} ({cfg.ode_unfolds} unfolds) is unstable at elapsed "
        f"{elapsed:.4g} (Theorem 1: elapsed <= {limit:.4g}, sub-step <= {h:.4g}); ways out: a smaller "
        f"elapsed, {more}the fused solver"
    )
