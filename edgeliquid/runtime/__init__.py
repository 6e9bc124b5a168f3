"""The runtime: ``load()`` and the policies, packing, the numba kernels, fastexp, the numpy
reference (the spec) and the CUDA backend, which registers itself with ``load()``.

Imports ``edgeliquid.model`` and ``edgeliquid.errors`` only; never the node, observe, hil or cli.
"""

from .jitcache import configure as _configure_jit_cache

_configure_jit_cache()  # before any kernel module is imported (decorated)

from . import cuda  # noqa: E402, F401  (registers the "cuda" backend; numba-cuda is imported lazily)
from .policy import BACKENDS, Policy, from_model, load, register_backend  # noqa: E402

__all__ = ["BACKENDS", "Policy", "from_model", "load", "register_backend"]
