"""The in-memory LTC model: hyperparameters plus raw trained parameters.

Data flows file -> :class:`LTCModel` -> backend. Parameters are kept *raw* (as
trained, under ncps' names); :func:`effective_parameters` applies the positivity
constraint once, so that every backend starts from the same numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelFormatError

MAPPINGS = ("affine", "linear", "none")
POSITIVITY = ("softplus", "none")

#: Parameters constrained to be positive (softplus in ncps' implicit mode).
POSITIVE_PARAMS = ("gleak", "cm", "w", "sensory_w")

#: Names of the LSTM parameters of ``mixed_memory`` models (ncps ``LTC.lstm``).
LSTM_PARAMS = ("lstm.input_map.weight", "lstm.input_map.bias", "lstm.recurrent_map.weight")

#: How a mixed-memory LSTM feeds the cell (``edgeliquid.mixed_memory_coupling``, LTC and CfC):
#: ``state`` (ncps.torch: the cell reads x, the LSTM's output replaces the cell's state) or
#: ``input`` (ncps.keras ``MixedMemoryRNN``: the LSTM's output is the cell's input, of size
#: units, and the cell's own state is kept).
COUPLINGS = ("state", "input")


#: Solver names a model file may carry (edgeliquid.runtime.reference implements each):
#: ncps' fused semi-implicit Euler (what ncps trains with), and two explicit schemes that
#: integrate the same ODE with sub-step h = elapsed / ode_unfolds.
SOLVER_NAMES: tuple[str, ...] = ("fused_semi_implicit_euler", "explicit_euler", "rk4")


@dataclass(frozen=True)
class CellConfig:
    """Hyperparameters of one LTC cell (the ncps constructor arguments).

    Attributes:
        n_inputs: sensory inputs (features of ``x``).
        units: neurons in the cell.
        motor_size: motor neurons; the outputs are neurons ``0 .. motor_size-1``.
        ode_unfolds: solver sub-steps per call (ncps default 6).
        epsilon: added to the solver's denominator (ncps default 1e-8).
        positivity: ``"softplus"`` (ncps ``implicit_param_constraints=True``) or ``"none"``.
        input_mapping: ``"affine"``, ``"linear"`` or ``"none"``.
        output_mapping: ``"affine"``, ``"linear"`` or ``"none"``.
        mixed_memory: an LSTM cell runs before the LTC cell; the state is ``[h, c]``.
        solver: one of :data:`SOLVER_NAMES`.
        mixed_memory_coupling: one of :data:`COUPLINGS` (mixed memory only).
    """

    n_inputs: int
    units: int
    motor_size: int
    ode_unfolds: int = 6
    epsilon: float = 1e-8
    positivity: str = "softplus"
    input_mapping: str = "affine"
    output_mapping: str = "affine"
    mixed_memory: bool = False
    solver: str = "fused_semi_implicit_euler"
    mixed_memory_coupling: str = "state"

    @property
    def n_outputs(self) -> int:
        return self.motor_size

    @property
    def cell_inputs(self) -> int:
        """Inputs of the LTC cell's sensory layer: ``units`` when the LSTM output is its input."""
        return self.units if self.mixed_memory and self.mixed_memory_coupling == "input" else self.n_inputs

    @property
    def n_state(self) -> int:
        return self.units * (2 if self.mixed_memory else 1)

    def replace(self, **changes) -> CellConfig:
        return dataclasses.replace(self, **changes)


