"""edgeliquid: liquid time-constant networks (ncps LTC / NCP) on robots.

``load`` a model file and ``step`` it; ``export_module`` / ``export_checkpoint``
(trainer side, needs the ``export`` extra) write model files.
"""

__version__ = "0.1.0"

from . import _moved  # noqa: E402
from .errors import (  # noqa: E402
    BackendError,
    CheckpointError,
    ConfigError,
    EdgeliquidError,
    FrameError,
    InputError,
    ModelFormatError,
    RecordingError,
    UnsupportedModelError,
)

_moved.install()  # old flat import paths (edgeliquid.protocol, ...) keep working

__all__ = [
    # runtime
    "load",
    "from_model",
    "Policy",
    # trainer side (torch imported lazily)
    "export_module",
    "export_checkpoint",
    # errors
    "EdgeliquidError",
    "ModelFormatError",
    "CheckpointError",
    "UnsupportedModelError",
    "InputError",
    "BackendError",
    "ConfigError",
    "FrameError",
    "RecordingError",
]


def __getattr__(name: str):
    # Lazy: importing the runtime imports numba (~1 s); the CLI must be able to install its
    # signal handlers before that (edgeliquid run: a SIGTERM while starting exits cleanly).
    if name in ("load", "from_model", "Policy"):
        from . import runtime  # the package: it registers every backend with load()

        return getattr(runtime, name)
    if name in ("export_module", "export_checkpoint"):
        from .model import export

        return getattr(export, name)
    raise AttributeError(f"module 'edgeliquid' has no attribute {name!r}")
