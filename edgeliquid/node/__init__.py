"""The onboard node: protocol v1 and the text mode, the config and channel maps, realtime
settings, the fail-safe supervisor (a pure state machine), the flight recorder and the loop.

Imports the runtime, the model and errors; never observe, hil or cli. ``Node`` is imported
lazily so that the codec (``edgeliquid.node.protocol``) stays light for simulators.
"""

from typing import Any

__all__ = ["Node", "NodeStats", "check_normalization"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'edgeliquid.node' has no attribute {name!r}")
