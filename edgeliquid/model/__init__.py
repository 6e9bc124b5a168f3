"""The model: cell configurations, the model file (read, write, checks), the LTC guarantees,
and the trainer-side exporter.

Imports nothing of the project but ``edgeliquid.errors``; everything else imports it.
"""

from .cell import (
    CellConfig,
    LTCModel,
    default_roles,
    effective_parameters,
    expected_shapes,
    make_positive,
    softplus,
)

__all__ = [
    "CellConfig",
    "LTCModel",
    "default_roles",
    "effective_parameters",
    "expected_shapes",
    "make_positive",
    "softplus",
]
