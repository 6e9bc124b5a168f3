"""What the generated C needs from a model: folded parameters and synapse lists."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeliquid.model.cell import LTCModel, effective_parameters


@dataclass
class Synapses:
    """Existing synapses of one layer, sorted by destination (float64 values)."""

    src: np.ndarray
    dst: np.ndarray
    w: np.ndarray
    sigma: np.ndarray
    mu: np.ndarray
    erev: np.ndarray

    @property
    def count(self) -> int:
        return int(self.src.size)


def synapses(w, sigma, mu, erev, mask) -> Synapses:
    exists = mask.T != 0  # [dest, src]
    dst, src = np.nonzero(exists)
    return Synapses(src, dst, w.T[dst, src], sigma.T[dst, src], mu.T[dst, src], erev.T[dst, src])


@dataclass
class FirmwareModel:
    """Everything the C templates need, positivity already applied (folded at export)."""

    model: LTCModel
    p: dict
    rec: Synapses
    sens: Synapses

    @classmethod
    def of(cls, model: LTCModel) -> FirmwareModel:
        p = effective_parameters(model, np.float64)
        rec = synapses(p["w"], p["sigma"], p["mu"], p["erev"], p["sparsity_mask"])
        sens = synapses(
            p["sensory_w"], p["sensory_sigma"], p["sensory_mu"], p["sensory_erev"], p["sensory_sparsity_mask"]
        )
        return cls(model, p, rec, sens)

    @property
    def cfg(self):
        return self.model.config

    def index_type(self) -> str:
        n = max(self.cfg.units, self.cfg.n_inputs)
        return "uint8_t" if n <= 255 else "uint16_t"
