"""The model checker: small ``check_*`` functions run on every load and export.

Each takes the pieces it needs and raises :class:`ModelFormatError` naming the
file, the key and what was expected; each is testable alone.
"""

from __future__ import annotations

import math
import re

import numpy as np

from ..errors import ModelFormatError
from .cell import (
    COUPLINGS,
    MAPPINGS,
    POSITIVITY,
    SOLVER_NAMES,
    CellConfig,
    LTCModel,
    effective_parameters,
    expected_shapes,
)
from .cfc import ACTIVATIONS, CFC_MODES, FORMULATIONS, CfCConfig, CfCModel, cfc_expected_shapes

FORMAT_VERSION = 1
ROLES = ("motor", "command", "inter")

# Upper bounds on every size a model file declares (docs/model-format.md, "Limits" says why
# these values). They are checked on the metadata, before anything is allocated or run, so
# that a hostile file costs bounded time and memory.
MAX_FILE_BYTES = 512 * 2**20
MAX_UNITS = 4096
MAX_INPUTS = 4096
MAX_UNFOLDS = 1000
MAX_PARAMETERS = 2**26
#: units**2 * ode_unfolds + n_inputs * units: synapse evaluations in one step.
MAX_SYNAPSE_EVALS = 2**28
#: CfC: width and depth of the backbone, and layers of a wired CfC (see the Limits table).
MAX_BACKBONE_UNITS = 16384
MAX_BACKBONE_LAYERS = 64
MAX_WIRED_LAYERS = 64
MAX_METADATA_ENTRIES = 256
MAX_METADATA_KEY = 256
MAX_METADATA_VALUE = 64 * 2**10

LIMITS = {
    "file_bytes": MAX_FILE_BYTES,
    "units": MAX_UNITS,
    "n_inputs": MAX_INPUTS,
    "ode_unfolds": MAX_UNFOLDS,
    "parameters": MAX_PARAMETERS,
    "synapse_evaluations": MAX_SYNAPSE_EVALS,
    "backbone_units": MAX_BACKBONE_UNITS,
    "backbone_layers": MAX_BACKBONE_LAYERS,
    "wired_layers": MAX_WIRED_LAYERS,
    "metadata_entries": MAX_METADATA_ENTRIES,
    "metadata_key_chars": MAX_METADATA_KEY,
    "metadata_value_chars": MAX_METADATA_VALUE,
}


