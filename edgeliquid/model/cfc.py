"""The in-memory CfC model (ncps ``CfC``, ``CfCCell``, ``WiredCfCCell``): hyperparameters
plus raw trained parameters, the closed-form cousin of :mod:`edgeliquid.model.cell`.

Parameter names (float64 arrays, raw as trained; ``cat = n_inputs + units``):

* unwired (``layer_sizes == ()``), ``head_in = backbone_units if backbone_layers else cat``:
  ``backbone.{k}.weight`` / ``.bias`` for the k-th Linear of the backbone (k = 0..L-1; ncps
  names them by their index in its ``nn.Sequential``, which shifts with dropout layers),
  ``[U, cat]`` for k = 0 and ``[U_bb, U_bb]`` after; ``ff1.weight [U, head_in]``, ``ff1.bias [U]``;
  modes ``default``/``no_gate`` also ``ff2``, ``time_a``, ``time_b`` (same shapes); mode ``pure``
  ``w_tau [1, U]`` and ``A [1, U]`` instead; optional ``sparsity_mask [U, head_in]`` (ncps stores
  ``|mask.T|``), which multiplies the ``ff1``/``ff2`` weights only.
* wired (``layer_sizes = (n_0, n_1, ...)``, one CfC sub-cell per wiring layer, backbone 0):
  ``layer_{l}.ff1.weight [n_l, in_l + n_l]`` etc. as above with ``in_0 = n_inputs`` and
  ``in_l = n_{l-1}``, and ``layer_{l}.sparsity_mask [n_l, in_l + n_l]`` (required).
* ``mixed_memory``: ``lstm.input_map.weight [4U, I]``, ``lstm.input_map.bias [4U]``,
  ``lstm.recurrent_map.weight [4U, U]`` (ncps ``LSTMCell``, as for LTC). With
  ``mixed_memory_coupling = input`` (ncps.keras) the cell's input is the LSTM's output: every
  ``n_inputs`` above that sizes the cell (``cat``, ``in_0``) is ``U`` (:attr:`CfCConfig.cell_inputs`).
* ``proj_size > 0``: ``fc.weight [P, M]``, ``fc.bias [P]`` (M = motor size: U unwired, ``n_last`` wired).

State ``[h]`` of U, or ``[h, c]`` of 2U with mixed memory; wired, ``h`` is the layers
concatenated in order and the output is the last layer's ``h`` (then ``fc``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

CFC_MODES = ("default", "no_gate", "pure")
ACTIVATIONS = ("lecun_tanh", "silu", "relu", "tanh", "gelu")
HEADS = ("ff1", "ff2", "time_a", "time_b")
#: Which ncps implementation's equations the cell follows (docs/model-format.md, CfC):
#: ``torch`` (ncps.torch: gate sigmoid(time_a*ts + time_b), tanh on ff1/ff2) or ``keras``
#: (ncps.keras: gate sigmoid(-time_a*ts + time_b), no tanh on ff1/ff2). Pure mode is the same in both.
FORMULATIONS = ("torch", "keras")


@dataclass(frozen=True)
class CfCConfig:
    """Hyperparameters of one CfC layer (the ncps constructor arguments).

    Attributes:
        n_inputs: input features.
        units: hidden units (the state size; the sum of ``layer_sizes`` when wired).
        mode: ``"default"``, ``"no_gate"`` or ``"pure"``.
        activation: backbone activation (``lecun_tanh``, ``silu``, ``relu``, ``tanh``, ``gelu``).
        backbone_units: width of each backbone Linear (unwired only).
        backbone_layers: number of backbone Linear layers, 0 for none (unwired only).
        layer_sizes: wired: neurons per wiring layer in order (inter, command, motor); ``()`` unwired.
        mixed_memory: an LSTM cell runs before the CfC cell; the state is ``[h, c]``.
        proj_size: outputs of the ``fc`` Linear on the output; 0 for none (ncps ``proj_size=None``).
        sparse: unwired only: the cell has a ``sparsity_mask`` (ncps ``CfCCell(sparsity_mask=...)``).
        formulation: one of :data:`FORMULATIONS`; the parameters are stored raw either way.
        mixed_memory_coupling: ``state`` or ``input`` (``edgeliquid.model.cell.COUPLINGS``).
    """

    n_inputs: int
    units: int
    mode: str = "default"
    activation: str = "lecun_tanh"
    backbone_units: int = 128
    backbone_layers: int = 1
    layer_sizes: tuple[int, ...] = ()
    mixed_memory: bool = False
    proj_size: int = 0
    sparse: bool = False
    formulation: str = "torch"
    mixed_memory_coupling: str = "state"

    cell = "cfc"

    @property
    def cell_inputs(self) -> int:
        """Inputs of the (first) CfC cell: ``units`` when the LSTM output is its input."""
        return self.units if self.mixed_memory and self.mixed_memory_coupling == "input" else self.n_inputs

    @property
    def keras(self) -> bool:
        """The ncps.keras equations (negated time_a in the gate, no tanh on the heads)."""
        return self.formulation == "keras"

    @property
    def wired(self) -> bool:
        return bool(self.layer_sizes)

    @property
    def motor_size(self) -> int:
        return self.layer_sizes[-1] if self.wired else self.units

    @property
    def n_outputs(self) -> int:
        return self.proj_size or self.motor_size

    @property
    def n_state(self) -> int:
        return self.units * (2 if self.mixed_memory else 1)

    def layers(self) -> list[tuple[str, int, int]]:
        """``(parameter prefix, input features, hidden units)`` of each CfC sub-cell, in order."""
        if not self.wired:
            return [("", self.cell_inputs, self.units)]
        out, n_in = [], self.cell_inputs
        for i, n in enumerate(self.layer_sizes):
            out.append((f"layer_{i}.", n_in, n))
            n_in = n
        return out

    def replace(self, **changes) -> CfCConfig:
        return dataclasses.replace(self, **changes)


def cfc_expected_shapes(cfg: CfCConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter a CfC model with this config must have."""
    shapes: dict[str, tuple[int, ...]] = {}
    for prefix, n_in, n in cfg.layers():
        cat = n_in + n
        head_in = cat
        if not cfg.wired and cfg.backbone_layers > 0:
            bu = cfg.backbone_units
            for k in range(cfg.backbone_layers):
                shapes[f"backbone.{k}.weight"] = (bu, cat if k == 0 else bu)
                shapes[f"backbone.{k}.bias"] = (bu,)
            head_in = bu
        heads = ("ff1",) if cfg.mode == "pure" else HEADS
        for h in heads:
            shapes[f"{prefix}{h}.weight"] = (n, head_in)
            shapes[f"{prefix}{h}.bias"] = (n,)
        if cfg.mode == "pure":
            shapes[f"{prefix}w_tau"] = (1, n)
            shapes[f"{prefix}A"] = (1, n)
        if cfg.wired or cfg.sparse:
            shapes[f"{prefix}sparsity_mask"] = (n, head_in)
    u = cfg.units
    if cfg.mixed_memory:
        shapes["lstm.input_map.weight"] = (4 * u, cfg.n_inputs)
        shapes["lstm.input_map.bias"] = (4 * u,)
        shapes["lstm.recurrent_map.weight"] = (4 * u, u)
    if cfg.proj_size:
        shapes["fc.weight"] = (cfg.proj_size, cfg.motor_size)
        shapes["fc.bias"] = (cfg.proj_size,)
    return shapes


@dataclass
class CfCModel:
    """A loaded CfC model: config, raw parameters (float64) and descriptive metadata.

    Attributes:
        config: the layer's hyperparameters.
        params: raw parameters by the names in this module's docstring, float64 arrays.
        info: the other ``edgeliquid.*`` metadata (names, normalisation, provenance).
        source: where the model came from (a path), for error messages.
    """

    config: CfCConfig
    params: dict[str, np.ndarray]
    info: dict[str, str] = field(default_factory=dict)
    source: str = "<memory>"
