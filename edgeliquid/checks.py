"""The model checker: small ``check_*`` functions run on every load and export.

Each takes the pieces it needs and raises :class:`ModelFormatError` naming the
file, the key and what was expected; each is testable alone.
"""

from __future__ import annotations

import numpy as np

from .errors import ModelFormatError
from .model import MAPPINGS, POSITIVITY, CellConfig, LTCModel, effective_parameters, expected_shapes

FORMAT_VERSION = 1
ROLES = ("motor", "command", "inter")


def check_format_version(meta: dict[str, str], source: str) -> None:
    raw = meta.get("format_version")
    if raw is None:
        raise ModelFormatError(
            f"{source}: not an edgeliquid model (no edgeliquid.format_version in metadata_props)"
        )
    if raw != str(FORMAT_VERSION):
        raise ModelFormatError(
            f"{source}: unknown format version {raw!r}; this edgeliquid reads version {FORMAT_VERSION}"
        )


def check_cell(meta: dict[str, str], source: str) -> None:
    from .reference import SOLVERS

    if meta.get("cell") != "ltc":
        raise ModelFormatError(f"{source}: edgeliquid.cell is {meta.get('cell')!r}; expected 'ltc'")
    solver = meta.get("solver", "fused_semi_implicit_euler")
    if solver not in SOLVERS:
        raise ModelFormatError(
            f"{source}: edgeliquid.solver {solver!r} unknown; expected one of {sorted(SOLVERS)}"
        )


def check_config(cfg: CellConfig, source: str) -> None:
    for name in ("n_inputs", "units", "motor_size", "ode_unfolds"):
        if getattr(cfg, name) < 1:
            raise ModelFormatError(f"{source}: {name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.motor_size > cfg.units:
        raise ModelFormatError(f"{source}: motor_size {cfg.motor_size} exceeds units {cfg.units}")
    if not (np.isfinite(cfg.epsilon) and cfg.epsilon >= 0):
        raise ModelFormatError(f"{source}: epsilon must be finite and >= 0, got {cfg.epsilon!r}")
    if cfg.positivity not in POSITIVITY:
        raise ModelFormatError(f"{source}: positivity {cfg.positivity!r}; expected one of {POSITIVITY}")
    for side in ("input_mapping", "output_mapping"):
        if getattr(cfg, side) not in MAPPINGS:
            raise ModelFormatError(f"{source}: {side} {getattr(cfg, side)!r}; expected one of {MAPPINGS}")


def check_parameters(cfg: CellConfig, params: dict[str, np.ndarray], source: str) -> None:
    want = expected_shapes(cfg)
    for name, shape in want.items():
        if name not in params:
            raise ModelFormatError(f"{source}: missing parameter {name!r} (expected shape {shape})")
        got = tuple(params[name].shape)
        if got != shape:
            raise ModelFormatError(
                f"{source}: parameter {name!r} has shape {got}, expected {shape} "
                f"(units={cfg.units}, inputs={cfg.n_inputs}, motors={cfg.motor_size})"
            )
    extra = sorted(set(params) - set(want))
    if extra:
        raise ModelFormatError(
            f"{source}: unexpected parameters {extra} for this config "
            f"(input_mapping={cfg.input_mapping!r}, output_mapping="
            f"{cfg.output_mapping!r}, mixed_memory={cfg.mixed_memory})"
        )


def check_finite(params: dict[str, np.ndarray], source: str) -> None:
    for name, arr in params.items():
        if not np.all(np.isfinite(arr)):
            n = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise ModelFormatError(f"{source}: parameter {name!r} has {n} NaN/Inf value(s)")


def check_masks(params: dict[str, np.ndarray], source: str) -> None:
    for name in ("sparsity_mask", "sensory_sparsity_mask"):
        bad = ~np.isin(params[name], (0.0, 1.0))
        if bad.any():
            raise ModelFormatError(
                f"{source}: {name} must hold only 0 and 1 (ncps stores |adjacency|), "
                f"found {params[name][bad][0]!r}"
            )


def check_positive(model: LTCModel, source: str) -> None:
    """Time constants must be positive and conductances non-negative after the constraint."""
    eff = effective_parameters(model)
    # ncps' ReLU clip can leave cm or gleak at exactly 0, which its solver accepts.
    for name, mask in (
        ("cm", None),
        ("gleak", None),
        ("w", "sparsity_mask"),
        ("sensory_w", "sensory_sparsity_mask"),
    ):
        vals = eff[name] if mask is None else eff[name][eff[mask] != 0]
        if vals.size and vals.min() < 0:
            raise ModelFormatError(
                f"{source}: {name} must be >= 0 after the {model.config.positivity!r} constraint, "
                f"min is {vals.min()!r} (train with implicit_param_constraints=True or call "
                "apply_weight_constraints() after each optimiser step)"
            )


def check_roles(model: LTCModel, source: str) -> None:
    if len(model.roles) != model.config.units:
        raise ModelFormatError(f"{source}: {len(model.roles)} neuron roles for {model.config.units} units")
    bad = sorted(set(model.roles) - set(ROLES))
    if bad:
        raise ModelFormatError(f"{source}: unknown neuron roles {bad}; expected {ROLES}")


def check_model(model: LTCModel) -> None:
    """Run every check on an in-memory model (before export and after load)."""
    src = model.source
    check_config(model.config, src)
    check_parameters(model.config, model.params, src)
    check_finite(model.params, src)
    check_masks(model.params, src)
    check_positive(model, src)
    check_roles(model, src)
