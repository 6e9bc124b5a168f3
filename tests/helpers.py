"""Shared builders: random ncps modules (the oracle) and random in-memory models."""

from __future__ import annotations

import numpy as np

from edgeliquid.model.cell import CellConfig, LTCModel


def perturbed_ncps(module, seed: int, scale: float = 0.3):
    """Move every trainable parameter away from its initial value, as training would.

    LTC parameters move by ``scale``. CfC ``Linear`` weights move by ``scale / sqrt(fan_in)``:
    by ``scale`` itself a 128-wide backbone becomes chaotic (float rounding alone grows to
    O(1) within 60 steps, in ncps as anywhere), which training does not produce.
    """
    import torch

    cell = module.rnn_cell if hasattr(module, "rnn_cell") else module
    is_ltc = hasattr(cell, "apply_weight_constraints")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.requires_grad:
                s = scale
                if not is_ltc and p.dim() == 2 and name.endswith("weight"):
                    s = scale / p.shape[1] ** 0.5
                p.add_(s * torch.randn(p.shape, generator=g))
    if is_ltc:  # CfC has no constraints
        cell.apply_weight_constraints()  # what ncps' training loop does in non-implicit mode
    return module


def run_ncps(module, xs: np.ndarray, elapsed: np.ndarray, mixed: bool, dtype) -> np.ndarray:
    """ncps LTC or CfC over a [T, I] sequence with per-step elapsed, batch 1 -> [T, M]."""
    import torch

    tdt = torch.float64 if dtype == np.float64 else torch.float32
    m = module.to(tdt).eval()  # inference: a CfC backbone's dropout is the identity
    u = m.state_size
    hx = (
        (torch.zeros(1, u, dtype=tdt), torch.zeros(1, u, dtype=tdt))
        if mixed
        else torch.zeros(1, u, dtype=tdt)
    )
    with torch.no_grad():
        y, _ = m(
            torch.tensor(xs[None], dtype=tdt), hx, timespans=torch.tensor(elapsed[None, :, None], dtype=tdt)
        )
    return y[0].numpy().astype(np.float64)


def random_model(
    rng: np.random.Generator,
    units: int = 6,
    n_in: int = 3,
    motors: int = 2,
    density: float = 0.5,
    positivity: str = "softplus",
    input_mapping: str = "affine",
    output_mapping: str = "affine",
    mixed: bool = False,
    unfolds: int = 6,
) -> LTCModel:
    """A random model built without torch (for property tests of the kernels)."""
    cfg = CellConfig(
        n_in,
        units,
        motors,
        ode_unfolds=unfolds,
        positivity=positivity,
        input_mapping=input_mapping,
        output_mapping=output_mapping,
        mixed_memory=mixed,
    )
    u = units

    def pos(shape, lo, hi):
        v = rng.uniform(lo, hi, shape)
        return np.log(np.expm1(v)) if positivity == "softplus" else v

    mask = (rng.random((u, u)) < density).astype(float)
    smask = (rng.random((n_in, u)) < max(density, 0.3)).astype(float)
    p = {
        "gleak": pos(u, 0.001, 1.0),
        "vleak": rng.uniform(-0.2, 0.2, u),
        "cm": pos(u, 0.4, 0.6),
        "w": pos((u, u), 0.001, 1.0),
        "sigma": rng.uniform(3, 8, (u, u)),
        "mu": rng.uniform(0.3, 0.8, (u, u)),
        "erev": rng.choice([-1.0, 1.0], (u, u)) * mask,
        "sensory_w": pos((n_in, u), 0.001, 1.0),
        "sensory_sigma": rng.uniform(3, 8, (n_in, u)),
        "sensory_mu": rng.uniform(0.3, 0.8, (n_in, u)),
        "sensory_erev": rng.choice([-1.0, 1.0], (n_in, u)) * smask,
        "sparsity_mask": mask,
        "sensory_sparsity_mask": smask,
    }
    if input_mapping != "none":
        p["input_w"] = rng.uniform(0.5, 1.5, n_in)
    if input_mapping == "affine":
        p["input_b"] = rng.uniform(-0.5, 0.5, n_in)
    if output_mapping != "none":
        p["output_w"] = rng.uniform(0.5, 1.5, motors)
    if output_mapping == "affine":
        p["output_b"] = rng.uniform(-0.5, 0.5, motors)
    if mixed:
        p["lstm.input_map.weight"] = rng.normal(0, 0.5, (4 * u, n_in))
        p["lstm.input_map.bias"] = rng.normal(0, 0.1, 4 * u)
        p["lstm.recurrent_map.weight"] = rng.normal(0, 0.5, (4 * u, u))
    # Model files hold float32 parameters.
    p = {k: np.asarray(v, np.float32).astype(np.float64) for k, v in p.items()}
    return LTCModel(cfg, p, source="<random>")


def irregular_elapsed(rng: np.random.Generator, steps: int) -> np.ndarray:
    """Elapsed times spread over 0.05 .. 3 model units, as on a jittery bus."""
    return rng.uniform(0.05, 3.0, steps)
