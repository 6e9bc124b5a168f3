"""``edgeliquid inspect``: what a model file holds and what it guarantees."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .cell import LTCModel, effective_parameters
from .cfc import CfCModel
from .guarantees import STABILITY_MARGIN, cfc_guarantees, guarantees, stability


def describe(model: LTCModel | CfCModel) -> dict[str, Any]:
    """A JSON-ready summary: sizes, synapses, roles, parameter ranges, LTC (or CfC) bounds."""
    from .file import metadata_for

    if isinstance(model, CfCModel):
        return describe_cfc(model, metadata_for(model))

    cfg = model.config
    eff = effective_parameters(model)
    g = guarantees(model)
    roles: dict[str, list[int]] = {}
    for i, r in enumerate(model.roles):
        roles.setdefault(r, []).append(i)
    ranges = {k: [float(np.min(v)), float(np.max(v))] for k, v in sorted(eff.items()) if "mask" not in k}
    return {
        "source": model.source,
        "n_inputs": cfg.n_inputs,
        "n_outputs": cfg.n_outputs,
        "units": cfg.units,
        "n_state": cfg.n_state,
        "ode_unfolds": cfg.ode_unfolds,
        "solver": cfg.solver,
        # Theorem 1 per solver (null: no bound, the fused solver); CfC has no ODE solver.
        "stability": {
            solver: {k: _num(v) for k, v in bounds.items()} for solver, bounds in stability(model).items()
        },
        "synapses": int(np.count_nonzero(eff["sparsity_mask"])),
        "sensory_synapses": int(np.count_nonzero(eff["sensory_sparsity_mask"])),
        "density": float(np.count_nonzero(eff["sparsity_mask"]) / cfg.units**2),
        "roles": roles,
        "parameter_ranges_effective": ranges,
        "neurons": [
            {
                "id": i,
                "role": model.roles[i],
                "tau_min": float(g.tau_min[i]),
                "tau_max": float(g.tau_max[i]) if np.isfinite(g.tau_max[i]) else None,
                "v_min": float(g.v_min[i]),
                "v_max": float(g.v_max[i]),
            }
            for i in range(cfg.units)
        ],
        "metadata": metadata_for(model),
    }


def _num(v: float) -> float | None:
    """JSON has no inf/NaN: None stands for "no bound" / "does not apply"."""
    return float(v) if np.isfinite(v) else None


def describe_cfc(model: CfCModel, metadata: dict[str, str]) -> dict[str, Any]:
    """The CfC summary: sizes, options, raw parameter ranges, per-neuron gate time scales,
    pure-mode decay rates and state bounds (:func:`edgeliquid.model.guarantees.cfc_guarantees`)."""
    cfg = model.config
    g = cfc_guarantees(model)
    ranges = {
        k: [float(np.min(v)), float(np.max(v))] for k, v in sorted(model.params.items()) if "mask" not in k
    }
    return {
        "source": model.source,
        "cell": "cfc",
        "mode": cfg.mode,
        "activation": cfg.activation,
        "backbone_units": cfg.backbone_units if not cfg.wired and cfg.backbone_layers else 0,
        "backbone_layers": 0 if cfg.wired else cfg.backbone_layers,
        "layer_sizes": list(cfg.layer_sizes),
        "mixed_memory": cfg.mixed_memory,
        "proj_size": cfg.proj_size,
        "n_inputs": cfg.n_inputs,
        "n_outputs": cfg.n_outputs,
        "units": cfg.units,
        "n_state": cfg.n_state,
        "parameters": int(sum(np.size(v) for k, v in model.params.items() if "mask" not in k)),
        "parameter_ranges": ranges,
        "neurons": [
            {
                "id": i,
                "layer": int(g.layer[i]),
                "gate_time_scale": _num(g.gate_time_scale[i]),
                "half_open_elapsed": _num(g.half_open_elapsed[i]),
                "decay_rate_min": _num(g.decay_rate_min[i]),
                "decay_rate_max": _num(g.decay_rate_max[i]),
                "h_bound": _num(g.h_bound[i]),
            }
            for i in range(cfg.units)
        ],
        "y_bound": [_num(v) for v in g.y_bound],
        "metadata": metadata,
    }


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def format_cfc_text(d: dict[str, Any]) -> str:
    wired = ",".join(map(str, d["layer_sizes"])) or "no"
    lines = [
        f"model      {d['source']}",
        f"cell       CfC, mode {d['mode']}  backbone {d['backbone_layers']}x{d['backbone_units']} "
        f"{d['activation']}  wired {wired}  mixed_memory {str(d['mixed_memory']).lower()}  "
        f"proj {d['proj_size'] or 'no'}",
        f"sizes      inputs {d['n_inputs']}  outputs {d['n_outputs']}  units {d['units']}  "
        f"state {d['n_state']}  parameters {d['parameters']}",
        "",
        "parameter ranges (raw):",
    ]
    for k, (lo, hi) in d["parameter_ranges"].items():
        lines.append(f"  {k:28s} [{lo: .4g}, {hi: .4g}]")
    lines += [
        "",
        "CfC bounds per neuron (gate time scale 1/|time_a| and the elapsed at which the gate is "
        "half open for a zero head input, model time units; pure: decay rate bounds; |h| <= h_bound; "
        "'-': none or n/a):",
        f"  {'id':>3} {'layer':>5} {'gate_ts':>10} {'half_open':>10} {'rate_min':>10} {'rate_max':>10} "
        f"{'h_bound':>8}",
    ]
    for n in d["neurons"]:
        lines.append(
            f"  {n['id']:>3} {n['layer']:>5} {_fmt(n['gate_time_scale']):>10} "
            f"{_fmt(n['half_open_elapsed']):>10} {_fmt(n['decay_rate_min']):>10} "
            f"{_fmt(n['decay_rate_max']):>10} {_fmt(n['h_bound']):>8}"
        )
    lines.append("  |y| <= " + " ".join(_fmt(v) for v in d["y_bound"]))
    if d["mixed_memory"]:
        lines.append("  (mixed memory: the LSTM's c, the state's second half, has no bound)")
    lines += ["", "metadata:"] + [f"  edgeliquid.{k} = {v}" for k, v in d["metadata"].items()]
    return "\n".join(lines)


def format_text(d: dict[str, Any]) -> str:
    if d.get("cell") == "cfc":
        return format_cfc_text(d)
    lines = [
        f"model      {d['source']}",
        f"sizes      inputs {d['n_inputs']}  outputs {d['n_outputs']}  units {d['units']}  "
        f"state {d['n_state']}  unfolds {d['ode_unfolds']}  solver {d['solver']}",
        stability_line(d),
        f"synapses   recurrent {d['synapses']} (density {d['density']:.2f})  sensory {d['sensory_synapses']}",
        "roles      " + "  ".join(f"{r} {len(ids)}" for r, ids in d["roles"].items()),
        "",
        "parameter ranges (after the positivity constraint):",
    ]
    for k, (lo, hi) in d["parameter_ranges_effective"].items():
        lines.append(f"  {k:28s} [{lo: .4g}, {hi: .4g}]")
    lines += [
        "",
        "LTC guarantees per neuron (Theorem 1: tau_sys in [tau_min, tau_max], "
        "model time units; Theorem 2: v in [v_min, v_max] from a zero state):",
        f"  {'id':>3} {'role':8} {'tau_min':>10} {'tau_max':>10} {'v_min':>8} {'v_max':>8}",
    ]
    for n in d["neurons"]:
        tmax = "inf" if n["tau_max"] is None else f"{n['tau_max']:.4g}"
        lines.append(
            f"  {n['id']:>3} {n['role']:8} {n['tau_min']:>10.4g} {tmax:>10} "
            f"{n['v_min']:>8.3g} {n['v_max']:>8.3g}"
        )
    lines += ["", "metadata:"] + [f"  edgeliquid.{k} = {v}" for k, v in d["metadata"].items()]
    return "\n".join(lines)


_SOLVER_LABEL = {"explicit_euler": "explicit Euler", "rk4": "RK4", "fused_semi_implicit_euler": "fused"}


def stability_line(d: dict[str, Any]) -> str:
    """One line: the largest stable sub-step and elapsed time per solver (Theorem 1)."""
    parts = []
    for solver, b in d["stability"].items():
        label = _SOLVER_LABEL.get(solver, solver)
        if b["max_substep"] is None:
            parts.append(f"{label}: unconditional")
            continue
        parts.append(
            f"{label} h <= {b['max_substep']:.3g} (elapsed <= {b['max_elapsed']:.3g} at "
            f"{d['ode_unfolds']} unfolds)"
        )
    # explicit first, as the reading order: the bounded ones are the news
    parts.sort(key=lambda t: t.endswith("unconditional"))
    return f"stability  {', '.join(parts)}  [Theorem 1, margin {STABILITY_MARGIN:g}]"


def to_json(d: dict[str, Any]) -> str:
    return json.dumps(d, indent=2)
