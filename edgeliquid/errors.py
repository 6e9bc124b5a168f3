"""Exception hierarchy: one base class, one subclass per kind of bad input."""


class EdgeliquidError(Exception):
    """Base class of every error edgeliquid raises on purpose."""


class ModelFormatError(EdgeliquidError):
    """Raised when a model file is not a valid edgeliquid ONNX model."""


class CheckpointError(EdgeliquidError):
    """Raised when a torch checkpoint cannot be read or converted."""


class UnsupportedModelError(CheckpointError):
    """Raised when a checkpoint holds a model edgeliquid cannot convert (e.g. CfC)."""


class InputError(EdgeliquidError, ValueError):
    """Raised when a step's inputs have the wrong shape or are not finite."""


class BackendError(EdgeliquidError):
    """Raised when a backend name is unknown or its hardware/library is missing."""


class StabilityError(EdgeliquidError):
    """Raised when a model's explicit solver is unstable at the elapsed time it would be stepped with."""


class ConfigError(EdgeliquidError):
    """Raised when a node configuration file is invalid."""


class FrameError(EdgeliquidError):
    """Raised when a wire frame cannot be decoded (the node counts these, never crashes)."""


class RecordingError(EdgeliquidError):
    """Raised when a flight recording cannot be read (missing, not MCAP, or wrong for a model)."""