def short(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: file contents never flood a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shape_text(shape: tuple[int, ...]) -> str:
    """A shape for a message; a hostile tensor may declare millions of dims."""
    return repr(tuple(shape)) if len(shape) <= 8 else f"<{len(shape)} dims>"


def check_format_version(meta: dict[str, str], source: str) -> None:
    raw = meta.get("format_version")
    if raw is None:
        raise ModelFormatError(
            f"{source}: not an edgeliquid model (no edgeliquid.format_version in metadata_props)"
        )
    if raw != str(FORMAT_VERSION):
        raise ModelFormatError(
            f"{source}: unknown format version {short(raw)}; this edgeliquid reads version {FORMAT_VERSION}"
        )


def metadata_count(meta: dict[str, str], key: str, source: str) -> int:
    """A size from the metadata: plain ASCII decimal digits only (no sign, point, exponent,
    spaces or underscores), at most 12 of them, so nothing huge is ever converted."""
    raw = meta[key]
    if not _COUNT.fullmatch(raw):
        raise ModelFormatError(
            f"{source}: metadata edgeliquid.{key}={short(raw)} is not a non-negative integer "
            "(decimal digits only, at most 12)"
        )
    return int(raw)


_COUNT = re.compile(r"[0-9]{1,12}")

CELLS = ("ltc", "cfc")


def check_cell(meta: dict[str, str], source: str) -> None:
    if meta.get("cell") not in CELLS:
        raise ModelFormatError(
            f"{source}: edgeliquid.cell is {short(meta.get('cell'))}; expected one of {CELLS}"
        )
    if meta["cell"] == "cfc":
        return
    solver = meta.get("solver", "fused_semi_implicit_euler")
    if solver not in SOLVER_NAMES:
        raise ModelFormatError(
            f"{source}: edgeliquid.solver {short(solver)} unknown; expected one of {sorted(SOLVER_NAMES)}"
        )


def check_config(cfg: CellConfig, source: str) -> None:
    """Sizes within the limits, known options; needs only the config (nothing allocated)."""
    for name, limit in (
        ("n_inputs", MAX_INPUTS),
        ("units", MAX_UNITS),
        ("motor_size", MAX_UNITS),
        ("ode_unfolds", MAX_UNFOLDS),
    ):
        value = getattr(cfg, name)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise ModelFormatError(f"{source}: {name} must be an integer, got {short(value)}")
        if value < 1:
            raise ModelFormatError(f"{source}: {name} must be >= 1, got {value}")
        if value > limit:
            raise ModelFormatError(
                f"{source}: {name}={value} exceeds the limit {limit} (docs/model-format.md, Limits)"
            )
    if cfg.motor_size > cfg.units:
        raise ModelFormatError(f"{source}: motor_size {cfg.motor_size} exceeds units {cfg.units}")
    check_coupling(cfg, source)
    n_params = sum(math.prod(shape) for shape in expected_shapes(cfg).values())
    if n_params > MAX_PARAMETERS:
        raise ModelFormatError(
            f"{source}: {n_params} parameters (units={cfg.units}, n_inputs={cfg.n_inputs}, "
            f"mixed_memory={cfg.mixed_memory}) exceed the limit {MAX_PARAMETERS} "
            "(docs/model-format.md, Limits)"
        )
    # The work of one step as the reference and the ONNX graph do it (dense recurrent layer,
    # once per unfold; sensory layer once); the cpu kernels visit only existing synapses.
    evals = cfg.units**2 * cfg.ode_unfolds + cfg.cell_inputs * cfg.units
    if evals > MAX_SYNAPSE_EVALS:
        raise ModelFormatError(
            f"{source}: units={cfg.units} squared x ode_unfolds={cfg.ode_unfolds} + cell inputs x units = "
            f"{evals} synapse evaluations per step exceed the limit {MAX_SYNAPSE_EVALS} "
            "(docs/model-format.md, Limits)"
        )
    if not (np.isfinite(cfg.epsilon) and cfg.epsilon >= 0):
        raise ModelFormatError(f"{source}: epsilon must be finite and >= 0, got {short(cfg.epsilon)}")
    if cfg.positivity not in POSITIVITY:
        raise ModelFormatError(f"{source}: positivity {short(cfg.positivity)}; expected one of {POSITIVITY}")
    for side in ("input_mapping", "output_mapping"):
        if getattr(cfg, side) not in MAPPINGS:
            raise ModelFormatError(
                f"{source}: {side} {short(getattr(cfg, side))}; expected one of {MAPPINGS}"
            )


def check_coupling(cfg: CellConfig | CfCConfig, source: str) -> None:
    """``mixed_memory_coupling`` is known, and ``input`` only with mixed memory."""
    coupling = cfg.mixed_memory_coupling
    if coupling not in COUPLINGS:
        raise ModelFormatError(
            f"{source}: edgeliquid.mixed_memory_coupling {short(coupling)}; expected one of {COUPLINGS}"
        )
    if coupling != "state" and not cfg.mixed_memory:
        raise ModelFormatError(
            f"{source}: edgeliquid.mixed_memory_coupling is {coupling!r} but mixed_memory is false"
        )


def check_parameters(cfg: CellConfig, params: dict[str, np.ndarray], source: str) -> None:
    check_shapes(cfg, {name: tuple(arr.shape) for name, arr in params.items()}, source)


def check_shapes(cfg: CellConfig, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """Every expected parameter present with its shape, no other; on shapes alone (a file's
    declared dims are checked with this before any tensor is decoded)."""
    want = expected_shapes(cfg)
    for name, shape in want.items():
        if name not in shapes:
            raise ModelFormatError(f"{source}: missing parameter {name!r} (expected shape {shape})")
        got = tuple(shapes[name])
        if got != shape:
            raise ModelFormatError(
                f"{source}: parameter {name!r} has shape {shape_text(got)}, expected {shape} "
                f"(units={cfg.units}, inputs={cfg.n_inputs}, motors={cfg.motor_size})"
            )
    extra = sorted(set(shapes) - set(want), key=str)
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
                f"found {float(params[name][bad][0])!r}"
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
                f"min is {float(vals.min())!r} (train with implicit_param_constraints=True or call "
                "apply_weight_constraints() after each optimiser step)"
            )


def check_roles(model: LTCModel, source: str) -> None:
    """One known role per neuron, and roles that agree with the outputs and the masks.

    ncps numbers the motor neurons first (they are the outputs) in every wiring. When
    there are command neurons the wiring is an NCP, whose layers the masks must show:
    sensory synapses reach only inter neurons, and motor neurons are fed only by
    command neurons.
    """
    roles, m = model.roles, model.config.motor_size
    if len(roles) != model.config.units:
        raise ModelFormatError(
            f"{source}: neuron_roles has {len(roles)} entries for {model.config.units} units"
        )
    bad = sorted(set(roles) - set(ROLES))
    if bad:
        raise ModelFormatError(
            f"{source}: neuron_roles has unknown role {short(bad[0])}; expected one of {ROLES}"
        )
    for n, role in enumerate(roles):
        if (role == "motor") != (n < m):
            raise ModelFormatError(
                f"{source}: neuron_roles says neuron {n} is {role!r}, but the outputs are neurons "
                f"0..{m - 1} (motor_neurons={m}) and exactly those are 'motor'"
            )
    if "command" not in roles:
        return
    p = model.params
    for n in np.nonzero(np.any(p["sensory_sparsity_mask"] != 0, axis=0))[0]:
        if roles[n] != "inter":
            raise ModelFormatError(
                f"{source}: sensory_sparsity_mask has a synapse into neuron {n}, a {roles[n]!r} neuron; "
                "in an NCP (neuron_roles has command neurons) sensory synapses reach only inter neurons"
            )
    for n in np.nonzero(np.any(p["sparsity_mask"][:, :m] != 0, axis=1))[0]:
        if roles[n] != "command":
            raise ModelFormatError(
                f"{source}: sparsity_mask has a synapse from neuron {n}, a {roles[n]!r} neuron, into a "
                "motor neuron; in an NCP (neuron_roles has command neurons) motor neurons are fed "
                "only by command neurons"
            )


def check_model(model: LTCModel | CfCModel) -> None:
    """Run every check on an in-memory model (before export and after load)."""
    if isinstance(model, CfCModel):
        check_cfc_model(model)
        return
    src = model.source
    check_config(model.config, src)
    check_parameters(model.config, model.params, src)
    check_finite(model.params, src)
    check_masks(model.params, src)
    check_positive(model, src)
    check_roles(model, src)


# ------------------------------------------------------------------------------- CfC


def check_cfc_config(cfg: CfCConfig, source: str) -> None:
    """A CfC config within the limits, with known options; needs only the config.

    The sizes are checked one by one before the parameter count is computed, and the
    parameter count bounds the work of a step too (every CfC weight is used once per step).
    """
    sizes = [
        ("n_inputs", cfg.n_inputs, 1, MAX_INPUTS),
        ("units", cfg.units, 1, MAX_UNITS),
        ("backbone_layers", cfg.backbone_layers, 0, MAX_BACKBONE_LAYERS),
        ("backbone_units", cfg.backbone_units, 0, MAX_BACKBONE_UNITS),
        ("proj_size", cfg.proj_size, 0, MAX_UNITS),
    ]
    for name, value, least, limit in sizes:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise ModelFormatError(f"{source}: {name} must be an integer, got {short(value)}")
        if value < least:
            raise ModelFormatError(f"{source}: {name} must be >= {least}, got {value}")
        if value > limit:
            raise ModelFormatError(
                f"{source}: {name}={value} exceeds the limit {limit} (docs/model-format.md, Limits)"
            )
    if not cfg.wired and cfg.backbone_layers > 0 and cfg.backbone_units < 1:
        raise ModelFormatError(
            f"{source}: backbone_units must be >= 1 when backbone_layers={cfg.backbone_layers}"
        )
    if cfg.mode not in CFC_MODES:
        raise ModelFormatError(f"{source}: mode {short(cfg.mode)}; expected one of {CFC_MODES}")
    if cfg.activation not in ACTIVATIONS:
        raise ModelFormatError(f"{source}: activation {short(cfg.activation)}; expected one of {ACTIVATIONS}")
    if cfg.formulation not in FORMULATIONS:
        raise ModelFormatError(
            f"{source}: formulation {short(cfg.formulation)}; expected one of {FORMULATIONS}"
        )
    for name in ("mixed_memory", "sparse"):
        if not isinstance(getattr(cfg, name), bool):
            raise ModelFormatError(f"{source}: {name} must be true or false, got {short(getattr(cfg, name))}")
    check_coupling(cfg, source)
    sizes_l = cfg.layer_sizes
    if not isinstance(sizes_l, tuple):
        raise ModelFormatError(f"{source}: layer_sizes must be a tuple of integers, got {short(sizes_l)}")
    if len(sizes_l) > MAX_WIRED_LAYERS:
        raise ModelFormatError(
            f"{source}: layer_sizes has {len(sizes_l)} layers; the limit is {MAX_WIRED_LAYERS} "
            "(docs/model-format.md, Limits)"
        )
    for n in sizes_l:
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ModelFormatError(f"{source}: layer_sizes entries must be integers >= 1, got {short(n)}")
    if sizes_l and sum(sizes_l) != cfg.units:
        raise ModelFormatError(
            f"{source}: layer_sizes {short(sizes_l)} sum to {sum(sizes_l)}, but units={cfg.units}"
        )
    n_params = sum(math.prod(shape) for shape in cfc_expected_shapes(cfg).values())
    if n_params > MAX_PARAMETERS:
        raise ModelFormatError(
            f"{source}: {n_params} parameters (units={cfg.units}, n_inputs={cfg.n_inputs}, "
            f"backbone_units={cfg.backbone_units}, backbone_layers={cfg.backbone_layers}, "
            f"mixed_memory={cfg.mixed_memory}) exceed the limit {MAX_PARAMETERS} "
            "(docs/model-format.md, Limits)"
        )


def check_cfc_shapes(cfg: CfCConfig, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """Every parameter :func:`cfc_expected_shapes` names present with its shape, no other."""
    want = cfc_expected_shapes(cfg)
    for name, shape in want.items():
        if name not in shapes:
            raise ModelFormatError(
                f"{source}: missing parameter {name!r} (expected shape {shape}; "
                f"mode={cfg.mode!r}, layer_sizes={cfg.layer_sizes}, sparse={cfg.sparse})"
            )
        got = tuple(shapes[name])
        if got != shape:
            raise ModelFormatError(
                f"{source}: parameter {name!r} has shape {shape_text(got)}, expected {shape} "
                f"(units={cfg.units}, inputs={cfg.n_inputs}, backbone_units={cfg.backbone_units}, "
                f"backbone_layers={cfg.backbone_layers}, layer_sizes={cfg.layer_sizes})"
            )
    extra = sorted(set(shapes) - set(want), key=str)
    if extra:
        raise ModelFormatError(
            f"{source}: unexpected parameters {short(extra)} for this config (mode={cfg.mode!r}, "
            f"backbone_layers={cfg.backbone_layers}, layer_sizes={cfg.layer_sizes}, "
            f"mixed_memory={cfg.mixed_memory}, proj_size={cfg.proj_size}, sparse={cfg.sparse})"
        )


def check_cfc_model(model: CfCModel) -> None:
    """Every check on an in-memory CfC model (before export and after load)."""
    src, cfg, p = model.source, model.config, model.params
    check_cfc_config(cfg, src)
    check_cfc_shapes(cfg, {name: tuple(np.shape(arr)) for name, arr in p.items()}, src)
    check_finite(p, src)
    for name in sorted(k for k in p if k.endswith("sparsity_mask")):
        bad = ~np.isin(p[name], (0.0, 1.0))
        if bad.any():
            raise ModelFormatError(
                f"{src}: {name} must hold only 0 and 1 (ncps stores |mask|), found {float(p[name][bad][0])!r}"
            )


def synapse_counts(params: dict[str, np.ndarray]) -> tuple[int, int]:
    """(synapses, sensory_synapses): the nonzero entries of the two masks."""
    return (
        int(np.count_nonzero(params["sparsity_mask"])),
        int(np.count_nonzero(params["sensory_sparsity_mask"])),
    )