def expected_shapes(cfg: CellConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter a model with this config must have."""
    u, i, m = cfg.units, cfg.cell_inputs, cfg.motor_size
    shapes: dict[str, tuple[int, ...]] = {
        "gleak": (u,),
        "vleak": (u,),
        "cm": (u,),
        "w": (u, u),
        "sigma": (u, u),
        "mu": (u, u),
        "erev": (u, u),
        "sensory_w": (i, u),
        "sensory_sigma": (i, u),
        "sensory_mu": (i, u),
        "sensory_erev": (i, u),
        "sparsity_mask": (u, u),
        "sensory_sparsity_mask": (i, u),
    }
    if cfg.input_mapping in ("affine", "linear"):
        shapes["input_w"] = (i,)
    if cfg.input_mapping == "affine":
        shapes["input_b"] = (i,)
    if cfg.output_mapping in ("affine", "linear"):
        shapes["output_w"] = (m,)
    if cfg.output_mapping == "affine":
        shapes["output_b"] = (m,)
    if cfg.mixed_memory:
        shapes["lstm.input_map.weight"] = (4 * u, cfg.n_inputs)
        shapes["lstm.input_map.bias"] = (4 * u,)
        shapes["lstm.recurrent_map.weight"] = (4 * u, u)
    return shapes


@dataclass
class LTCModel:
    """A loaded model: config, raw parameters (float64) and descriptive metadata.

    Attributes:
        config: the cell's hyperparameters.
        params: raw parameters by ncps name, float64 arrays.
        roles: one of ``"motor"``, ``"command"``, ``"inter"`` per neuron.
        info: the other ``edgeliquid.*`` metadata (names, normalisation, provenance),
            keys without the ``edgeliquid.`` prefix, values as strings.
        source: where the model came from (a path), for error messages.
    """

    config: CellConfig
    params: dict[str, np.ndarray]
    roles: list[str] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        if not self.roles:
            self.roles = default_roles(self.config, self.params)


def softplus(x: np.ndarray) -> np.ndarray:
    """torch.nn.Softplus(beta=1, threshold=20): linear above 20, like torch."""
    x = np.asarray(x)
    with np.errstate(over="ignore"):
        return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))


def make_positive(cfg: CellConfig, raw: np.ndarray) -> np.ndarray:
    """Apply the model's positivity constraint to a raw parameter."""
    if cfg.positivity == "softplus":
        return softplus(raw)
    if cfg.positivity == "none":
        return np.asarray(raw)
    raise ModelFormatError(f"unknown positivity constraint {cfg.positivity!r}; expected one of {POSITIVITY}")


def effective_parameters(model: LTCModel, dtype=np.float64) -> dict[str, np.ndarray]:
    """Parameters as the solver uses them: positivity applied, mappings filled in.

    Absent mappings become the identity (w = 1, b = 0): ``x * 1 + 0`` is exact
    in IEEE arithmetic, so every backend can apply the mapping unconditionally.
    Positivity is computed in float64 then cast, so that float32 backends see
    the correctly rounded value of the constrained parameter.
    """
    cfg, p = model.config, model.params
    eff = {k: np.asarray(v, dtype=np.float64) for k, v in p.items()}
    for name in POSITIVE_PARAMS:
        eff[name] = make_positive(cfg, eff[name])
    eff.setdefault("input_w", np.ones(cfg.cell_inputs))
    eff.setdefault("input_b", np.zeros(cfg.cell_inputs))
    eff.setdefault("output_w", np.ones(cfg.motor_size))
    eff.setdefault("output_b", np.zeros(cfg.motor_size))
    return {k: np.ascontiguousarray(v, dtype=dtype) for k, v in eff.items()}


def default_roles(cfg: CellConfig, params: dict[str, np.ndarray]) -> list[str]:
    """Neuron roles recovered from the masks when no wiring object says them.

    The NCP pattern is recognised from structure alone: sensory synapses reach
    only inter neurons, motor neurons are fed only by command neurons, and
    command neurons are the rest. Any other wiring gets ncps' base-class roles
    (motor for the first ``motor_size`` neurons, inter otherwise).
    """
    u, m = cfg.units, cfg.motor_size
    smask = params.get("sensory_sparsity_mask")
    mask = params.get("sparsity_mask")
    # Without masks of the right shape there is nothing to recover from; the checker reports
    # the masks. Roles are built only once masks of u x u exist, so a hostile `units` cannot
    # make this allocate more than the masks already hold.
    if np.shape(mask) != (u, u) or np.shape(smask) != (cfg.cell_inputs, u):
        return []
    roles = ["motor" if n < m else "inter" for n in range(u)]
    if m >= u:
        return roles
    inter = set(np.nonzero(np.abs(smask).sum(axis=0))[0].tolist())
    motors = set(range(m))
    feeding_motors = set(np.nonzero(np.abs(mask[:, :m]).sum(axis=1))[0].tolist())
    command = set(range(m, u)) - inter
    if inter & motors or not command or not feeding_motors <= command:
        return roles
    return ["motor" if n < m else ("command" if n in command else "inter") for n in range(u)]
