"""``edgeliquid inspect``: what a model file holds and what it guarantees."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .cell import LTCModel, effective_parameters
from .guarantees import guarantees


def describe(model: LTCModel) -> dict[str, Any]:
    """A JSON-ready summary: sizes, synapses, roles, parameter ranges, LTC bounds."""
    from .file import metadata_for

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


def format_text(d: dict[str, Any]) -> str:
    lines = [
        f"model      {d['source']}",
        f"sizes      inputs {d['n_inputs']}  outputs {d['n_outputs']}  units {d['units']}  "
        f"state {d['n_state']}  unfolds {d['ode_unfolds']}",
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


def to_json(d: dict[str, Any]) -> str:
    return json.dumps(d, indent=2)
