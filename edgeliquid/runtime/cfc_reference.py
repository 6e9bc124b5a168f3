"""The numpy reference for CfC: the spec every CfC fast path is tested against.

It follows ncps 1.0.1 (``ncps/torch/cfc_cell.py``, ``wired_cfc_cell.py``, ``cfc.py``)
operation for operation; a ``formulation = keras`` model follows ``ncps/keras/cfc_cell.py``
instead (gate ``sigmoid(-t_a * ts + t_b)``, no tanh on ff1/ff2). One deliberate
difference, as for LTC: ncps squeezes the timespans so that with batch > 1 a per-sample
elapsed time broadcasts across *units* (wrong, or an error); here each batch row uses its own.

Layouts as in :mod:`edgeliquid.runtime.reference`: x [B, I], state [B, U] or [B, 2U]
(``[h, c]``), elapsed [B], y [B, n_outputs].
"""

from __future__ import annotations

import math

import numpy as np

from ..model.cfc import CfCConfig, CfCModel
from .reference import lstm_step, sigmoid

_erf = np.vectorize(math.erf, otypes=[np.float64])


def activation(name: str, x: np.ndarray) -> np.ndarray:
    """The backbone activations of ncps ``CfCCell`` (torch modules, default arguments)."""
    if name == "lecun_tanh":
        return 1.7159 * np.tanh(0.666 * x)
    if name == "tanh":
        return np.tanh(x)
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "silu":
        return x * sigmoid(x)
    if name == "gelu":  # torch nn.GELU(approximate="none"): exact, with erf
        return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(x.dtype)
    raise ValueError(f"unknown activation {name!r}")


def _linear(p: dict[str, np.ndarray], name: str, x: np.ndarray, mask: np.ndarray | None = None):
    w = p[f"{name}.weight"]
    if mask is not None:
        w = w * mask
    return x @ w.T + p[f"{name}.bias"]


def cfc_cell(
    p: dict[str, np.ndarray],
    cfg: CfCConfig,
    prefix: str,
    x: np.ndarray,
    h: np.ndarray,
    ts: np.ndarray,
    backbone: bool,
) -> np.ndarray:
    """ncps ``CfCCell.forward`` on [B, in] inputs and [B, n] state; ``ts`` is [B, 1]."""
    z = np.concatenate([x, h], axis=1)
    if backbone:
        for k in range(cfg.backbone_layers):
            z = activation(cfg.activation, _linear(p, f"backbone.{k}", z))
    mask = p.get(f"{prefix}sparsity_mask")
    ff1 = _linear(p, f"{prefix}ff1", z, mask)
    if cfg.mode == "pure":
        a = p[f"{prefix}A"]
        return -a * np.exp(-ts * (np.abs(p[f"{prefix}w_tau"]) + np.abs(ff1))) * ff1 + a
    ff2 = _linear(p, f"{prefix}ff2", z, mask)
    t_a = _linear(p, f"{prefix}time_a", z)
    t_b = _linear(p, f"{prefix}time_b", z)
    if cfg.keras:  # ncps/keras/cfc_cell.py: no tanh on the heads, time_a negated
        t_interp = sigmoid(-t_a * ts + t_b)
    else:
        ff1 = np.tanh(ff1)
        ff2 = np.tanh(ff2)
        t_interp = sigmoid(t_a * ts + t_b)
    if cfg.mode == "no_gate":
        return ff1 + t_interp * ff2
    return ff1 * (1.0 - t_interp) + t_interp * ff2


def cfc_reference_step(
    p: dict[str, np.ndarray],
    cfg: CfCConfig,
    x: np.ndarray,
    state: np.ndarray,
    elapsed: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One step of ncps ``CfC`` (LSTM first if mixed memory, then the CfC cell(s), then ``fc``).

    Args:
        p: parameters (raw: CfC has no positivity constraint), at the computing dtype.
        x: [B, I]. state: [B, n_state]. elapsed: [B] model time units.

    Returns:
        (y [B, n_outputs], next_state [B, n_state]).
    """
    u = cfg.units
    h = state[:, :u]
    c = None
    if cfg.mixed_memory:
        o, c = lstm_step(p, x, h, state[:, u:])
        if cfg.mixed_memory_coupling == "input":
            x = o  # ncps.keras MixedMemoryRNN: the LSTM output is the cell's input; h is kept
        else:
            h = o  # ncps.torch: the LSTM output replaces the cell's state
    ts = elapsed[:, None]
    if cfg.wired:
        outs, start, inp = [], 0, x
        for prefix, _, n in cfg.layers():
            inp = cfc_cell(p, cfg, prefix, inp, h[:, start : start + n], ts, backbone=False)
            outs.append(inp)
            start += n
        h_new, out = np.concatenate(outs, axis=1), inp
    else:
        h_new = cfc_cell(p, cfg, "", x, h, ts, backbone=cfg.backbone_layers > 0)
        out = h_new
    y = _linear(p, "fc", out) if cfg.proj_size else out
    next_state = np.concatenate([h_new, c], axis=1) if cfg.mixed_memory else h_new
    return y, next_state


class CfCReferenceCell:
    """Stateless stepping of one CfC model with the numpy reference, at one dtype."""

    def __init__(self, model: CfCModel, dtype=np.float64):
        self.config = model.config
        self.dtype = np.dtype(dtype)
        self.params = {k: np.asarray(v, self.dtype) for k, v in model.params.items()}

    def step(self, x: np.ndarray, state: np.ndarray, elapsed: np.ndarray):
        dt = self.dtype
        return cfc_reference_step(
            self.params, self.config, np.asarray(x, dt), np.asarray(state, dt), np.asarray(elapsed, dt)
        )
