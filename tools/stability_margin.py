"""Calibrate ``STABILITY_MARGIN`` (edgeliquid/model/guarantees.py): how tight is the Theorem-1 bound?

The bound ``h <= interval * min_i tau_min_i`` uses only the diagonal of the Jacobian with every
sigmoid at 1; it ignores the synapses' sigmoid slopes. For many random models (sizes, densities,
mixed memory, NCP wirings, steep sigmoids, the shipped policy) this finds, with the numpy
reference at float64, the largest sub-step h that keeps the state bounded over a long run and
prints its ratio to the bound (margin 1):

    python tools/stability_margin.py [--models 40] [--steps 1000] [--json out.json]

"Bounded": finite and inside the Theorem-2 envelope [v_min, v_max] widened by its own width on
each side at every step (the exact ODE never leaves the envelope; a stable explicit scheme
overshoots it by less than that). Each model runs every candidate h at once (one batch row per
h, the same inputs): a geometric grid of h / bound in [0.25, 4], then a finer grid between the
last bounded and the first unbounded ratio. The first unbounded ratio counts (the conservative
end when boundedness is not monotone in h; such models are reported).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers import random_model  # noqa: E402

from edgeliquid.model.cell import LTCModel, effective_parameters  # noqa: E402
from edgeliquid.model.guarantees import STABILITY_INTERVAL, guarantees  # noqa: E402
from edgeliquid.runtime.reference import reference_step  # noqa: E402

UNFOLDS = 6


def ncp_model(rng: np.random.Generator, units: int, n_in: int, motors: int, mixed: bool) -> LTCModel:
    """random_model's parameter ranges on an ncps AutoNCP wiring (masks and erev signs)."""
    from ncps.wirings import AutoNCP

    m = random_model(rng, units, n_in, motors, density=1.0, mixed=mixed, unfolds=UNFOLDS)
    w = AutoNCP(units, motors, seed=int(rng.integers(1 << 30)))
    w.build(n_in)
    adj, sadj = np.asarray(w.adjacency_matrix, float), np.asarray(w.sensory_adjacency_matrix, float)
    m.params["sparsity_mask"], m.params["erev"] = np.abs(adj), adj
    m.params["sensory_sparsity_mask"], m.params["sensory_erev"] = np.abs(sadj), sadj
    return m


def models(n: int, seed: int):
    """(family, model) pairs: random, random with steep sigmoids, NCP, and the shipped policy."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        units = int(rng.choice([4, 8, 16, 32]))
        n_in = int(rng.choice([2, 4]))
        mixed = bool(k % 4 == 3)
        family = ("random", "steep", "ncp")[k % 3]
        if family == "ncp":
            units = max(units, 8)
            yield family, ncp_model(rng, units, n_in, 2, mixed)
            continue
        density = float(rng.choice([0.2, 0.5, 0.9]))
        m = random_model(rng, units, n_in, 2, density=density, mixed=mixed, unfolds=UNFOLDS)
        if family == "steep":  # trained sigmoids can be steeper than the initialiser's 3..8
            m.params["sigma"] = m.params["sigma"] * 3.0
            m.params["sensory_sigma"] = m.params["sensory_sigma"] * 3.0
        yield family + ("+mixed" if mixed else ""), m
    from edgeliquid.model.file import read

    yield "shipped", read(ROOT / "edgeliquid" / "data" / "cartpole_ncp.onnx")


def escaped(model: LTCModel, solver: str, h: np.ndarray, steps: int, seed: int) -> np.ndarray:
    """Per candidate sub-step h: did the state leave the widened envelope (or go non-finite)?"""
    cfg = model.config.replace(solver=solver, ode_unfolds=UNFOLDS)
    p = effective_parameters(model)
    g = guarantees(model, (-1.0, 1.0))
    width = g.v_max - g.v_min
    lo, hi = g.v_min - width, g.v_max + width
    rng = np.random.default_rng(seed)
    rows, u = len(h), cfg.units
    state = np.zeros((rows, cfg.n_state))
    state[:, :u] = rng.uniform(g.v_min, g.v_max, u)
    out = np.zeros(rows, bool)
    x = np.zeros((rows, cfg.n_inputs))
    with np.errstate(all="ignore"):
        for t in range(steps):
            if t % 25 == 0:  # inputs held for a while, then a new level: settle, then a transient
                x[:] = rng.normal(0.0, 1.5, cfg.n_inputs)
            _, state = reference_step(p, cfg, x, state, h * UNFOLDS)
            v = state[:, :u]
            bad = ~np.all(np.isfinite(v) & (v >= lo) & (v <= hi), axis=1)
            out |= bad
            state[out] = 0.0  # keep escaped rows finite (they are decided already)
    return out


def threshold(model: LTCModel, solver: str, steps: int, seed: int) -> tuple[float, bool]:
    """(largest bounded h / bound, whether some larger ratio on the coarse grid was bounded again)."""
    tau = float(np.min(guarantees(model).tau_min))
    bound = STABILITY_INTERVAL[solver] * tau
    grid = np.geomspace(0.25, 4.0, 29)
    esc = escaped(model, solver, grid * bound, steps, seed)
    if not esc.any():
        return float(grid[-1]), False
    first = int(np.argmax(esc))
    nonmono = bool((~esc[first:]).any())
    if first == 0:
        return float(grid[0]), nonmono
    fine = np.linspace(grid[first - 1], grid[first], 17)
    esc2 = escaped(model, solver, fine * bound, steps, seed)
    k = int(np.argmax(esc2)) if esc2.any() else len(fine)
    return float(fine[max(k - 1, 0)]), nonmono


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=40)
    ap.add_argument("--steps", type=int, default=1000, help="steps per run (each %d sub-steps)" % UNFOLDS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rows = []
    for i, (family, m) in enumerate(models(a.models, a.seed)):
        for solver in STABILITY_INTERVAL:
            r, nonmono = threshold(m, solver, a.steps, a.seed + i)
            rows.append(
                {
                    "model": i,
                    "family": family,
                    "units": m.config.units,
                    "solver": solver,
                    "ratio": r,
                    "non_monotone": nonmono,
                }
            )
            print(
                f"{i:3d} {family:14s} units {m.config.units:3d} {solver:15s} bounded up to "
                f"{r:.3f} x bound{'  (non-monotone)' if nonmono else ''}",
                flush=True,
            )
    print()
    for solver in STABILITY_INTERVAL:
        r = np.array([row["ratio"] for row in rows if row["solver"] == solver])
        q = np.percentile(r, [0, 5, 25, 50, 75, 100])
        print(
            f"{solver:15s} n={len(r)}  ratio min {q[0]:.3f}  p5 {q[1]:.3f}  p25 {q[2]:.3f}  "
            f"median {q[3]:.3f}  p75 {q[4]:.3f}  max {q[5]:.3f}"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
